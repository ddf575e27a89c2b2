//! Fuzz target `identity_file`: the body is idmux::fuzzing::identity_file (shared with tests/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux::fuzzing::identity_file(data));
