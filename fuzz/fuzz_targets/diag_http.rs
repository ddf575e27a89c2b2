//! Fuzz target `diag_http`: the body is idmux_testkit::fuzzing::diag_http (shared with tests/e2e/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux_testkit::fuzzing::diag_http(data));
