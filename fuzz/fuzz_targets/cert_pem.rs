//! Fuzz target `cert_pem`: the body is idmux::fuzzing::cert_pem (shared with tests/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux::fuzzing::cert_pem(data));
