//! libFuzzer entry point of the `jwks` target (tests/fuzzing/mod.rs).
#![no_main]

#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::jwks(data));
