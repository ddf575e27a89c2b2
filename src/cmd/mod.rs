//! The `idmux` command line: flag parsing and dispatch only; the work is in the library
//! crates. One file per command ([`start`], [`cluster`], [`doctor`], [`systemd`]), plus the
//! process-wide set-up every command shares: [`logging`], [`completion`], the runtime.

mod choices;
pub mod cluster;
mod completion;
mod doctor;
mod init;
mod logging;
mod runtime;
pub mod start;
mod systemd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use choices::{ModeArg, TransportArg};
use clap::{Parser, Subcommand};
use idmux_identity::paths::absolute;

use idmux_identity::openssh;
use idmux_identity::Identity;

#[derive(Parser)]
#[command(name = "idmux", version, about = "Teleport Machine ID for OpenSSH")]
struct Cli {
    #[command(flatten)]
    g: Globals,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The flags accepted anywhere on the command line (tbot's global flags, `lib/tbot/cli/globals.go`).
#[derive(clap::Args, Clone, Default)]
pub(crate) struct Globals {
    /// Log lines as text or as JSON objects (one per line).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: crate::cmd::logging::LogFormat,
    /// Verbose logging: idmux's own decisions at debug level (IDMUX_LOG overrides).
    #[arg(short = 'd', long, global = true, env = "TBOT_DEBUG")]
    pub debug: bool,
    /// Path to a configuration file (tbot's YAML, version v2).
    #[arg(short = 'c', long, global = true, env = "TBOT_CONFIG_PATH")]
    pub config: Option<PathBuf>,
    /// The configuration as base64-encoded YAML (tbot's hidden `--config-string`).
    #[arg(
        long,
        global = true,
        env = "TBOT_CONFIG",
        hide = true,
        hide_env_values = true
    )]
    pub config_string: Option<String>,
    /// Trust the proxy's certificate without verification (development only; warns).
    #[arg(long, global = true)]
    pub insecure: bool,
    /// FIPS compliance mode: refused, idmux has no FIPS-validated build.
    #[arg(long, global = true)]
    pub fips: bool,
}

/// Print to stdout; a reader that stops early (`| head`) is no error.
pub(crate) fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(|e| anyhow::anyhow!("writing to stdout: {e}")),
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the bot: join with a token, renew, write the destination dir (tbot start).
    Start(Box<crate::cmd::start::StartArgs>),
    /// Print the YAML config (version v2) the start flags describe (tbot configure).
    Configure(Box<crate::cmd::start::ConfigureArgs>),
    /// Prepare a destination dir: owner, owner-only or shared with a reader (tbot init).
    Init(crate::cmd::init::InitArgs),
    /// Print the version of idmux and the tbot version its behaviour follows.
    Version,
    /// Regenerate ssh_config and known_hosts from the identity file in a destination dir.
    SshConfig(SshConfigArgs),
    /// The development cluster (proxy + auth + sshd nodes) and its admin commands.
    #[command(subcommand)]
    Cluster(crate::cmd::cluster::ClusterCmd),
    /// ProxyCommand for ssh: connect stdin/stdout to a node through the proxy (tbot's flags).
    SshProxyCommand(SshProxyCommandArgs),
    /// Install idmux as a service (systemd unit for the bot).
    #[command(subcommand)]
    Install(crate::cmd::systemd::InstallCmd),
    /// Check a destination dir, the daemon, the proxy and a node; one ok/warn/fail line each.
    Doctor(crate::cmd::doctor::DoctorArgs),
    /// Print a shell completion script (bash, zsh or fish).
    Completion {
        #[arg(value_enum)]
        shell: crate::cmd::completion::Shell,
    },
}

#[derive(clap::Args)]
struct SshProxyCommandArgs {
    /// The destination dir holding `identity` (written by idmux or tbot).
    #[arg(long)]
    destination_dir: PathBuf,
    /// The proxy's address, host:port.
    #[arg(long)]
    proxy_server: String,
    /// The cluster the node is in (default: the identity's cluster).
    #[arg(long)]
    cluster: Option<String>,
    /// ssh's %r (the proxy login is the certificate's first principal).
    #[arg(long)]
    user: Option<String>,
    /// ssh's %h.
    #[arg(long)]
    host: String,
    /// ssh's %p.
    #[arg(long, default_value_t = 3022)]
    port: u16,
    /// How to reach the node: grpc (TransportService), ssh (the proxy's SSH subsystem), or
    /// auto: grpc, falling back to ssh when the proxy does not offer it.
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    transport: TransportArg,
    /// TLS routing on `--proxy-server` (tbot's ssh_config says; default: assumed), or
    /// `--no-tls-routing`: `--proxy-server` is the proxy's SSH port.
    #[arg(long, overrides_with = "no_tls_routing")]
    tls_routing: bool,
    #[arg(long)]
    no_tls_routing: bool,
    /// Through an L7 load balancer with the ALPN connection upgrade (default: detected, or
    /// TELEPORT_TLS_ROUTING_CONN_UPGRADE).
    #[arg(long, overrides_with = "no_connection_upgrade")]
    connection_upgrade: bool,
    #[arg(long)]
    no_connection_upgrade: bool,
    #[arg(long, hide = true, overrides_with = "no_resume")]
    resume: bool,
    #[arg(long, hide = true)]
    no_resume: bool,
}

#[derive(clap::Args)]
struct SshConfigArgs {
    /// The destination dir holding `identity` (written by idmux or tbot).
    #[arg(long)]
    destination_dir: PathBuf,
    /// The proxy's public address, host:port.
    #[arg(long)]
    proxy_server: String,
    /// The cluster whose nodes bare names route to (default: the identity's cluster).
    #[arg(long)]
    cluster: Option<String>,
    /// How ssh reaches the proxy.
    #[arg(long, value_enum, default_value = "stdio")]
    mode: ModeArg,
    /// Also route bare one-label host names (`ssh node-1`) to the cluster (off, as tbot).
    #[arg(long)]
    bare_names: bool,
    /// The stdio ProxyCommand's way, as tbot writes it: `--no-tls-routing` (then
    /// `--proxy-server` is the proxy's SSH port) and `--connection-upgrade`.
    #[arg(long)]
    no_tls_routing: bool,
    #[arg(long)]
    connection_upgrade: bool,
}

/// Entry point of the `idmux` binary.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    // Daemons log at info; one-shot commands (ssh-proxy-command runs inside ssh) only warn.
    let daemon = matches!(cli.cmd, Cmd::Start(_) | Cmd::Cluster(_));
    // `debug: true` in the config file counts as -d.
    let debug = cli.g.debug || (daemon && config_says_debug(cli.g.config.as_deref()));
    crate::cmd::logging::init(
        cli.g.log_format,
        debug,
        if daemon { "info" } else { "warn" },
    );
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idmux: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Does the config file say `debug: true`? (Read again, with errors, by `start`.)
fn config_says_debug(p: Option<&std::path::Path>) -> bool {
    #[derive(serde::Deserialize)]
    struct D {
        #[serde(default)]
        debug: bool,
    }
    p.and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_norway::from_str::<D>(&t).ok())
        .is_some_and(|d| d.debug)
}

fn run(cli: Cli) -> Result<()> {
    let g = cli.g;
    match cli.cmd {
        Cmd::Start(a) => crate::cmd::start::run(*a, &g),
        Cmd::Configure(a) => crate::cmd::start::configure(*a, &g),
        Cmd::Init(a) => crate::cmd::init::run(a),
        Cmd::Version => print_out(&format!(
            "idmux v{} (Machine ID for OpenSSH; tbot v17/v18 compatible)\n",
            env!("CARGO_PKG_VERSION")
        )),
        Cmd::SshConfig(a) => ssh_config(a),
        Cmd::Cluster(c) => crate::cmd::cluster::run(c),
        Cmd::SshProxyCommand(a) => ssh_proxy_command(a),
        Cmd::Install(crate::cmd::systemd::InstallCmd::Systemd(a)) => {
            crate::cmd::systemd::run_bot(a, g.config.as_deref())
        }
        Cmd::Doctor(a) => crate::cmd::doctor::run(a),
        Cmd::Completion { shell } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            crate::cmd::completion::write(shell, &mut Cli::command(), "idmux", &mut out);
            print_out(&String::from_utf8_lossy(&out))
        }
    }
}

fn ssh_config(a: SshConfigArgs) -> Result<()> {
    let dir = absolute(&a.destination_dir)?;
    let id = Identity::load_destination(&dir)?;
    let params = idmux_identity::destination::ssh_config_params(
        &dir,
        &id,
        &a.proxy_server,
        idmux_identity::openssh::ProxyWay {
            tls_routing: !a.no_tls_routing,
            connection_upgrade: a.connection_upgrade,
        },
        a.mode.into(),
        a.cluster,
        a.bare_names,
    )?;
    openssh::write_files(&params, &id.host_cas)?;
    println!("wrote {}", params.dir.join("ssh_config").display());
    Ok(())
}

fn ssh_proxy_command(a: SshProxyCommandArgs) -> Result<()> {
    use idmux_client::proxy_command::{self, ProxyCommandArgs};
    let args = ProxyCommandArgs {
        destination_dir: a.destination_dir,
        proxy_server: a.proxy_server,
        cluster: a.cluster,
        user: a.user,
        host: a.host,
        port: a.port,
        transport: a.transport.into(),
        flags: idmux_transport::route::RouteFlags {
            tls_routing: start::pair(a.tls_routing, a.no_tls_routing),
            upgrade: start::pair(a.connection_upgrade, a.no_connection_upgrade),
        },
    };
    let rt = runtime::build(runtime::Kind::ProxyCommand)?;
    let result = rt.block_on(proxy_command::run(args));
    // Do not wait for a blocking stdin read that will never finish.
    rt.shutdown_background();
    result
}
