//! Fuzz target `known_hosts`: the body is idmux::fuzzing::known_hosts (shared with tests/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux::fuzzing::known_hosts(data));
