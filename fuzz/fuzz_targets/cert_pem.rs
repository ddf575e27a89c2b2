//! Fuzz target `cert_pem`: the body is idmux_testkit::fuzzing::cert_pem (shared with tests/e2e/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux_testkit::fuzzing::cert_pem(data));
