//! Fuzz target `mux_request`: the body is idmux_testkit::fuzzing::mux_request (shared with tests/e2e/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux_testkit::fuzzing::mux_request(data));
