//! Fuzz target `v1_fds`: the body is idmux_testkit::fuzzing::v1_fds (shared with tests/e2e/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux_testkit::fuzzing::v1_fds(data));
