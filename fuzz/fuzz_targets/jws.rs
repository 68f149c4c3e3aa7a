//! libFuzzer entry point of the `jws` target (tests/fuzzing/mod.rs).
#![no_main]

#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::jws(data));
