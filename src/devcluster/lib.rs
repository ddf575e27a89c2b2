//! idmux-devcluster: the development cluster, a strict witness of Teleport: proxy + auth on
//! one TLS port on loopback, with real sshd nodes. Every answer has Teleport's shape and
//! every refusal Teleport's words, traced to Teleport's sources.
//!
//! Must not know: the client (`idmux-client`: the bot, the multiplexer); it shares only the
//! byte formats (`idmux-wire`), the identity formats (`idmux-identity`) and the relay
//! (`idmux-transport`) with it. No flags either: `idmux cluster` parses them.
//!
//! `idmux cluster start` creates (first time) the cluster's CAs in its data dir, starts N real
//! OpenSSH nodes, and serves one TLS port routed by ALPN, as a Teleport proxy with TLS routing:
//! `http/1.1` is the web API ([`web`], with `/webapi/connectionupgrade`, [`conn_upgrade`], whose
//! tunnelled TLS is routed here again), `teleport-proxy-ssh` the proxy's SSH server
//! ([`proxy_ssh`]), `teleport-proxy-ssh-grpc` the TransportService ([`proxy_grpc`]),
//! `teleport-auth@...` the Auth gRPC service ([`auth_grpc`]), `teleport-proxy-grpc` the join
//! service ([`join_service`]), `teleport-reversetunnel(v2)` negotiated and then closed (no
//! reverse tunnel server here). With `--no-tls-routing` the node and Auth ALPNs are refused on
//! the web port and a separate SSH port ([`ssh_port`]) multiplexes SSH and TLS, as a proxy in
//! `proxy_listener_mode: separate`. The web certificate (`DIR/ca.pem` signs it) covers
//! `localhost`, loopback, the listen address, `--public-addr`'s host and the machine's host
//! name when it is local; the proxy's Teleport host certificate adds `teleport.cluster.local`.
//! Roles, bots, tokens and nodes live in [`state`], which the admin commands change while the
//! cluster runs.

pub mod auth;
pub mod auth_grpc;
pub mod auth_resources;
pub mod ca;
mod coalesce;
pub mod conn_upgrade;
pub mod join_service;
pub mod node;
pub mod proxy_grpc;
pub mod proxy_ssh;
pub mod rotate;
pub mod router;
#[cfg(test)]
mod routing_tests;
pub mod ssh_port;
pub mod state;
mod tls_suites;
pub mod web;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hyper_util::rt::TokioIo;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::net::TcpListener;
use tokio_rustls::LazyConfigAcceptor;

use crate::ca::ClusterCas;
use idmux_identity::fsutil::{self, PRIVATE, PUBLIC};
use idmux_identity::keys::{KeyPair, KeyType};
use state::{Node, State};

pub use idmux_wire::alpn::{PROXY_GRPC as ALPN_PROXY_GRPC, PROXY_SSH as ALPN_PROXY_SSH};
use idmux_wire::alpn::{REVERSE_TUNNEL, REVERSE_TUNNEL_V2};
pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// The DNS names every Teleport host certificate carries (`constants.APIDomain`).
pub(crate) const HOST_CERT_DNS: [&str; 2] = ["teleport.cluster.local", "*.teleport.cluster.local"];

/// A byte stream a connection handler can serve: a TCP socket, or the stream tunnelled through
/// `/webapi/connectionupgrade`.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Where a TLS connection arrived; it decides the certificate of the web-facing ALPNs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// The web port: the web certificate for `http/1.1`, the join service and the reverse
    /// tunnel, as Teleport's ALPN router uses `tlsConfigWeb` for them.
    WebPort,
    /// Inside `/webapi/connectionupgrade`: the proxy's Teleport host certificate for every
    /// ALPN (`alpnServer.MakeConnectionHandler(alpnTLSConfigForWeb, ...)`, lib/service).
    Upgrade,
}

/// The TLS configurations of the web-facing ALPNs, for one certificate.
pub(crate) struct WebFace {
    web: Arc<rustls::ServerConfig>,
    join: Arc<rustls::ServerConfig>,
    tunnel: Arc<rustls::ServerConfig>,
}

impl WebFace {
    /// `http/1.1`: no client certificate asked for (a certificate is not how the web API's
    /// callers authenticate); the join service: `teleport-proxy-grpc` then `h2`, no client
    /// certificate; the reverse tunnel: `teleport-reversetunnelv2`, `teleport-reversetunnel`.
    fn new(cert_pem: &str, key: &KeyPair) -> Result<WebFace> {
        let base = tls_suites::go_order(
            tls_suites::server_builder()?
                .with_no_client_auth()
                .with_single_cert(cert_chain(cert_pem)?, key.to_rustls()?)?,
        );
        let with = |alpns: &[&[u8]]| {
            let mut c = base.clone();
            c.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
            Arc::new(c)
        };
        Ok(WebFace {
            web: with(&[ALPN_HTTP1]),
            join: with(&[join_service::ALPN_PROXY_GRPC_INSECURE, ALPN_H2]),
            tunnel: with(&[REVERSE_TUNNEL_V2, REVERSE_TUNNEL]),
        })
    }
}

/// A node transport the proxy can serve (`--transports`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyTransport {
    /// gRPC TransportService (ALPN teleport-proxy-ssh-grpc).
    Grpc,
    /// The SSH server and its proxy: subsystem (ALPN teleport-proxy-ssh).
    Ssh,
}

/// How the proxy listens and what it advertises (`idmux cluster start` flags).
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The bound web port.
    pub listen: SocketAddr,
    /// The node transports served.
    pub transports: Vec<ProxyTransport>,
    /// `--legacy-join-only`.
    pub legacy_join_only: bool,
    /// `false` with `--no-tls-routing` (`proxy_listener_mode: separate`).
    pub tls_routing: bool,
    /// The bound SSH port (`--ssh-listen`), only without TLS routing.
    pub ssh_addr: Option<SocketAddr>,
    /// `--public-addr` as `host:port` (default: the web listen address).
    pub public_addr: String,
    /// Host names the proxy's certificates also cover: `--public-addr`'s host and the
    /// machine's host name when it resolves to a local address.
    pub extra_names: Vec<String>,
    /// The interval of the server's pings on an `alpn-ping` upgrade
    /// (`defaults.ProxyPingInterval`, 30 s; `IDMUX_DEV_UPGRADE_PING_INTERVAL` for tests).
    pub upgrade_ping_interval: Duration,
    /// For tests only (`IDMUX_DEV_RENEWAL_ANSWER_DELAY`): how long Auth holds its answer to a
    /// bot's renewal after recording it, as a slow Auth or network would. `None`: at once.
    pub renewal_answer_delay: Option<Duration>,
}

/// What every connection handler needs.
pub struct Ctx {
    pub dir: PathBuf,
    pub proxy_addr: String,
    pub proxy_host: String,
    pub(crate) opts: ProxyOptions,
    leaf_names: Vec<String>,
    /// The web-facing ALPNs on the web port, with the web certificate: issued once at start,
    /// from the host CA then active (`DIR/ca.pem`), and kept through rotations, as a Teleport
    /// proxy's web certificate does not follow the cluster's CAs.
    web_face: WebFace,
    /// `--legacy-join-only`.
    pub legacy_join_only: bool,
    /// Everything that follows the CAs; swapped whole when a rotation step is applied.
    live: std::sync::RwLock<Arc<Live>>,
}

/// The CAs and what is made from them: the TLS configurations of the Teleport ALPNs (server
/// certificates from the serving host CA keys, client certificates checked against every
/// trusted user CA key) and the proxy SSH server's host certificate.
pub struct Live {
    pub cas: ClusterCas,
    /// The leaf clusters' CAs (`DIR/leaves/NAME/ca`), in `--leaf` order.
    pub leaves: Vec<ClusterCas>,
    /// `None` when that transport is switched off (`--transports`), as on an older proxy.
    tls_ssh: Option<Arc<rustls::ServerConfig>>,
    tls_grpc: Option<Arc<rustls::ServerConfig>>,
    tls_auth: Arc<rustls::ServerConfig>,
    /// Auth's own port (`--auth-listen`): Auth's certificate, a client certificate optional.
    tls_auth_direct: Arc<rustls::ServerConfig>,
    /// The SSH port's TLS (`--no-tls-routing`): the host certificate, a client certificate
    /// from the user CA required, ALPN `h2` or `teleport-proxy-ssh-grpc` (Teleport's
    /// `sshGRPCTLSConfig`); `None` when gRPC is not served (`--transports`).
    tls_ssh_port: Option<Arc<rustls::ServerConfig>>,
    /// The web-facing ALPNs inside a connection upgrade: the host certificate.
    upgrade_face: WebFace,
    ssh_config: Arc<russh::server::Config>,
}

/// Options of `idmux cluster start`.
pub struct StartOptions {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    /// `--no-tls-routing`: a proxy in `proxy_listener_mode: separate`.
    pub no_tls_routing: bool,
    /// `--ssh-listen`: the SSH port's address (used with `no_tls_routing`).
    pub ssh_listen: SocketAddr,
    /// `--public-addr HOST[:PORT]`.
    pub public_addr: Option<String>,
    /// `--auth-listen`: Auth served directly on this address, as Teleport's auth service
    /// listens on 3025.
    pub auth_listen: Option<SocketAddr>,
    pub name: String,
    pub nodes: usize,
    /// The node transports served.
    pub transports: Vec<ProxyTransport>,
    /// The signature algorithm suite (`None`: keep the stored one; balanced-v1 when new).
    pub suite: Option<ca::Suite>,
    /// Leaf clusters trusted by this one, each with its own CAs and one sshd node.
    pub leaves: Vec<String>,
    /// Answer the join service as a Teleport without it (Unimplemented): bots join through
    /// `POST /webapi/host/credentials`.
    pub legacy_join_only: bool,
}

fn cert_chain(pem: &str) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()?;
    if certs.is_empty() {
        bail!("no certificate in PEM");
    }
    Ok(certs)
}

/// Client certificate roots: every trusted user CA certificate (a rotation has two).
fn user_roots(cas: &ClusterCas) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for pem in cas.user.trusted_tls_pems() {
        for c in cert_chain(&pem)? {
            roots.add(c)?;
        }
    }
    Ok(Arc::new(roots))
}

/// The node transports' TLS configurations (client certificate from the user CA required;
/// ALPN `teleport-proxy-ssh`, then the same with `teleport-proxy-ssh-grpc`, then the SSH
/// port's `h2` or `teleport-proxy-ssh-grpc`).
fn transport_tls_configs(
    cas: &ClusterCas,
    cert_pem: &str,
    key: &KeyPair,
) -> Result<[rustls::ServerConfig; 3]> {
    let required = WebPkiClientVerifier::builder(user_roots(cas)?).build()?;
    let mut ssh = tls_suites::go_order(
        tls_suites::server_builder()?
            .with_client_cert_verifier(required)
            .with_single_cert(cert_chain(cert_pem)?, key.to_rustls()?)?,
    );
    ssh.alpn_protocols = vec![ALPN_PROXY_SSH.to_vec()];
    let mut grpc = ssh.clone();
    grpc.alpn_protocols = vec![ALPN_PROXY_GRPC.to_vec()];
    let mut ssh_port = ssh.clone();
    ssh_port.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_PROXY_GRPC.to_vec()];
    Ok([ssh, grpc, ssh_port])
}

/// Load or create a key file.
fn key_file(path: &Path, kind: KeyType) -> Result<KeyPair> {
    if path.exists() {
        return KeyPair::from_pem(&fsutil::read_string(path)?)
            .with_context(|| path.display().to_string());
    }
    let k = KeyPair::generate(kind)?;
    fsutil::write_atomic(path, k.to_pem()?.as_bytes(), PRIVATE)?;
    Ok(k)
}

/// A test setting given as an environment variable: a positive humantime duration (`1s`,
/// `250ms`), or `None` when unset.
pub(crate) fn duration_from_env(name: &str) -> Result<Option<Duration>> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => match humantime::parse_duration(v.trim()) {
            Ok(d) if !d.is_zero() => Ok(Some(d)),
            Ok(_) => bail!("{name}={v:?}: want a positive duration"),
            Err(e) => bail!("{name}={v:?}: {e}"),
        },
    }
}

/// The names of the proxy's certificates: `localhost` and `extra` host names as DNS names,
/// loopback, the listen address and `extra` IP literals as IP addresses (pure).
pub(crate) fn cert_names(listen: SocketAddr, extra: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec!["localhost".to_string()];
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    let add_ip = |ip: IpAddr, ips: &mut Vec<IpAddr>| {
        if !ip.is_unspecified() && !ips.contains(&ip) {
            ips.push(ip);
        }
    };
    add_ip(listen.ip(), &mut ips);
    for h in extra {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        match h.parse::<IpAddr>() {
            Ok(ip) => add_ip(ip, &mut ips),
            Err(_) if !h.is_empty() && !dns.iter().any(|d| d == h) => dns.push(h.to_string()),
            Err(_) => {}
        }
    }
    (dns, ips)
}

/// The proxy's web certificate, or (`host_cert`) its Teleport host certificate, which also
/// names `teleport.cluster.local` and `*.teleport.cluster.local`; from the serving host CA
/// keys.
fn proxy_tls_cert(
    cas: &ClusterCas,
    key: &KeyPair,
    opts: &ProxyOptions,
    host_cert: bool,
) -> Result<String> {
    let (mut dns, ips) = cert_names(opts.listen, &opts.extra_names);
    if host_cert {
        dns.extend(HOST_CERT_DNS.iter().map(|s| s.to_string()));
    }
    cas.issue_tls_server(
        &key.spki_der()?,
        "proxy",
        &dns,
        &ips,
        Duration::from_secs(365 * 86400),
    )
}

/// The machine's host name, when it resolves to an address of this machine (a test can then
/// reach the cluster by a name that is not a loopback literal).
pub fn local_hostname() -> Option<String> {
    use std::net::ToSocketAddrs;
    let name = nix::unistd::gethostname().ok()?.into_string().ok()?;
    if name.is_empty() {
        return None;
    }
    let addrs = (name.as_str(), 0).to_socket_addrs().ok()?;
    for a in addrs {
        // Binding succeeds only for an address of this machine.
        if std::net::UdpSocket::bind((a.ip(), 0)).is_ok() {
            return Some(name);
        }
    }
    None
}

/// Parse `--public-addr HOST[:PORT]` (the port defaults to `web_port`) into `host:port`.
pub fn parse_public_addr(s: &str, web_port: u16) -> Result<(String, String)> {
    use idmux_wire::hostport::{self, HostPortError};
    let (host, port) = match hostport::split(s) {
        Ok((h, p)) => (h.to_string(), p),
        Err(HostPortError::NoPort) => {
            let h = s.trim_start_matches('[').trim_end_matches(']');
            (h.to_string(), web_port)
        }
        Err(e) => bail!("--public-addr {s:?}: want HOST[:PORT] ({e})"),
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        bail!("--public-addr {s:?}: want HOST[:PORT]");
    }
    Ok((hostport::join(&host, port), host))
}

impl Live {
    /// This cluster's CAs, then every leaf cluster's: what the bot's CA requests see.
    pub fn clusters(&self) -> Vec<&ClusterCas> {
        std::iter::once(&self.cas).chain(&self.leaves).collect()
    }

    /// The leaf cluster names, in order.
    pub fn leaf_names(&self) -> Vec<String> {
        self.leaves.iter().map(|l| l.cluster.clone()).collect()
    }

    /// Issue the proxy's and Auth's certificates from `cas` and build their configurations.
    fn build(dir: &Path, cas: ClusterCas, leaves: &[String], opts: &ProxyOptions) -> Result<Live> {
        let leaves = leaves
            .iter()
            .map(|l| ClusterCas::load(&leaf_dir(dir, l).join("ca")))
            .collect::<Result<Vec<_>>>()?;
        let pdir = dir.join("proxy");
        let proxy_host = opts.listen.ip().to_string();
        let tls_key = key_file(&pdir.join("tls.key"), KeyType::EcdsaP256)?;
        // The Teleport host certificate: the node transports, and everything inside an upgrade.
        let cert = proxy_tls_cert(&cas, &tls_key, opts, true)?;
        fsutil::write_atomic(&pdir.join("tls.crt"), cert.as_bytes(), PUBLIC)?;
        let [ssh, grpc, ssh_port] = transport_tls_configs(&cas, &cert, &tls_key)?;
        let upgrade_face = WebFace::new(&cert, &tls_key)?;
        let serves = |t| opts.transports.contains(&t);
        let (auth, auth_direct) = auth_grpc::tls_configs(&pdir, &cas)?;
        // SSH: the proxy's host key and host cert.
        let host_key = key_file(&pdir.join("ssh_host_key"), KeyType::Ed25519)?;
        let host_id = proxy_host_id(dir)?;
        let mut principals = vec![proxy_host];
        principals.extend(opts.extra_names.iter().cloned());
        let host_cert = cas.issue_ssh_host(
            &host_key.ssh_public()?,
            &host_id,
            "proxy",
            "Proxy",
            &principals,
            Duration::from_secs(365 * 86400),
        )?;
        let mut sc = russh::server::Config {
            keys: vec![host_key.to_ssh()?],
            certificates: vec![host_cert],
            auth_rejection_time: Duration::from_millis(50),
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            // Small windows keep russh's receive-side buffering bounded (see proxy_ssh).
            window_size: 256 * 1024,
            nodelay: true,
            preferred: russh::Preferred {
                cipher: std::borrow::Cow::Borrowed(TELEPORT_SSH_CIPHERS),
                ..Default::default()
            },
            ..Default::default()
        };
        sc.methods = russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]);
        Ok(Live {
            cas,
            leaves,
            tls_ssh: serves(ProxyTransport::Ssh).then(|| Arc::new(ssh)),
            tls_grpc: serves(ProxyTransport::Grpc).then(|| Arc::new(grpc)),
            tls_auth: Arc::new(auth),
            tls_auth_direct: Arc::new(auth_direct),
            tls_ssh_port: serves(ProxyTransport::Grpc).then(|| Arc::new(ssh_port)),
            upgrade_face,
            ssh_config: Arc::new(sc),
        })
    }
}

impl Ctx {
    pub(crate) fn new(
        dir: &Path,
        cas: ClusterCas,
        leaves: &[String],
        opts: ProxyOptions,
    ) -> Result<Ctx> {
        let proxy_host = opts.listen.ip().to_string();
        let proxy_addr = opts.listen.to_string();
        let pdir = dir.join("proxy");
        fsutil::ensure_private_dir(&pdir)?;
        // The web certificate: issued once, from the host CA at start (`ca.pem`).
        let web_key = key_file(&pdir.join("web.key"), KeyType::EcdsaP256)?;
        let web_cert = proxy_tls_cert(&cas, &web_key, &opts, false)?;
        fsutil::write_atomic(&pdir.join("web.crt"), web_cert.as_bytes(), PUBLIC)?;
        let web_face = WebFace::new(&web_cert, &web_key)?;
        let live = Live::build(dir, cas, leaves, &opts)?;
        Ok(Ctx {
            dir: dir.to_path_buf(),
            proxy_addr,
            proxy_host,
            legacy_join_only: opts.legacy_join_only,
            opts,
            leaf_names: leaves.to_vec(),
            web_face,
            live: std::sync::RwLock::new(Arc::new(live)),
        })
    }

    /// The CAs and what follows them, as of now.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reload the CAs from disk and rebuild what follows them (a rotation step was applied).
    fn reload(&self) -> Result<Arc<Live>> {
        let cas = ClusterCas::load(&self.dir.join("ca"))?;
        let live = Arc::new(Live::build(&self.dir, cas, &self.leaf_names, &self.opts)?);
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = live.clone();
        Ok(live)
    }
}

fn proxy_host_id(dir: &Path) -> Result<String> {
    let p = dir.join("proxy").join("host_id");
    if let Ok(s) = std::fs::read_to_string(&p) {
        return Ok(s.trim().to_string());
    }
    let id = uuid::Uuid::new_v4().to_string();
    fsutil::write_atomic(&p, id.as_bytes(), PUBLIC)?;
    Ok(id)
}

/// How long a refused client gets to read our TLS alert before its socket is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Finish the TLS handshake with `config`. A failed handshake (a client certificate from an
/// unknown CA, an unserved ALPN) has queued a TLS alert that says why; the socket is then
/// half-closed and drained for up to [`REFUSAL_LINGER`] before it is dropped. Closing at once
/// with the client's next bytes (TLS 1.3 clients send data right after their Finished) still
/// unread would send a TCP reset, which destroys the alert before the client reads it.
pub(crate) async fn handshake<S: Io>(
    start: tokio_rustls::StartHandshake<S>,
    config: Arc<rustls::ServerConfig>,
) -> std::io::Result<tokio_rustls::server::TlsStream<S>> {
    // Go's suite choice, which needs the client's offer (`tls_suites`).
    let config = tls_suites::for_client(config, start.client_hello().cipher_suites());
    match start.into_stream(config).into_fallible().await {
        Ok(tls) => Ok(tls),
        Err((e, mut io)) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = io.shutdown().await;
            let drain = async {
                let mut sink = [0u8; 4096];
                let mut left = 1usize << 20;
                while left > 0 {
                    match io.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            };
            let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
            Err(e)
        }
    }
}

/// Accept TLS for Auth on `io` (mutual TLS with Auth's certificate) and serve Auth's gRPC: the
/// end of the `teleport-auth@` route and of TransportService `ProxyCluster`.
pub(crate) async fn serve_auth<S: Io>(ctx: Arc<Ctx>, io: S, peer: &str) -> Result<()> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
    serve_auth_tls(ctx, start, peer).await
}

async fn serve_auth_tls<S: Io>(
    ctx: Arc<Ctx>,
    start: tokio_rustls::StartHandshake<S>,
    peer: &str,
) -> Result<()> {
    let tls = handshake(start, ctx.live().tls_auth.clone())
        .await
        .map_err(|e| anyhow!("TLS from {peer}: {e}"))?;
    let caller = auth_grpc::peer_identity(&tls).map_err(|e| anyhow!("auth from {peer}: {e}"))?;
    auth_grpc::serve(ctx, tls, caller).await
}

/// Read a TLS connection's ClientHello within the handshake deadline.
async fn client_hello<S: Io>(io: S, peer: &str) -> Result<tokio_rustls::StartHandshake<S>> {
    tokio::time::timeout(
        ssh_port::TLS_HANDSHAKE_TIMEOUT,
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io),
    )
    .await
    .map_err(|_| {
        anyhow!(
            "no TLS ClientHello from {peer} within {:?}",
            ssh_port::TLS_HANDSHAKE_TIMEOUT
        )
    })?
    .map_err(Into::into)
}

/// One connection to Auth's own port (`--auth-listen`): TLS with Auth's certificate, a client
/// certificate optional (checked against the user CA when given), then Auth's gRPC, where a
/// caller without a certificate is the Nop role ([`auth_grpc::nop_may_call`]).
pub(crate) async fn serve_auth_direct<S: Io>(ctx: Arc<Ctx>, io: S, peer: &str) -> Result<()> {
    let start = client_hello(io, peer).await?;
    let tls = tokio::time::timeout(
        ssh_port::TLS_HANDSHAKE_TIMEOUT,
        handshake(start, ctx.live().tls_auth_direct.clone()),
    )
    .await
    .map_err(|_| anyhow!("TLS from {peer}: no handshake within the deadline"))?
    .map_err(|e| anyhow!("TLS from {peer}: {e}"))?;
    let caller = match tls.get_ref().1.peer_certificates() {
        Some(c) if !c.is_empty() => {
            Some(auth_grpc::peer_identity(&tls).map_err(|e| anyhow!("auth from {peer}: {e}"))?)
        }
        _ => None,
    };
    auth_grpc::serve_as(ctx, tls, caller).await
}

/// [`serve_conn`] for a stream tunnelled through `/webapi/connectionupgrade`, boxed: the
/// upgrade is served from inside the web API, which [`serve_conn`] itself serves.
pub(crate) fn serve_upgraded(
    ctx: Arc<Ctx>,
    io: Box<dyn Io>,
    peer: String,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>> {
    Box::pin(async move { serve_conn(ctx, io, &peer, Entry::Upgrade).await })
}

/// Accept one TLS connection and route it by ALPN, as Teleport's ALPN router does.
pub(crate) async fn serve_conn<S: Io>(
    ctx: Arc<Ctx>,
    io: S,
    peer: &str,
    entry: Entry,
) -> Result<()> {
    let start = client_hello(io, peer).await?;
    let offered: Vec<Vec<u8>> = start
        .client_hello()
        .alpn()
        .map(|i| i.map(|p| p.to_vec()).collect())
        .unwrap_or_default();
    let wants = |p: &[u8]| offered.iter().any(|o| o == p);
    let live = ctx.live();
    let face = match entry {
        Entry::WebPort => &ctx.web_face,
        Entry::Upgrade => &live.upgrade_face,
    };
    // Without TLS routing the node and Auth ALPNs are not served on this port (see FIDELITY.md:
    // a real proxy in separate mode still routes them; this dev cluster refuses them so that a
    // client ignoring `tls_routing_enabled: false` fails).
    let routed = ctx.opts.tls_routing;
    if routed && auth_grpc::wants_auth(&offered) {
        return serve_auth_tls(ctx.clone(), start, peer).await;
    }
    if wants(join_service::ALPN_PROXY_GRPC_INSECURE) {
        let tls = handshake(start, face.join.clone())
            .await
            .map_err(|e| anyhow!("TLS from {peer}: {e}"))?;
        return join_service::serve(ctx, tls).await;
    }
    if wants(REVERSE_TUNNEL_V2) || wants(REVERSE_TUNNEL) {
        let tls = handshake(start, face.tunnel.clone())
            .await
            .map_err(|e| anyhow!("TLS from {peer}: {e}"))?;
        let alpn = tls
            .get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        // No reverse tunnel server here (FIDELITY.md): the handshake is all a client's
        // upgrade detection needs; the connection is then closed.
        tracing::info!(
            peer,
            alpn,
            "reverse tunnel: not served by the dev cluster; closing"
        );
        let mut tls = tls;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        return Ok(());
    }
    if let Some(cfg) = live
        .tls_grpc
        .clone()
        .filter(|_| routed && wants(ALPN_PROXY_GRPC))
    {
        let tls = handshake(start, cfg)
            .await
            .map_err(|e| anyhow!("TLS from {peer}: {e}"))?;
        let caller = auth_grpc::peer_identity(&tls)
            .map_err(|e| anyhow!("transport gRPC from {peer}: {e}"))?;
        return proxy_grpc::serve(ctx, tls, caller).await;
    }
    if let Some(cfg) = live
        .tls_ssh
        .clone()
        .filter(|_| routed && wants(ALPN_PROXY_SSH))
    {
        let tls = handshake(start, cfg)
            .await
            .map_err(|e| anyhow!("TLS from {peer}: {e}"))?;
        let user = auth_grpc::peer_identity(&tls)
            .map(|i| i.username)
            .map_err(|e| anyhow!("proxy SSH from {peer}: {e}"))?;
        let handler = proxy_ssh::ProxyConn::new(ctx.clone(), Some(user));
        let session = russh::server::run_stream(live.ssh_config.clone(), tls, handler).await?;
        session.await?;
        return Ok(());
    }
    if !offered.is_empty() && !wants(ALPN_HTTP1) {
        // Finish the handshake with the web's configuration: rustls answers the client's
        // unknown ALPN with a `no_application_protocol` alert, as any TLS server should, so a
        // client can tell "not served here" from a broken connection.
        let names: Vec<String> = offered
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        let _ = handshake(start, face.web.clone()).await;
        bail!("{peer} offered no protocol this proxy serves: {names:?}");
    }
    let tls = handshake(start, face.web.clone())
        .await
        .map_err(|e| anyhow!("TLS from {peer}: {e}"))?;
    let svc_ctx = ctx.clone();
    let peer_name = peer.to_string();
    let svc =
        hyper::service::service_fn(move |req| web::handle(svc_ctx.clone(), peer_name.clone(), req));
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(WEB_HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), svc)
        .with_upgrades()
        .await?;
    Ok(())
}

/// How long a web client may take to send a request's headers (Teleport's web server:
/// `ReadHeaderTimeout: defaults.ReadHeadersTimeout`).
const WEB_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Run the cluster in the foreground until SIGINT/SIGTERM.
pub async fn start(mut opts: StartOptions) -> Result<()> {
    // sshd gets paths from here (its config, host keys, CA files): they must not depend on
    // the working directory.
    opts.dir = idmux_identity::paths::absolute(&opts.dir)?;
    let dir = &opts.dir;
    fsutil::ensure_private_dir(dir)?;
    let cas = tokio::task::block_in_place(|| {
        ClusterCas::load_or_create(&dir.join("ca"), &opts.name, opts.suite)
    })?;
    // The web certificate's issuer: the host CA keys serving now.
    fsutil::write_atomic(
        &dir.join("ca.pem"),
        cas.serving_host_keys().tls_cert_pem.as_bytes(),
        PUBLIC,
    )?;
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen", opts.listen))?;
    let listen = listener.local_addr()?;
    for l in &opts.leaves {
        if l.is_empty() || l.contains(|c: char| c.is_whitespace() || c == '/') || *l == opts.name {
            bail!(
                "--leaf {l:?}: want a cluster name other than {:?}",
                opts.name
            );
        }
        tokio::task::block_in_place(|| {
            ClusterCas::load_or_create(&leaf_dir(dir, l).join("ca"), l, opts.suite)
        })?;
    }
    // The SSH port (3023-style) of a proxy without TLS routing.
    let ssh_listener = if opts.no_tls_routing {
        Some(
            TcpListener::bind(opts.ssh_listen)
                .await
                .with_context(|| format!("--ssh-listen {}: cannot listen", opts.ssh_listen))?,
        )
    } else {
        None
    };
    let ssh_addr = ssh_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    // Auth's own port (Teleport's 3025), when asked for.
    let auth_listener = match opts.auth_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("--auth-listen {a}: cannot listen"))?,
        ),
        None => None,
    };
    let auth_addr = auth_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let (public_addr, mut extra_names) = match &opts.public_addr {
        Some(p) => {
            let (addr, host) = parse_public_addr(p, listen.port())?;
            (addr, vec![host])
        }
        None => (listen.to_string(), vec![]),
    };
    if let Some(h) = local_hostname() {
        if !extra_names.contains(&h) {
            extra_names.push(h);
        }
    }
    let proxy_opts = ProxyOptions {
        listen,
        transports: opts.transports.clone(),
        legacy_join_only: opts.legacy_join_only,
        tls_routing: !opts.no_tls_routing,
        ssh_addr,
        public_addr,
        extra_names,
        upgrade_ping_interval: conn_upgrade::ping_interval_from_env()?,
        renewal_answer_delay: duration_from_env(auth_grpc::RENEWAL_ANSWER_DELAY_ENV)?,
    };
    let ctx = Arc::new(tokio::task::block_in_place(|| {
        Ctx::new(dir, cas, &opts.leaves, proxy_opts)
    })?);

    // Nodes: keep host ids across restarts. Each leaf cluster has one node, `node-1`.
    let st = State::load(dir).unwrap_or_default();
    let host_id = |known: Option<&Vec<Node>>, name: &str| {
        known
            .and_then(|k| k.iter().find(|n| n.name == name))
            .map(|n| n.host_id.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    };
    let live = ctx.live();
    let mut nodes = Vec::new();
    for i in 1..=opts.nodes {
        let name = format!("node-{i}");
        let id = host_id(Some(&st.nodes), &name);
        let n = tokio::task::block_in_place(|| {
            node::SshdNode::start(&live.cas, &dir.join("nodes").join(&name), &name, &id)
        })?;
        nodes.push(RunningNode {
            leaf: None,
            node: n,
        });
    }
    for (i, leaf) in live.leaves.iter().enumerate() {
        let name = "node-1".to_string();
        let id = host_id(st.leaves.get(&leaf.cluster), &name);
        let ndir = leaf_dir(dir, &leaf.cluster).join("nodes").join(&name);
        let n = tokio::task::block_in_place(|| {
            node::SshdNode::start_for(leaf, &live.cas, &ndir, &name, &id)
        })?;
        nodes.push(RunningNode {
            leaf: Some(i),
            node: n,
        });
    }
    drop(live);
    let listing: Vec<String> = nodes
        .iter()
        .map(|r| {
            let n = &r.node;
            match r.leaf {
                None => format!("  node {} at {}", n.name, n.addr),
                Some(i) => format!("  node {}.{} at {}", n.name, opts.leaves[i], n.addr),
            }
        })
        .collect();
    let as_node = |n: &node::SshdNode, cluster: &str| Node {
        name: n.name.clone(),
        host_id: n.host_id.clone(),
        addr: n.addr.to_string(),
        labels: [
            ("env".to_string(), "dev".to_string()),
            ("name".to_string(), n.name.clone()),
            ("cluster".to_string(), cluster.to_string()),
        ]
        .into(),
    };
    let inventory: Vec<Node> = nodes
        .iter()
        .filter(|r| r.leaf.is_none())
        .map(|r| as_node(&r.node, &opts.name))
        .collect();
    let mut leaf_inventory = std::collections::BTreeMap::new();
    for r in &nodes {
        if let Some(i) = r.leaf {
            let l = &opts.leaves[i];
            leaf_inventory
                .entry(l.clone())
                .or_insert_with(Vec::new)
                .push(as_node(&r.node, l));
        }
    }
    let nodes = Arc::new(std::sync::Mutex::new(nodes));
    let cluster_name = ctx.live().cas.cluster.clone();
    let proxy_addr = ctx.proxy_addr.clone();
    let ssh_proxy_addr = ssh_addr.map(|a| a.to_string()).unwrap_or_default();
    let auth_addr_s = auth_addr.map(|a| a.to_string()).unwrap_or_default();
    State::modify(dir, move |s| {
        s.cluster_name = cluster_name;
        s.proxy_addr = proxy_addr;
        s.ssh_proxy_addr = ssh_proxy_addr;
        s.auth_addr = auth_addr_s;
        s.nodes = inventory;
        s.leaves = leaf_inventory;
        Ok(())
    })?;

    // The SSH port and Auth's port, when there are, go at the end: readers take the address
    // after `ready on https://`, after `ssh proxy on ` the SSH port's, after `auth on ` Auth's.
    let ssh_note = ssh_addr
        .map(|a| format!(", ssh proxy on {a}"))
        .unwrap_or_default();
    let auth_note = auth_addr
        .map(|a| format!(", auth on {a}"))
        .unwrap_or_default();
    println!(
        "idmux dev cluster {:?} ready on https://{} (CA: {}), {} node(s){ssh_note}{auth_note}",
        ctx.live().cas.cluster,
        ctx.proxy_addr,
        dir.join("ca.pem").display(),
        listing.len()
    );
    for l in &listing {
        println!("{l}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();

    // Each connection to the proxy port (and to the SSH port) runs wholly on one thread, with
    // the node connections it opens: a multi-threaded runtime moved every chunk between a gRPC
    // connection's task and its streams' relays on other workers, which cost a third more CPU
    // per GiB (idmux_transport::shards). Teleport's proxy is Go, whose scheduler does as it
    // likes; this is how the dev proxy spends its CPU, not anything a client sees.
    let shards = Arc::new(idmux_transport::shards::Shards::start_detached(
        idmux_transport::shards::default_threads(),
        "idmux-cluster",
        "dev proxy",
        |_| Ok(()),
    )?);
    let follower = tokio::spawn(follow_ca(ctx.clone(), nodes.clone()));
    let ssh_server =
        ssh_listener.map(|l| tokio::spawn(ssh_port::serve(ctx.clone(), l, shards.clone())));
    let auth_server = auth_listener.map(|l| tokio::spawn(serve_auth_port(ctx.clone(), l)));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            acc = listener.accept() => {
                let (tcp, peer) = match acc {
                    Ok(x) => x,
                    Err(e) => { tracing::warn!("accept: {e}"); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
                };
                let c = ctx.clone();
                shards.dispatch(tcp, (), move |tcp, _| async move {
                    let _ = tcp.set_nodelay(true);
                    if let Err(e) = serve_conn(c, tcp, &peer.to_string(), Entry::WebPort).await {
                        tracing::info!("connection from {peer}: {e:#}");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    println!("idmux dev cluster stopping");
    follower.abort();
    if let Some(s) = ssh_server {
        s.abort();
    }
    if let Some(s) = auth_server {
        s.abort();
    }
    nodes.lock().unwrap_or_else(|p| p.into_inner()).clear(); // stops every sshd
    let _ = State::modify(dir, |s| {
        s.proxy_addr.clear();
        s.ssh_proxy_addr.clear();
        s.auth_addr.clear();
        Ok(())
    });
    Ok(())
}

/// Accept connections on Auth's own port until the task is aborted.
async fn serve_auth_port(ctx: Arc<Ctx>, listener: TcpListener) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept on the auth port: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let c = ctx.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            if let Err(e) = serve_auth_direct(c, tcp, &peer.to_string()).await {
                tracing::info!("auth connection from {peer}: {e:#}");
            }
        });
    }
}

/// `DIR/ca/serial` counts the CA changes (rotation steps); the running cluster applies each
/// and writes the count it applied to `DIR/ca/applied`.
fn read_count(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Apply CA changes as they are made: reload the CAs, reissue the proxy's and Auth's
/// certificates, refresh every node (host certificate, trusted user CA keys, sshd reload).
/// A node the cluster runs: its own (`leaf: None`) or a leaf cluster's (index into the leaves).
struct RunningNode {
    leaf: Option<usize>,
    node: node::SshdNode,
}

/// Where a leaf cluster keeps its CAs and nodes.
fn leaf_dir(dir: &Path, leaf: &str) -> PathBuf {
    dir.join("leaves").join(leaf)
}

async fn follow_ca(ctx: Arc<Ctx>, nodes: Arc<std::sync::Mutex<Vec<RunningNode>>>) {
    let serial = ctx.dir.join("ca").join("serial");
    let mut seen = read_count(&serial);
    loop {
        // A file check every 200 ms: a rotation step applies within that.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = read_count(&serial);
        if now == seen {
            continue;
        }
        let (c, n) = (ctx.clone(), nodes.clone());
        let applied = tokio::task::spawn_blocking(move || -> Result<()> {
            let live = c.reload()?;
            for r in n.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
                let host = r.leaf.map(|i| &live.leaves[i]).unwrap_or(&live.cas);
                r.node.refresh(host, &live.cas)?;
            }
            fsutil::write_atomic(
                &c.dir.join("ca").join("applied"),
                format!("{now}\n").as_bytes(),
                PUBLIC,
            )
        })
        .await;
        // A change that failed to apply is tried again at the next check.
        match applied {
            Ok(Ok(())) => {
                tracing::info!(serial = now, "CA change applied");
                seen = now;
            }
            Ok(Err(e)) => tracing::warn!("CA change {now} not applied (will retry): {e:#}"),
            Err(e) => tracing::warn!("CA change {now} not applied (will retry): {e}"),
        }
    }
}

/// `auth rotate`: move the `kind` CA to `phase` (see [`rotate`]), and when the cluster runs,
/// wait up to `wait` until it has applied the change. Returns the CA's phase line.
pub fn rotate_ca(dir: &Path, kind: ca::CaKind, phase: &str, wait: Duration) -> Result<String> {
    let ca_dir = dir.join("ca");
    // New keys are made before the state lock is taken: RSA takes seconds under `legacy`.
    let mut fresh = if phase == "init" {
        let cas = ClusterCas::load(&ca_dir)?;
        Some(rotate::next_keys(&cas.cluster, cas.suite, kind)?)
    } else {
        None
    };
    let (serial, running) = State::modify(dir, |st| {
        let mut cas = ClusterCas::load(&ca_dir)?;
        rotate::step(cas.get_mut(kind), phase, || {
            fresh
                .take()
                .ok_or_else(|| anyhow!("no new keys were made for phase {phase}"))
        })?;
        cas.save_authority(&ca_dir, kind)?;
        let serial = read_count(&ca_dir.join("serial")) + 1;
        fsutil::write_atomic(
            &ca_dir.join("serial"),
            format!("{serial}\n").as_bytes(),
            PUBLIC,
        )?;
        Ok((serial, !st.proxy_addr.is_empty()))
    })?;
    if running {
        let deadline = std::time::Instant::now() + wait;
        while read_count(&ca_dir.join("applied")) < serial {
            if std::time::Instant::now() > deadline {
                bail!(
                    "the {} CA is now in phase {phase}, but the running cluster did not apply it within {}s",
                    kind.name(),
                    wait.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let cas = ClusterCas::load(&ca_dir)?;
    let ca = cas.get(kind);
    Ok(format!(
        "{} CA: phase {}, {} trusted key(s)",
        kind.name(),
        ca.phase,
        ca.trusted().count()
    ))
}

// ---- admin operations (used by `idmux cluster ...`) ----

/// `bots add`: create or update a bot and mint a single-use join token.
pub fn bots_add(
    dir: &Path,
    name: &str,
    roles: &[String],
    logins: &[String],
    ttl: Duration,
) -> Result<(String, State)> {
    if name.is_empty() || name.contains(char::is_whitespace) {
        bail!("bot name {name:?}: must be non-empty without spaces");
    }
    let token = auth::new_token();
    let st = State::modify(dir, |s| {
        for r in roles {
            if !s.roles.contains_key(r) {
                bail!(
                    "--roles: role {r:?} does not exist (roles: {})",
                    s.roles.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        let bot = s.bots.entry(name.to_string()).or_insert(state::Bot {
            roles: vec![],
            logins: vec![],
            generation: 0,
            locked: None,
            instance_id: String::new(),
            heartbeats: vec![],
        });
        bot.roles = roles.to_vec();
        bot.logins = logins.to_vec();
        s.tokens.insert(
            token.clone(),
            state::Token {
                bot: name.to_string(),
                expires: idmux_identity::unix_now() + ttl.as_secs(),
            },
        );
        Ok(s.clone())
    })?;
    Ok((token, st))
}

/// The CA pins of the cluster in `dir`: `sha256:` of each trusted host CA TLS certificate's
/// SPKI (two during a rotation), as `tctl bots add` and `tctl status` show them
/// (`lib/utils` `CalculateSPKI` over `GetClusterCACert`'s certificates).
pub fn ca_pins(dir: &Path) -> Result<Vec<String>> {
    let cas = ClusterCas::load(&dir.join("ca"))?;
    let mut pins = Vec::new();
    for pem in cas.host.trusted_tls_pems() {
        for der in cert_chain(&pem)? {
            pins.push(idmux_transport::auth_direct::spki_pin(&der)?);
        }
    }
    Ok(pins)
}

/// `bots rm`: remove a bot and its tokens.
pub fn bots_rm(dir: &Path, name: &str) -> Result<()> {
    State::modify(dir, |s| {
        if s.bots.remove(name).is_none() {
            bail!("no bot named {name:?}");
        }
        s.tokens.retain(|_, t| t.bot != name);
        Ok(())
    })
}

/// `roles add`: create or replace a role.
pub fn roles_add(
    dir: &Path,
    name: &str,
    logins: &[String],
    labels: &[(String, String)],
) -> Result<()> {
    let mut node_labels = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (k, v) in labels {
        node_labels.entry(k.clone()).or_default().push(v.clone());
    }
    State::modify(dir, |s| {
        s.roles.insert(
            name.to_string(),
            state::Role {
                logins: logins.to_vec(),
                node_labels,
            },
        );
        Ok(())
    })
}

/// The ciphers the proxy's SSH server offers: Teleport's default. Teleport's SSH servers take
/// `ciphers` from `teleport.yaml` and set them only when given (lib/sshutils/server.go
/// `SetCiphers`: `if ciphers != nil`), so by default golang.org/x/crypto/ssh's own list
/// applies (`preferredCiphers` in ssh/common.go: AES-128-GCM, AES-256-GCM,
/// ChaCha20-Poly1305, then AES-CTR); in FIPS mode it is lib/defaults/defaults.go's
/// `FIPSCiphers` (the same without ChaCha20). The client's order picks among them (RFC 4253
/// section 7.1).
pub const TELEPORT_SSH_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_128_GCM,
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_128_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_256_CTR,
];
