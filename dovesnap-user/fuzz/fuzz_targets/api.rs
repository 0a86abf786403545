//! Plugin-call bodies: every request decoder, the `-o` options and the port maps.
//! Seeds in `corpus/api` (the unit test `fuzz::tests::api_corpus_and_mutations_never_panic`
//! replays them).
//!
//!   cd dovesnap-user/fuzz && AYA_BUILD_SKIP=1 cargo +nightly fuzz run api corpus/api
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dovesnap::fuzz::api(data);
});
