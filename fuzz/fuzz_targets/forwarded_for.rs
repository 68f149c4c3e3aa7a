//! libFuzzer entry point of the `forwarded_for` target (tests/fuzzing/mod.rs).
#![no_main]

#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::forwarded_for(data));
