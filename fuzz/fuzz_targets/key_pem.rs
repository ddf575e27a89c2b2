//! Fuzz target `key_pem`: the body is idmux::fuzzing::key_pem (shared with tests/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux::fuzzing::key_pem(data));
