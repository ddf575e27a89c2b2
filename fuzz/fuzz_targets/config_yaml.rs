//! Fuzz target `config_yaml`: the body is idmux::fuzzing::config_yaml (shared with tests/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux::fuzzing::config_yaml(data));
