//! Plugin-call bodies: every request decoder, the `-o` options and the port maps.
//! Seeds in `corpus/api` (the unit test `api::fuzz_corpus_tests` replays them).
//!
//!   cd dovesnap-user/fuzz && AYA_BUILD_SKIP=1 cargo +nightly fuzz run api corpus/api
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dovesnap::api::fuzz_decode(data);
});
