//! idmux: Teleport Machine ID for OpenSSH.
//!
//! Module map (each module's top comment says what it owns):
//! - [`identity`]: keys, certificates and the file formats of tbot's data and destination dirs.
//! - [`ca`]: a cluster's certificate authorities and the certificates they issue.
//! - [`openssh`]: ssh_config and known_hosts rendering for OpenSSH.
//! - [`transport`]: TLS + ALPN dial to the proxy, the SSH subsystem path, the stdio ProxyCommand.
//! - [`cluster`]: the development cluster (proxy + auth on one TLS port, real sshd nodes).
//! - [`ops`]: systemd units, `doctor`, logging setup and shell completions.
//! - [`fsutil`]: atomic, permission-aware file writes.
//! - `fuzzing`: the fuzz target bodies shared by `fuzz/` and the corpus replay test.
//! - [`cli`]: the `idmux` command line (thin: parses flags and calls the modules above).

pub mod bot;
pub mod ca;
pub mod cli;
pub mod cluster;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod mux;
pub mod openssh;
pub mod ops;
pub mod transport;
