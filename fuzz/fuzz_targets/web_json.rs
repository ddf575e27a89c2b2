//! Fuzz target `web_json`: the body is idmux_testkit::fuzzing::web_json (shared with tests/e2e/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux_testkit::fuzzing::web_json(data));
