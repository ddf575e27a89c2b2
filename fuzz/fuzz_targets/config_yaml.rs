//! Fuzz target `config_yaml`: the body is idmux_testkit::fuzzing::config_yaml (shared with tests/e2e/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux_testkit::fuzzing::config_yaml(data));
