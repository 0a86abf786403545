//! Arbitrary bytes, as a sequence of frames, through the translator in both directions
//! (see `dovesnap::fuzz::translate` for the input format).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dovesnap::fuzz::translate(data);
});
