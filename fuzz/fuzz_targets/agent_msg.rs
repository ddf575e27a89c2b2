//! Fuzz target `agent_msg`: the body is idmux_testkit::fuzzing::agent_msg (shared with tests/e2e/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux_testkit::fuzzing::agent_msg(data));
