//! libFuzzer entry point of the `signature_fields` target (tests/fuzzing/mod.rs).
#![no_main]

#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::signature_fields(data));
