//! Fuzz target `mux_request`: the body is idmux::fuzzing::mux_request (shared with tests/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux::fuzzing::mux_request(data));
