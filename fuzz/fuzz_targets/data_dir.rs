//! Fuzz target `data_dir`: the body is idmux_testkit::fuzzing::data_dir (shared with tests/e2e/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux_testkit::fuzzing::data_dir(data));
