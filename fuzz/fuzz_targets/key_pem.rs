//! Fuzz target `key_pem`: the body is idmux_testkit::fuzzing::key_pem (shared with tests/e2e/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux_testkit::fuzzing::key_pem(data));
