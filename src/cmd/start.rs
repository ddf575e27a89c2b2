//! `idmux start`: the flags of `tbot start` (identity output), or `-c` a tbot v2 YAML config.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use idmux_client::bot::config::{self, BotConfig, Output};
use idmux_identity::openssh::Mode;
use idmux_transport::link::TransportKind;

use idmux_client::bot::Bot;
use idmux_client::mux::server::{self as mux, MuxOptions};
use idmux_client::mux::upstream::IdentitySource;

use super::choices::{ModeArg, TransportArg};
use idmux_transport::route::{Finder, RouteFlags};
use idmux_transport::web::Trust;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct StartArgs {
    #[command(subcommand)]
    pub service: Option<Service>,
    /// tbot-style YAML config (version v2); flags given too override it.
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Where the bot keeps its own renewable identity.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where the identity output goes (key, certs, identity, known_hosts, ssh_config).
    #[arg(long)]
    pub destination_dir: Option<PathBuf>,
    /// The one-time join token from `bots add`, or the absolute path of a file holding it
    /// (as tbot; keeps the token out of `ps`).
    #[arg(long, env = "TELEPORT_BOT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Join method (only `token`).
    #[arg(long, default_value = "token")]
    pub join_method: String,
    /// The proxy's address, host:port.
    #[arg(long, env = "TELEPORT_PROXY")]
    pub proxy_server: Option<String>,
    /// CA certificate(s) the proxy's TLS certificate must chain to (default: system roots).
    #[arg(long)]
    pub ca_path: Option<PathBuf>,
    /// Do not verify the proxy's TLS certificate (development only; warns).
    #[arg(long)]
    pub insecure: bool,
    /// Lifetime of issued certificates.
    #[arg(long)]
    pub certificate_ttl: Option<String>,
    /// How often to renew.
    #[arg(long)]
    pub renewal_interval: Option<String>,
    /// Join or renew once, write the outputs and exit.
    #[arg(long)]
    pub oneshot: bool,
    /// ProxyCommand style written into ssh_config (default: fdpass through the multiplexer,
    /// stdio with --oneshot).
    #[arg(long, value_enum)]
    pub ssh_mode: Option<ModeArg>,
    /// Serve the diagnostics endpoint (/metrics, /readyz, /livez) on this address.
    #[arg(long)]
    pub diag_addr: Option<std::net::SocketAddr>,
    /// Channels per upstream connection before the multiplexer opens another.
    #[arg(long, default_value_t = 100)]
    pub max_channels_per_connection: usize,
    /// How the multiplexer reaches nodes: grpc (TransportService), ssh (the proxy's SSH
    /// subsystem), or auto: grpc, falling back to ssh when the proxy does not offer it.
    #[arg(long, value_enum)]
    pub transport: Option<TransportArg>,
    /// Roles to impersonate in the output (default: every role the bot role may
    /// impersonate, read from the cluster as tbot does).
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Also route bare one-label host names (`ssh node-1`) to the cluster in ssh_config and
    /// known_hosts. Off by default, as tbot: an Include of ssh_config would otherwise send
    /// every single-label host through the proxy.
    #[arg(long)]
    pub bare_names: bool,
    /// Reach the proxy through an L7 load balancer with the ALPN connection upgrade (default:
    /// detected as tbot does; TELEPORT_TLS_ROUTING_CONN_UPGRADE also decides).
    #[arg(long, overrides_with = "no_connection_upgrade")]
    pub connection_upgrade: bool,
    #[arg(long)]
    pub no_connection_upgrade: bool,
    /// Use the proxy's SSH port instead of TLS routing (default: as /webapi/ping says).
    #[arg(long, overrides_with = "tls_routing")]
    pub no_tls_routing: bool,
    #[arg(long, hide = true)]
    pub tls_routing: bool,
}

/// A `--x` / `--no-x` pair: `None` when neither was given.
pub(crate) fn pair(on: bool, off: bool) -> Option<bool> {
    match (on, off) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

/// Build the bot configuration from the config file and flags.
pub(crate) fn to_config(a: StartArgs) -> Result<BotConfig> {
    if a.join_method != "token" {
        bail!(
            "--join-method {:?} is not supported (want token)",
            a.join_method
        );
    }
    let mut c = match &a.config {
        Some(p) => config::parse_yaml(
            &idmux_identity::fsutil::read_string(p)?,
            &p.display().to_string(),
        )?,
        None => BotConfig {
            proxy_server: String::new(),
            token: None,
            data_dir: PathBuf::new(),
            outputs: vec![],
            certificate_ttl: std::time::Duration::from_secs(3600),
            renewal_interval: std::time::Duration::from_secs(20 * 60),
            oneshot: false,
            trust: Trust::System,
            multiplexer: None,
            diag_addr: None,
            max_channels: 100,
            transport: TransportKind::Auto,
            route_flags: Default::default(),
        },
    };
    c.route_flags = RouteFlags {
        tls_routing: pair(a.tls_routing, a.no_tls_routing),
        upgrade: pair(a.connection_upgrade, a.no_connection_upgrade),
    };
    if let Some(p) = a.proxy_server {
        c.proxy_server = p;
    }
    if c.proxy_server.is_empty() {
        bail!("--proxy-server is required (host:port of the proxy)");
    }
    idmux_wire::hostport::split_host_port(&c.proxy_server, "--proxy-server")?;
    let token_from = if a.token.is_some() {
        c.token = a.token;
        "--token"
    } else {
        "onboarding.token"
    };
    if let Some(t) = &c.token {
        c.token = Some(config::token_value(t, token_from)?);
    }
    if let Some(d) = a.data_dir {
        c.data_dir = d;
    }
    if c.data_dir.as_os_str().is_empty() {
        bail!("--data-dir is required");
    }
    if let Some(d) = a.destination_dir {
        let oneshot = a.oneshot || c.oneshot;
        let mode =
            a.ssh_mode
                .map(Mode::from)
                .unwrap_or(if oneshot { Mode::Stdio } else { Mode::Fdpass });
        if mode == Mode::Fdpass && !oneshot {
            c.multiplexer = Some(d.clone());
        }
        c.outputs.push(Output {
            dir: d,
            roles: a.roles.clone(),
            mode,
            bare_names: a.bare_names,
        });
    }
    check_dirs_apart(&c)?;
    c.diag_addr = a.diag_addr;
    c.max_channels = a.max_channels_per_connection;
    if let Some(t) = a.transport {
        c.transport = t.into();
    }
    if let Some(t) = a.certificate_ttl {
        c.certificate_ttl = idmux_identity::time::parse_ttl(&t, "--certificate-ttl")?;
    }
    if let Some(t) = a.renewal_interval {
        c.renewal_interval = idmux_identity::time::parse_ttl(&t, "--renewal-interval")?;
    }
    if c.renewal_interval.is_zero() || c.renewal_interval >= c.certificate_ttl {
        bail!(
            "--renewal-interval {:?} must be shorter than --certificate-ttl {:?}",
            c.renewal_interval,
            c.certificate_ttl
        );
    }
    c.oneshot |= a.oneshot;
    if a.insecure {
        c.trust = Trust::Insecure;
    } else if let Some(p) = a.ca_path {
        c.trust = Trust::CaFile(p);
    }
    Ok(c)
}

/// The data dir and every destination dir must be different dirs, none inside another: an
/// output written over the data dir destroys the renewable identity (only a new token
/// recovers). Checked before anything is joined or written.
fn check_dirs_apart(c: &BotConfig) -> Result<()> {
    let norm = |p: &std::path::Path| {
        let abs = idmux_identity::paths::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        std::fs::canonicalize(&abs).unwrap_or(abs)
    };
    let data = norm(&c.data_dir);
    let mut seen: Vec<(std::path::PathBuf, &std::path::Path)> = Vec::new();
    for o in &c.outputs {
        let d = norm(&o.dir);
        if d.starts_with(&data) || data.starts_with(&d) {
            bail!(
                "--data-dir {} and --destination-dir {} must be different dirs, neither inside \
                 the other (the output would overwrite the bot's renewable identity)",
                c.data_dir.display(),
                o.dir.display()
            );
        }
        if let Some((_, other)) = seen
            .iter()
            .find(|(s, _)| d.starts_with(s) || s.starts_with(&d))
        {
            bail!(
                "destination dirs {} and {} must be different dirs, neither inside the other",
                other.display(),
                o.dir.display()
            );
        }
        seen.push((d, &o.dir));
    }
    Ok(())
}

/// `idmux start ssh-multiplexer`: the multiplexer alone, on a destination dir that someone
/// else (a real tbot, or another idmux) keeps renewed.
#[derive(clap::Subcommand)]
pub(crate) enum Service {
    SshMultiplexer {
        /// The destination dir holding `identity`; v1.sock and agent.sock are created here.
        #[arg(long)]
        destination_dir: PathBuf,
        /// The proxy's address, host:port.
        #[arg(long)]
        proxy_server: String,
        #[arg(long)]
        diag_addr: Option<std::net::SocketAddr>,
        #[arg(long, default_value_t = 100)]
        max_channels_per_connection: usize,
        /// grpc, ssh, or auto (grpc, falling back to ssh).
        #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
        transport: TransportArg,
        /// CA certificates (PEM) that check the proxy's web certificate for /webapi/ping
        /// and a load balancer's (default: the system roots).
        #[arg(long)]
        ca_path: Option<PathBuf>,
        #[arg(long, overrides_with = "no_connection_upgrade")]
        connection_upgrade: bool,
        #[arg(long)]
        no_connection_upgrade: bool,
        #[arg(long, overrides_with = "tls_routing")]
        no_tls_routing: bool,
        #[arg(long, hide = true)]
        tls_routing: bool,
    },
}

pub fn run(a: StartArgs) -> Result<()> {
    if let Some(Service::SshMultiplexer {
        destination_dir,
        proxy_server,
        diag_addr,
        max_channels_per_connection,
        transport,
        ca_path,
        connection_upgrade,
        no_connection_upgrade,
        no_tls_routing,
        tls_routing,
    }) = a.service
    {
        let trust = ca_path.map(Trust::CaFile).unwrap_or(Trust::System);
        let web = idmux_transport::web::WebClient::new(&proxy_server, &trust)?;
        let flags = RouteFlags {
            tls_routing: pair(tls_routing, no_tls_routing),
            upgrade: pair(connection_upgrade, no_connection_upgrade),
        };
        let dest = idmux_identity::paths::absolute(&destination_dir)?;
        let rt = super::runtime::build(super::runtime::Kind::Daemon)?;
        // Another tool renews this dir: follow its identity file.
        return rt.block_on(mux::run(MuxOptions {
            identity: IdentitySource::Poll(dest.clone()),
            dest,
            route: Finder::new(web, flags),
            cap: max_channels_per_connection,
            transport: transport.into(),
            diag_addr,
        }));
    }
    let cfg = to_config(a)?;
    let rt = super::runtime::build(super::runtime::Kind::Daemon)?;
    rt.block_on(run_bot(cfg))
}

/// The bot, and the multiplexer on its output when one is configured: the bot renews, the
/// multiplexer follows each renewal through a `watch` (no file polling in one process).
async fn run_bot(cfg: BotConfig) -> Result<()> {
    let mut bot = Bot::new(cfg)?;
    bot.start().await?;
    if bot.config().oneshot {
        bot.heartbeat_once(std::time::Duration::from_secs(10)).await;
        return Ok(());
    }
    if let Some(dir) = bot.config().multiplexer.clone() {
        let dest = idmux_identity::paths::absolute(&dir)?;
        let identity = match bot.subscribe(&dest) {
            Some(rx) => IdentitySource::Watch(rx),
            None => IdentitySource::Poll(dest.clone()),
        };
        let route = bot
            .current_route()
            .ok_or_else(|| anyhow::anyhow!("the bot found no way to the proxy"))?;
        let cfg = bot.config();
        let opts = MuxOptions {
            dest,
            identity,
            route: Finder::known(route),
            cap: cfg.max_channels,
            transport: cfg.transport,
            diag_addr: cfg.diag_addr,
        };
        tokio::spawn(async move {
            if let Err(e) = mux::run(opts).await {
                tracing::error!("multiplexer stopped: {e:#}");
            }
        });
    }
    bot.renew_until_stopped().await
}
