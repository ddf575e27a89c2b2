//! Fuzz target `grpc_certs`: the body is idmux_testkit::fuzzing::grpc_certs (shared with tests/e2e/fuzz_replay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idmux_testkit::fuzzing::grpc_certs(data));
