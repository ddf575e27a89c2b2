//! idmux's end-to-end tests, one binary: real `ssh`, `sshd`, `scp`, `sftp`, `rsync` and Ansible
//! against the dev cluster, through the `idmux` and `idmux-fdpass` binaries cargo builds.
//! Helpers (dev cluster launcher, bots, waits) come from `idmux-testkit`.
//!
//! Modules by subject; `scripts/test.sh` runs the node-reaching ones once per node transport
//! (`IDMUX_TEST_TRANSPORT`), selected by module name. Long runs (the full soak, 7,000
//! connections; the fips-v1 and hsm-v1 suites) run in full only with `IDMUX_LONG=1`
//! (`scripts/test.sh --long`).

mod ansible;
mod auth_direct;
mod auth_grpc;
mod bot;
mod cluster_ssh;
mod crash;
mod deployments;
mod dirs;
mod dropin;
mod faults;
mod fdpass;
mod foundation;
mod fuzz_replay;
mod hostile;
mod identities;
mod isolation;
mod mux;
mod ops;
mod soak;
mod tbot_config;
mod thirdparty;
mod transport;
