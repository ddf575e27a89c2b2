//! `idmux start` and `idmux configure`: tbot's command lines (`lib/tbot/cli/start_legacy.go`,
//! `start_identity.go`, `start_multiplexer.go`, `start_shared.go`), the same flags under both
//! verbs. `start` runs the bot; `configure` prints the YAML (version v2) the flags describe.
//!
//! - `start [legacy]`: `--data-dir`, `--destination-dir` (tbot's legacy flags; the default).
//! - `start identity`: `--storage`, `--destination` URIs (`file:///path`, `memory://`).
//! - `start ssh-multiplexer`: the multiplexer with its own in-memory identity, as tbot's; or,
//!   with idmux's `--destination-dir` instead of `--destination`, the multiplexer alone on a dir
//!   that another tool (a real tbot) keeps renewed.
//!
//! Flags given with `-c` override the file, as tbot's do.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};

use idmux_client::bot::config::{
    self, BotConfig, Destination, FileService, FileV2, Multiplexer, Onboarding, Output, Storage,
};
use idmux_identity::openssh::Mode;

use idmux_client::bot::Bot;
use idmux_client::mux::limits::Limits;
use idmux_client::mux::server::{self as mux, MuxOptions};
use idmux_client::mux::upstream::IdentitySource;

use super::choices::{ModeArg, TransportArg};
use super::Globals;
use idmux_transport::route::{Finder, RouteFlags};
use idmux_transport::web::Trust;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct StartArgs {
    #[command(subcommand)]
    pub service: Option<Service>,
    #[command(flatten)]
    pub legacy: LegacyArgs,
}

/// The services `start` and `configure` take (tbot's; `legacy` is the default).
#[derive(Subcommand)]
pub(crate) enum Service {
    /// Starts tbot with either a config file or a legacy output (the default).
    Legacy(LegacyArgs),
    /// Start with an identity output for SSH and Teleport API access.
    #[command(visible_alias = "ssh", alias = "id")]
    Identity(IdentityArgs),
    /// Start with an SSH multiplexer service (v1.sock, agent.sock).
    SshMultiplexer(MuxArgs),
}

/// The flags every service shares (tbot's `newSharedStartArgs`), and idmux's own.
#[derive(Args, Clone, Default, PartialEq)]
pub(crate) struct SharedArgs {
    /// Address of the Teleport Auth Server. Prefer using --proxy-server where possible.
    #[arg(short = 'a', long, env = "TELEPORT_AUTH_SERVER")]
    pub auth_server: Option<String>,
    /// Address of the Teleport Proxy Server, host:port.
    #[arg(long, env = "TELEPORT_PROXY")]
    pub proxy_server: Option<String>,
    /// A bot join token or the absolute path of a file holding it, if attempting to onboard a
    /// new bot; used on first connect (a file keeps the token out of `ps`).
    #[arg(long, env = "TELEPORT_BOT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA pin to validate the Teleport Auth Server (sha256:<hex>); used on first connect.
    #[arg(long = "ca-pin")]
    pub ca_pins: Vec<String>,
    /// TTL of short-lived machine certificates.
    #[arg(long)]
    pub certificate_ttl: Option<String>,
    /// Interval at which short-lived certificates are renewed; must be less than the
    /// certificate TTL.
    #[arg(long)]
    pub renewal_interval: Option<String>,
    /// Method to use to join the cluster (idmux: token).
    #[arg(long)]
    pub join_method: Option<String>,
    /// If set, quit after the first renewal.
    #[arg(long)]
    pub oneshot: bool,
    /// Serve the diagnostics endpoint (/metrics, /readyz, /livez) on this address.
    #[arg(long)]
    pub diag_addr: Option<std::net::SocketAddr>,
    /// CA certificate(s) the proxy's TLS certificate must chain to (default: system roots).
    #[arg(long)]
    pub ca_path: Option<PathBuf>,
    /// Channels per upstream connection before the multiplexer opens another.
    #[arg(long, default_value_t = 100)]
    pub max_channels_per_connection: usize,
    /// How the multiplexer reaches nodes: grpc (TransportService), ssh (the proxy's SSH
    /// subsystem), or auto: grpc, falling back to ssh when the proxy does not offer it.
    #[arg(long, value_enum)]
    pub transport: Option<TransportArg>,
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
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The caps and timeouts of the sockets a multiplexer serves (idmux's own flags; defaults in
/// `idmux_client::mux::limits::Limits`). Durations as `10s`, `500ms`, `1m`.
#[derive(Args, Clone, Default, PartialEq)]
pub(crate) struct LimitArgs {
    /// v1.sock connections open at once, sessions included; more are closed at once
    /// [default: 4096].
    #[arg(long, env = "IDMUX_V1_MAX_CONNECTIONS", value_name = "N")]
    pub v1_max_connections: Option<usize>,
    /// How long a v1.sock client may take to send its request [default: 10s].
    #[arg(long, env = "IDMUX_V1_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub v1_request_timeout: Option<String>,
    /// Error lines written to v1.sock clients' stderr at once; more are dropped [default: 32].
    #[arg(long, env = "IDMUX_V1_MAX_ERROR_REPORTS", value_name = "N")]
    pub v1_max_error_reports: Option<usize>,
    /// How long an error line waits for a v1.sock client's stderr to take it [default: 2s].
    #[arg(long, env = "IDMUX_V1_ERROR_REPORT_TIMEOUT", value_name = "DURATION")]
    pub v1_error_report_timeout: Option<String>,
    /// agent.sock connections open at once; more are closed at once [default: 512].
    #[arg(long, env = "IDMUX_AGENT_MAX_CONNECTIONS", value_name = "N")]
    pub agent_max_connections: Option<usize>,
    /// The largest agent.sock request, in bytes (at most 262144) [default: 65536].
    #[arg(long, env = "IDMUX_AGENT_MAX_REQUEST_SIZE", value_name = "BYTES")]
    pub agent_max_request_size: Option<usize>,
    /// How long an agent.sock request may take once its first byte is in [default: 10s].
    #[arg(long, env = "IDMUX_AGENT_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub agent_request_timeout: Option<String>,
    /// --diag-addr connections open at once; more are closed at once [default: 64].
    #[arg(long, env = "IDMUX_DIAG_MAX_CONNECTIONS", value_name = "N")]
    pub diag_max_connections: Option<usize>,
    /// How long a --diag-addr client has to send its request headers [default: 5s].
    #[arg(long, env = "IDMUX_DIAG_HEADER_TIMEOUT", value_name = "DURATION")]
    pub diag_header_timeout: Option<String>,
    /// How long one --diag-addr connection may last [default: 30s].
    #[arg(long, env = "IDMUX_DIAG_CONNECTION_TIMEOUT", value_name = "DURATION")]
    pub diag_connection_timeout: Option<String>,
    /// Threads relaying v1.sock sessions, each with its own proxy connections; parallel
    /// sessions spread over them [default: one per core, at most 8].
    #[arg(long, env = "IDMUX_RELAY_THREADS", value_name = "N")]
    pub relay_threads: Option<usize>,
}

impl LimitArgs {
    /// The limits these flags give (the defaults for those not given), checked: zero, or a
    /// duration that does not parse, is refused in one line naming the flag.
    pub(crate) fn limits(&self) -> Result<Limits> {
        let mut l = Limits::default();
        let time = |v: &Option<String>, flag: &str, t: &mut std::time::Duration| -> Result<()> {
            if let Some(v) = v {
                *t = idmux_identity::time::parse_ttl(v, flag)?;
            }
            Ok(())
        };
        let count = |v: Option<usize>, n: &mut usize| {
            if let Some(v) = v {
                *n = v;
            }
        };
        count(self.v1_max_connections, &mut l.v1_max_connections);
        count(self.v1_max_error_reports, &mut l.v1_max_error_reports);
        count(self.agent_max_connections, &mut l.agent_max_connections);
        count(self.agent_max_request_size, &mut l.agent_max_request);
        count(self.diag_max_connections, &mut l.diag_max_connections);
        count(self.relay_threads, &mut l.relay_threads);
        time(
            &self.v1_request_timeout,
            "--v1-request-timeout",
            &mut l.v1_request_timeout,
        )?;
        time(
            &self.v1_error_report_timeout,
            "--v1-error-report-timeout",
            &mut l.v1_error_report_timeout,
        )?;
        time(
            &self.agent_request_timeout,
            "--agent-request-timeout",
            &mut l.agent_request_timeout,
        )?;
        time(
            &self.diag_header_timeout,
            "--diag-header-timeout",
            &mut l.diag_header_timeout,
        )?;
        time(
            &self.diag_connection_timeout,
            "--diag-connection-timeout",
            &mut l.diag_connection_timeout,
        )?;
        l.check()?;
        Ok(l)
    }
}

/// `start legacy` (and plain `start`): tbot's legacy flags.
#[derive(Args, Clone, Default, PartialEq)]
pub(crate) struct LegacyArgs {
    #[command(flatten)]
    pub shared: SharedArgs,
    /// Directory to store internal bot data. Access to this directory should be limited.
    #[arg(long)]
    pub data_dir: Option<String>,
    /// Directory to write short-lived machine certificates (key, certs, identity,
    /// known_hosts, ssh_config).
    #[arg(long)]
    pub destination_dir: Option<PathBuf>,
    /// ProxyCommand style written into ssh_config (default: fdpass through the multiplexer,
    /// stdio with --oneshot).
    #[arg(long, value_enum)]
    pub ssh_mode: Option<ModeArg>,
    /// Roles to impersonate in the output (default: every role the bot role may
    /// impersonate, read from the cluster as tbot does).
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Also route bare one-label host names (`ssh node-1`) to the cluster in ssh_config and
    /// known_hosts. Off by default, as tbot: an Include of ssh_config would otherwise send
    /// every single-label host through the proxy.
    #[arg(long)]
    pub bare_names: bool,
}

/// `start identity`.
#[derive(Args, Clone)]
pub(crate) struct IdentityArgs {
    #[command(flatten)]
    pub shared: SharedArgs,
    /// A destination URI for tbot's internal storage, e.g. file:///var/lib/teleport/bot or
    /// memory://.
    #[arg(long)]
    pub storage: Option<String>,
    /// A destination URI, such as file:///opt/machine-id.
    #[arg(long)]
    pub destination: String,
    /// The name of a specific cluster for which to issue an identity if using a leaf cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Roles to impersonate (idmux's; tbot's identity service has no such flag).
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    #[command(flatten)]
    pub readers: ReaderArgs,
}

/// `--reader-user` / `--reader-group` on a service (tbot's ACL readers).
#[derive(Args, Clone, Default)]
pub(crate) struct ReaderArgs {
    /// An additional user allowed by ACLs to read this destination (idmux: run `idmux init
    /// --reader-user` once instead).
    #[arg(long)]
    pub reader_user: Vec<String>,
    /// An additional group allowed by ACLs to read this destination (see --reader-user).
    #[arg(long)]
    pub reader_group: Vec<String>,
}

/// `start ssh-multiplexer`.
#[derive(Args, Clone)]
pub(crate) struct MuxArgs {
    #[command(flatten)]
    pub shared: SharedArgs,
    /// A destination URI for tbot's internal storage, e.g. file:///var/lib/teleport/bot or
    /// memory://.
    #[arg(long)]
    pub storage: Option<String>,
    /// A destination URI, such as file:///opt/machine-id: v1.sock, agent.sock, ssh_config
    /// and known_hosts are written there; the multiplexer's identity stays in memory.
    #[arg(
        long,
        required_unless_present = "destination_dir",
        conflicts_with = "destination_dir"
    )]
    pub destination: Option<String>,
    /// idmux's own: run the multiplexer alone on a destination dir that another tool (a real
    /// tbot, another idmux) keeps renewed; its `identity` file is followed.
    #[arg(long)]
    pub destination_dir: Option<PathBuf>,
    /// Session resumption (tbot's default); idmux's multiplexer does not resume sessions and
    /// says so once.
    #[arg(long, overrides_with = "no_enable_resumption")]
    pub enable_resumption: bool,
    #[arg(long)]
    pub no_enable_resumption: bool,
    /// The command to run as the SSH ProxyCommand, such as `fdpass-teleport`. Defaults to
    /// idmux-fdpass. Repeatable to add additional args.
    #[arg(long)]
    pub proxy_command: Vec<String>,
    /// A path to a proxy template config file (tsh's `proxy_templates`). Optional.
    #[arg(long)]
    pub proxy_templates_path: Option<PathBuf>,
    #[command(flatten)]
    pub readers: ReaderArgs,
}

/// A `--x` / `--no-x` pair: `None` when neither was given.
pub(crate) fn pair(on: bool, off: bool) -> Option<bool> {
    match (on, off) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

/// The bot configuration the command line describes: the `-c` file, then the flags over it.
pub(crate) fn to_config(a: StartArgs, g: &Globals) -> Result<BotConfig> {
    // The socket limits are checked here too, so `install systemd` refuses a bad one now.
    shared_of(&a).limits.limits()?;
    let c = describe(a, g)?;
    if let Some(auth) = c.auth_direct() {
        // Auth addressed directly (tbot's `registerThroughAuth`): checked before anything is
        // spent, including how Auth's certificate will be trusted on the join.
        idmux_wire::hostport::split_host_port(auth, "--auth-server")?;
        c.first_trust()?;
        return Ok(c);
    }
    if c.proxy_server.is_empty() {
        bail!(
            "--proxy-server is required (host:port of the proxy), or --auth-server with --ca-pin \
             to reach Auth directly"
        );
    }
    idmux_wire::hostport::split_host_port(&c.proxy_server, "--proxy-server")?;
    Ok(c)
}

/// The configuration the file and flags describe, checked except for what `configure` may
/// leave out (the proxy's address).
fn describe(a: StartArgs, g: &Globals) -> Result<BotConfig> {
    let mut c = match (&g.config, &g.config_string) {
        (Some(_), Some(_)) => bail!("cannot specify both config and config-string"),
        (Some(p), None) => config::parse_yaml(
            &idmux_identity::fsutil::read_string(p)?,
            &p.display().to_string(),
        )?,
        (None, Some(b64)) => {
            use base64::Engine;
            let text = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    anyhow!("--config-string (TBOT_CONFIG): not base64-encoded UTF-8")
                })?;
            config::parse_yaml(&text, "--config-string (TBOT_CONFIG)")?
        }
        (None, None) => BotConfig::empty(),
    };
    if g.fips {
        bail!("--fips: {}", config::FIPS_REFUSAL);
    }
    let service = a.service.unwrap_or(Service::Legacy(a.legacy));
    let shared = match &service {
        Service::Legacy(l) => l.shared.clone(),
        Service::Identity(i) => i.shared.clone(),
        Service::SshMultiplexer(m) => m.shared.clone(),
    };
    apply_shared(&mut c, &shared, g)?;
    match service {
        Service::Legacy(l) => {
            if let Some(d) = &l.data_dir {
                c.storage = config::destination_uri(d, "--data-dir")?;
            }
            if let Some(d) = l.destination_dir {
                let mode = l.ssh_mode.map(Mode::from).unwrap_or(if c.oneshot {
                    Mode::Stdio
                } else {
                    Mode::Fdpass
                });
                if !c.outputs.is_empty() {
                    tracing::warn!("CLI parameters are overriding output services");
                }
                c.outputs.clear();
                c.multiplexers.clear();
                if mode == Mode::Fdpass && !c.oneshot {
                    c.multiplexers.push(Multiplexer {
                        dir: d.clone(),
                        name: None,
                        lifetime: None,
                        proxy_command: vec![],
                        proxy_templates_path: None,
                    });
                }
                c.outputs.push(Output {
                    roles: l.roles.clone(),
                    bare_names: l.bare_names,
                    ..Output::identity(d, mode)
                });
            }
        }
        Service::Identity(i) => {
            refuse_readers(&i.readers)?;
            if i.cluster.is_some() {
                bail!(
                    "--cluster: an identity issued for a leaf cluster is not supported by idmux \
                     (the output reaches leaf clusters' nodes through the root cluster)"
                );
            }
            if let Some(s) = &i.storage {
                c.storage = config::destination_uri(s, "--storage")?;
            }
            let Storage::Dir(d) = config::destination_uri(&i.destination, "--destination")? else {
                bail!(
                    "--destination {}: an identity output must be a directory (file:///path)",
                    i.destination
                );
            };
            c.outputs.push(Output {
                roles: i.roles,
                ..Output::identity(d, Mode::Stdio)
            });
        }
        Service::SshMultiplexer(m) => {
            refuse_readers(&m.readers)?;
            if let Some(s) = &m.storage {
                c.storage = config::destination_uri(s, "--storage")?;
            }
            if m.enable_resumption {
                c.warnings.push(
                    "--enable-resumption: idmux's multiplexer does not resume sessions; \
                     connections run without it"
                        .into(),
                );
            }
            let dest = m.destination.as_deref().unwrap_or_default();
            let Storage::Dir(d) = config::destination_uri(dest, "--destination")? else {
                bail!("--destination {dest}: the multiplexer's destination must be a directory (file:///path)");
            };
            c.multiplexers.push(Multiplexer {
                dir: d,
                name: None,
                lifetime: None,
                proxy_command: m.proxy_command,
                proxy_templates_path: m.proxy_templates_path,
            });
        }
    }
    c.attach_multiplexers();
    if let Some(a) = c
        .auth_server
        .as_ref()
        .filter(|_| !c.proxy_server.is_empty())
    {
        // As tbot (`ConnectionConfig`): the proxy wins when both are given.
        c.warnings.push(format!(
            "--auth-server {a} is not used: the proxy {} is (as tbot does when both are given)",
            c.proxy_server
        ));
    }
    if let Some(t) = &c.token {
        let from = if shared.token.is_some() {
            "--token"
        } else {
            "onboarding.token"
        };
        c.token = Some(config::token_value(t, from)?);
    }
    for p in &c.ca_pins {
        check_pin(p)?;
    }
    if !c.ca_pins.is_empty() && !c.proxy_server.is_empty() {
        // As tbot: pins check Auth on a first connection straight to it; through the proxy
        // the proxy's TLS certificate is checked instead.
        c.warnings.push(
            "--ca-pin is not used: pins check Auth on a direct first connection; through the \
             proxy its TLS certificate is checked (--ca-path or the system roots)"
                .into(),
        );
    }
    check_dirs_apart(&c)?;
    c.check_lifetimes()?;
    Ok(c)
}

/// A `sha256:<hex>` pin, as Teleport's `utils.CheckSPKI` reads one.
fn check_pin(p: &str) -> Result<()> {
    let Some((alg, hex)) = p.split_once(':') else {
        bail!("--ca-pin {p:?}: invalid format for certificate pin, expected algorithm:pin");
    };
    if alg != "sha256" {
        bail!("--ca-pin {p:?}: sha256 only supported hashing algorithm for certificate pin");
    }
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--ca-pin {p:?}: want 64 hex digits after sha256:");
    }
    Ok(())
}

fn refuse_readers(r: &ReaderArgs) -> Result<()> {
    if !r.reader_user.is_empty() || !r.reader_group.is_empty() {
        bail!(
            "--reader-user/--reader-group: ACLs managed by the running bot are not supported; \
             run `idmux init --destination-dir DIR --reader-user USER` once instead"
        );
    }
    Ok(())
}

/// The shared flags over the file's values.
fn apply_shared(c: &mut BotConfig, a: &SharedArgs, g: &Globals) -> Result<()> {
    if let Some(m) = &a.join_method {
        if m != "token" {
            bail!("--join-method {m:?} is not supported (idmux joins with token)");
        }
    }
    c.route_flags = RouteFlags {
        tls_routing: pair(a.tls_routing, a.no_tls_routing),
        upgrade: pair(a.connection_upgrade, a.no_connection_upgrade),
    };
    if let Some(p) = &a.proxy_server {
        c.proxy_server = p.clone();
    }
    if let Some(p) = &a.auth_server {
        c.auth_server = Some(p.clone());
    }
    if a.token.is_some() || !a.ca_pins.is_empty() {
        c.token = a.token.clone();
        c.ca_pins = a.ca_pins.clone();
    }
    if a.diag_addr.is_some() {
        c.diag_addr = a.diag_addr;
    }
    c.max_channels = a.max_channels_per_connection;
    if let Some(t) = a.transport {
        c.transport = t.into();
    }
    if let Some(t) = &a.certificate_ttl {
        c.lifetime.ttl = idmux_identity::time::parse_ttl(t, "--certificate-ttl")?;
    }
    if let Some(t) = &a.renewal_interval {
        c.lifetime.renewal = idmux_identity::time::parse_ttl(t, "--renewal-interval")?;
    }
    c.oneshot |= a.oneshot;
    if g.insecure && !c.ca_pins.is_empty() {
        bail!("the option ca-pin is mutually exclusive with --insecure");
    }
    if g.insecure {
        c.trust = Trust::Insecure;
    } else if let Some(p) = &a.ca_path {
        c.trust = Trust::CaFile(p.clone());
    }
    c.debug |= g.debug;
    Ok(())
}

/// The data dir and every destination dir must be different dirs, none inside another: an
/// output written over the data dir destroys the renewable identity (only a new token
/// recovers). Checked before anything is joined or written.
fn check_dirs_apart(c: &BotConfig) -> Result<()> {
    let norm = |p: &std::path::Path| {
        let abs = idmux_identity::paths::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        std::fs::canonicalize(&abs).unwrap_or(abs)
    };
    let data = c.data_dir().map(norm);
    let mut seen: Vec<(std::path::PathBuf, &std::path::Path)> = Vec::new();
    for o in &c.outputs {
        let d = norm(&o.dir);
        if let Some(data) = &data {
            if d.starts_with(data) || data.starts_with(&d) {
                bail!(
                    "--data-dir {} and --destination-dir {} must be different dirs, neither \
                     inside the other (the output would overwrite the bot's renewable identity)",
                    c.data_dir().unwrap_or(data).display(),
                    o.dir.display()
                );
            }
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

/// `idmux configure [legacy|identity|ssh-multiplexer]`: the YAML the flags describe, as `tbot
/// configure` prints it (stdout, or `-o FILE`).
#[derive(Args)]
pub(crate) struct ConfigureArgs {
    /// Path to write the generated configuration file to rather than write to stdout.
    #[arg(short = 'o', long, global = true)]
    pub output: Option<PathBuf>,
    #[command(subcommand)]
    pub service: Option<Service>,
    /// (`legacy`'s flags, when no service is named.)
    #[command(flatten)]
    pub legacy: LegacyArgs,
}

/// `legacy`'s flags as nothing sets them (the environment included).
fn unset_legacy() -> LegacyArgs {
    #[derive(clap::Parser)]
    struct L {
        #[command(flatten)]
        l: LegacyArgs,
    }
    <L as clap::Parser>::try_parse_from(["configure"])
        .map(|l| l.l)
        .unwrap_or_default()
}

/// The YAML for a configuration built from flags alone.
pub(crate) fn configure_yaml(a: StartArgs, g: &Globals) -> Result<String> {
    let shared = shared_of(&a);
    if shared.limits != LimitArgs::default() {
        bail!(
            "configure: --v1-max-connections and the other socket limits have no key in \
             tbot's YAML; pass them to `idmux start` beside -c FILE"
        );
    }
    // The token as given (a file's path stays a path), as tbot prints it.
    let token = shared.token.clone();
    if shared.join_method.is_none() {
        bail!("join method must be provided (--join-method token)");
    }
    let g = Globals {
        config: None,
        ..g.clone()
    };
    let c = describe(a, &g)?;
    let mut f = FileV2 {
        version: "v2".into(),
        onboarding: Some(Onboarding {
            token,
            ca_path: None,
            ca_pins: c.ca_pins.clone(),
            join_method: "token".into(),
        }),
        storage: Some(match &c.storage {
            Storage::Dir(d) => Destination::directory(d.clone()),
            Storage::Memory => Destination::memory(),
        }),
        debug: c.debug,
        auth_server: c.auth_server.clone(),
        proxy_server: Some(c.proxy_server.clone()).filter(|p| !p.is_empty()),
        credential_ttl: Some(config::go_duration(c.lifetime.ttl)),
        renewal_interval: Some(config::go_duration(c.lifetime.renewal)),
        oneshot: c.oneshot,
        diag_addr: c.diag_addr.map(|a| a.to_string()),
        insecure: matches!(c.trust, Trust::Insecure),
        ca_path: match &c.trust {
            Trust::CaFile(p) => Some(p.clone()),
            _ => None,
        },
        transport: c.transport,
        ..Default::default()
    };
    for o in &c.outputs {
        if o.kind == config::OutputKind::Multiplexer {
            continue;
        }
        f.services.push(FileService {
            kind: "identity".into(),
            destination: Some(Destination::directory(o.dir.clone())),
            roles: o.roles.clone(),
            bare_names: o.bare_names,
            ..Default::default()
        });
    }
    for m in &c.multiplexers {
        f.services.push(FileService {
            kind: "ssh-multiplexer".into(),
            destination: Some(Destination::directory(m.dir.clone())),
            proxy_command: m.proxy_command.clone(),
            proxy_templates_path: m.proxy_templates_path.clone(),
            ..Default::default()
        });
    }
    let yaml = serde_norway::to_string(&f).map_err(|e| anyhow!("writing the config: {e}"))?;
    Ok(format!(
        "# tbot config file generated by `configure` command\n{yaml}"
    ))
}

pub(crate) fn configure(a: ConfigureArgs, g: &Globals) -> Result<()> {
    // `-o` may come before the service, so the two are not exclusive to clap: refuse legacy
    // flags given with a service here (never ignored).
    if a.service.is_some() && a.legacy != unset_legacy() {
        bail!(
            "configure: put the flags after the service name (e.g. `idmux configure -o FILE \
             identity --destination …`)"
        );
    }
    let start = StartArgs {
        service: a.service,
        legacy: a.legacy,
    };
    let text = configure_yaml(start, g)?;
    match &a.output {
        Some(p) => {
            idmux_identity::fsutil::write_atomic(
                p,
                text.as_bytes(),
                idmux_identity::fsutil::PRIVATE,
            )?;
            eprintln!("idmux: generated config file written to {}", p.display());
            Ok(())
        }
        None => super::print_out(&text),
    }
}

/// How long, once the daemon has stopped, work on tokio's blocking pool (a key being made, a
/// file being written) may hold the exit: SIGTERM is honoured within this, whatever that
/// work waits for (dropping the runtime would wait for it without limit).
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

pub fn run(a: StartArgs, g: &Globals) -> Result<()> {
    if let Some(Service::SshMultiplexer(m)) = &a.service {
        if let Some(destination_dir) = &m.destination_dir {
            return follow(m, destination_dir);
        }
    }
    let limits = shared_of(&a).limits.limits()?;
    let cfg = to_config(a, g)?;
    let rt = super::runtime::build(super::runtime::Kind::Daemon)?;
    let r = rt.block_on(run_bot(cfg, limits));
    rt.shutdown_timeout(EXIT_GRACE);
    r
}

/// The shared flags of whichever service `a` names.
fn shared_of(a: &StartArgs) -> &SharedArgs {
    match &a.service {
        None => &a.legacy.shared,
        Some(Service::Legacy(l)) => &l.shared,
        Some(Service::Identity(i)) => &i.shared,
        Some(Service::SshMultiplexer(m)) => &m.shared,
    }
}

/// `start ssh-multiplexer --destination-dir D`: the multiplexer alone, following the identity
/// another tool writes into D.
fn follow(m: &MuxArgs, destination_dir: &std::path::Path) -> Result<()> {
    let a = &m.shared;
    let proxy_server = a
        .proxy_server
        .clone()
        .ok_or_else(|| anyhow!("--proxy-server is required (host:port of the proxy)"))?;
    let trust = a
        .ca_path
        .clone()
        .map(Trust::CaFile)
        .unwrap_or(Trust::System);
    let web = idmux_transport::web::WebClient::new(&proxy_server, &trust)?;
    let flags = RouteFlags {
        tls_routing: pair(a.tls_routing, a.no_tls_routing),
        upgrade: pair(a.connection_upgrade, a.no_connection_upgrade),
    };
    let dest = idmux_identity::paths::absolute(destination_dir)?;
    let limits = a.limits.limits()?;
    let rt = super::runtime::build(super::runtime::Kind::Daemon)?;
    let r = rt.block_on(mux::run(MuxOptions {
        identity: IdentitySource::Poll(dest.clone()),
        dest,
        route: Finder::new(web, flags),
        cap: a.max_channels_per_connection,
        transport: a.transport.unwrap_or_default().into(),
        diag_addr: a.diag_addr,
        templates: templates(m.proxy_templates_path.as_deref())?,
        limits,
    }));
    rt.shutdown_timeout(EXIT_GRACE);
    r
}

/// tsh's proxy templates, read once at start (as tbot); none without a path.
fn templates(
    path: Option<&std::path::Path>,
) -> Result<std::sync::Arc<idmux_client::mux::templates::ProxyTemplates>> {
    Ok(std::sync::Arc::new(match path {
        Some(p) => {
            tracing::info!("loading proxy templates from {}", p.display());
            idmux_client::mux::templates::ProxyTemplates::load(p)?
        }
        None => Default::default(),
    }))
}

/// The bot, and a multiplexer on each of its multiplexer dirs: the bot renews, each
/// multiplexer follows its identity through a `watch` (no file polling in one process).
async fn run_bot(cfg: BotConfig, limits: Limits) -> Result<()> {
    // Read before the token is spent: a bad file stops the start, not a running bot.
    let loaded = cfg
        .multiplexers
        .iter()
        .map(|m| templates(m.proxy_templates_path.as_deref()))
        .collect::<Result<Vec<_>>>()?;
    let mut bot = Bot::new(cfg)?;
    bot.start().await?;
    if bot.config().oneshot {
        bot.heartbeat_once(std::time::Duration::from_secs(10)).await;
        return Ok(());
    }
    let route = bot
        .current_route()
        .ok_or_else(|| anyhow!("the bot found no way to the proxy"))?;
    let muxes = bot.config().multiplexers.clone();
    let mut muxes_running = tokio::task::JoinSet::new();
    for (n, m) in muxes.iter().enumerate() {
        let dest = idmux_identity::paths::absolute(&m.dir)?;
        let identity = match bot.subscribe(&dest) {
            Some(rx) => IdentitySource::Watch(rx),
            None => IdentitySource::Poll(dest.clone()),
        };
        let cfg = bot.config();
        let opts = MuxOptions {
            templates: loaded[n].clone(),
            dest: dest.clone(),
            identity,
            route: Finder::known(route.clone()),
            cap: cfg.max_channels,
            transport: cfg.transport,
            // One diagnostics endpoint: the first multiplexer's.
            diag_addr: if n == 0 { cfg.diag_addr } else { None },
            limits,
        };
        muxes_running.spawn(async move {
            let r = mux::run(opts).await;
            r.map_err(|e| anyhow!("the multiplexer in {} stopped: {e:#}", dest.display()))
        });
    }
    // A multiplexer that stops stops the bot: running on without it would leave ssh_config
    // pointing at a dead socket.
    // A multiplexer that returns Ok was stopped by SIGTERM, which the bot also sees: it then
    // stops as it does (after a renewal in flight is stored).
    let bot_run = bot.renew_until_stopped();
    tokio::pin!(bot_run);
    loop {
        tokio::select! {
            r = &mut bot_run => return r,
            Some(r) = muxes_running.join_next() => match r {
                Ok(Err(e)) => return Err(e),
                Ok(Ok(())) => continue,
                Err(e) => return Err(anyhow!("a multiplexer failed: {e}")),
            },
        }
    }
}
