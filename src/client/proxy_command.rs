//! `idmux ssh-proxy-command`: the stdio ProxyCommand. One TLS + SSH handshake with the proxy
//! per invocation, then the node's SSH bytes between stdin/stdout and the proxy channel.
//!
//! Flags match tbot's `ssh-proxy-command` so an ssh_config written by tbot works with the
//! binary swapped, and mean what they mean to tbot: `--no-tls-routing` dials the SSH proxy port
//! given as `--proxy-server`, `--connection-upgrade` goes through a load balancer's WebSocket
//! upgrade (`route`). `--transport` picks gRPC TransportService or the SSH subsystem (`link`).

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use idmux_identity::Identity;
use idmux_transport::link::{self, TransportKind};
use idmux_transport::route::{Route, RouteFlags};
use idmux_transport::web::{Trust, WebClient};
use idmux_transport::{relay, stdio};
use idmux_wire::hostport::clean_target_host;
use idmux_wire::hostport::split_host_port;

/// What `ssh-proxy-command` needs (flag parsing is in `cli`).
#[derive(Clone, Debug)]
pub struct ProxyCommandArgs {
    /// The destination dir holding `identity`.
    pub destination_dir: PathBuf,
    /// The proxy, `host:port`.
    pub proxy_server: String,
    /// The cluster the node is in; `None` = the identity's cluster.
    pub cluster: Option<String>,
    /// ssh's `%r`; the proxy login is always the certificate's first principal.
    pub user: Option<String>,
    /// ssh's `%h`.
    pub host: String,
    /// ssh's `%p`.
    pub port: u16,
    /// Which transport reaches the node.
    pub transport: TransportKind,
    /// `--tls-routing`/`--no-tls-routing` and `--connection-upgrade`/`--no-connection-upgrade`
    /// as tbot's ssh_config writes them. Without TLS routing `proxy_server` is the proxy's
    /// SSH port (tbot's `ProxySSHAddr`); with it, the upgrade test decides when the flag is
    /// absent.
    pub flags: RouteFlags,
}

/// The way to the proxy from the flags alone (no ping: ssh runs this per connection). A load
/// balancer's certificate is checked with the system roots, as tbot's does.
pub async fn route(proxy_server: &str, flags: RouteFlags) -> Result<Route> {
    let web = WebClient::new(proxy_server, &Trust::System)?;
    if flags.tls_routing == Some(false) {
        return Ok(Route::ssh_port(
            web,
            proxy_server.to_string(),
            "--no-tls-routing given: --proxy-server is the SSH proxy port".into(),
        ));
    }
    let why = match flags.tls_routing {
        Some(_) => "--tls-routing given".to_string(),
        None => "TLS routing assumed".to_string(),
    };
    Route::with_routing(web, flags.upgrade, why).await
}

/// Run the ProxyCommand until the node's side of the connection ends.
pub async fn run(args: ProxyCommandArgs) -> Result<()> {
    let dir = idmux_identity::paths::absolute(&args.destination_dir)?;
    let id = Identity::load_destination(&dir)?;
    let expires = id
        .expires()
        .with_context(|| format!("{}: cannot read its expiry", dir.join("identity").display()))?;
    if expires < SystemTime::now() {
        bail!(
            "the identity in {} expired at {} (is the bot running?)",
            dir.join("identity").display(),
            humantime::format_rfc3339_seconds(expires)
        );
    }
    let cluster = id.cluster_or(args.cluster, &dir.join("identity"))?;
    let (proxy_host, _) = split_host_port(&args.proxy_server, "--proxy-server")?;
    let host = clean_target_host(&args.host, &proxy_host, &cluster);
    if host.is_empty() {
        bail!("--host {:?} names no node", args.host);
    }

    let route = route(&args.proxy_server, args.flags).await?;
    let link = link::connect(&route, &id, args.transport).await?;
    // Only a gRPC proxy may ask for the agent (agent frames); the SSH transport never does.
    let agent = match link {
        link::Link::Grpc(_) => {
            let agent = idmux_transport::agent::Agent::default();
            agent.set(id.key.to_ssh()?, id.ssh_cert.clone());
            Some(agent)
        }
        link::Link::Ssh(_) => None,
    };
    let node = link.open_node(host, args.port, &cluster, agent).await?;
    // ssh sends its ProxyCommand SIGHUP when it is done with the connection: end politely
    // (SSH disconnect, TLS close_notify) rather than vanish mid-stream.
    let mut hup = signal(SignalKind::hangup()).context("cannot watch for SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let relay = relay::relay(
        node,
        stdio::stdin(),
        stdio::stdout(),
        tokio::io::stderr(),
        ("stdin", "stdout"),
    );
    tokio::select! {
        r = relay => r?,
        _ = hup.recv() => {}
        _ = term.recv() => {}
    }
    link.close().await;
    Ok(())
}
