//! libFuzzer entry point of the `dpop_proof` target (tests/fuzzing/mod.rs).
#![no_main]

#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::dpop_proof(data));
