//! Operations and everyday use: what runs the bot as a service and helps a person keep it
//! healthy, apart from the bot itself.
//!
//! - [`logging`]: the tracing subscriber (`--log-format text|json`, `--debug`, `IDMUX_LOG`).
//! - [`completion`]: shell completion scripts generated from the clap command tree.
//! - [`systemd`]: `idmux install systemd` and `idmux cluster install systemd` unit files.
//! - [`doctor`]: `idmux doctor`, checks of a destination dir, the daemon, the proxy and a node.

pub mod completion;
pub mod doctor;
pub mod logging;
pub mod systemd;
