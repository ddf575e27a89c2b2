//! How idmux reaches one proxy, and the TLS connection to it by that way.
//!
//! Three ways, chosen as tbot and tsh choose them (facts sections 5 and 6):
//! - **TLS routing** (`proxy.tls_routing_enabled` in ping): every protocol on the web port,
//!   told apart by ALPN.
//! - **ALPN connection upgrade**: TLS routing behind an L7 load balancer, which ends TLS and
//!   lets only HTTP through. Detected as tbot does ([`upgrade_required`]: a test dial with
//!   ALPN `teleport-reversetunnel` that negotiates nothing; `TELEPORT_TLS_ROUTING_CONN_UPGRADE`
//!   overrides; a flag overrides both), then each connection is TLS to the load balancer
//!   (checked with `--ca-path` or the system roots), a WebSocket upgrade ([`crate::upgrade`]),
//!   and the real TLS inside, checked against the cluster's CAs.
//! - **No TLS routing**: node connections (and Auth, through `ProxyCluster`) go to the SSH proxy
//!   port, whose address ping gives by `SSHProxyHostPort()`'s rules ([`ssh_proxy_host_port`]),
//!   as tsh does. The web port serves the web API and the join service only.
//!
//! Every way starts with [`crate::dial::connect`], so an HTTP proxy from the environment is
//! used for all of them. Must not know: what runs over the connections.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use rustls::pki_types::ServerName;
use rustls::AlertDescription;
use tokio_rustls::client::TlsStream;

use crate::dial::{self, BoxIo};
use crate::tls;
use crate::upgrade;
use crate::web::{Trust, WebClient};
use idmux_identity::Identity;
use idmux_wire::hostport::split_host_port;

/// A TLS connection to the proxy (or to Auth through it), whatever carries it.
pub type ProxyTls = TlsStream<BoxIo>;

/// The ALPN of the upgrade test dial (`teleport-reversetunnel`).
const TEST_ALPN: &[u8] = b"teleport-reversetunnel";
/// How long the upgrade test dial may take (tbot: 5 s).
const TEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The environment variable that overrides the upgrade test (api/defaults).
pub const UPGRADE_ENV: &str = "TELEPORT_TLS_ROUTING_CONN_UPGRADE";

/// What the user said about the way to the proxy; `None` = find out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteFlags {
    /// `--tls-routing` / `--no-tls-routing`.
    pub tls_routing: Option<bool>,
    /// `--connection-upgrade` / `--no-connection-upgrade`.
    pub upgrade: Option<bool>,
}

/// Which way connections go (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Way {
    /// TLS routing on the web port.
    TlsRouting,
    /// TLS routing inside WebSocket upgrades through a load balancer at the web address.
    Upgrade,
    /// Node and Auth connections to the SSH proxy port at this address.
    SshPort(String),
}

/// How to reach one proxy.
#[derive(Clone)]
pub struct Route {
    web: WebClient,
    way: Way,
    /// Why this way (for `doctor`): "ping says tls_routing_enabled: true; ...".
    why: String,
}

impl Route {
    /// TLS routing straight to `web`'s address: what a caller that knows no better uses.
    pub fn tls_routing(web: WebClient) -> Route {
        Route {
            web,
            way: Way::TlsRouting,
            why: "TLS routing assumed".into(),
        }
    }

    /// TLS routing straight to `proxy` (`host:port`), no ping: for callers that know the proxy
    /// routes by ALPN (tests, tools given the address of a proxy's TLS port).
    pub fn direct(proxy: &str) -> Result<Route> {
        Ok(Route::tls_routing(WebClient::new(proxy, &Trust::System)?))
    }

    /// The way from a `/webapi/ping` (or `/webapi/find`) answer and the flags: without TLS
    /// routing the SSH proxy address; with it, the upgrade decision ([`upgrade_required`]).
    pub async fn discover(
        web: WebClient,
        ping: &serde_json::Value,
        flags: RouteFlags,
    ) -> Result<Route> {
        match way_from_ping(ping, web.proxy(), flags)? {
            (Some(ssh), why) => Ok(Route {
                web,
                way: Way::SshPort(ssh),
                why,
            }),
            (None, why) => Self::with_routing(web, flags.upgrade, why).await,
        }
    }

    /// TLS routing, with the upgrade decided by `flag`, else the environment, else the test.
    pub async fn with_routing(
        web: WebClient,
        flag: Option<bool>,
        mut why: String,
    ) -> Result<Route> {
        let (up, reason) = match flag {
            Some(u) => (
                u,
                format!("--{}connection-upgrade given", if u { "" } else { "no-" }),
            ),
            None => upgrade_required(&web).await,
        };
        why.push_str("; ");
        why.push_str(&reason);
        Ok(Route {
            web,
            way: if up { Way::Upgrade } else { Way::TlsRouting },
            why,
        })
    }

    /// No TLS routing: nodes at `ssh_proxy`.
    pub fn ssh_port(web: WebClient, ssh_proxy: String, why: String) -> Route {
        Route {
            web,
            way: Way::SshPort(ssh_proxy),
            why,
        }
    }

    pub fn way(&self) -> &Way {
        &self.way
    }

    pub fn web(&self) -> &WebClient {
        &self.web
    }

    /// The web address.
    pub fn proxy(&self) -> &str {
        self.web.proxy()
    }

    /// The address node connections go to.
    pub fn node_addr(&self) -> &str {
        match &self.way {
            Way::SshPort(a) => a,
            _ => self.web.proxy(),
        }
    }

    /// One line for `doctor` and the logs: the way, where, why, and any HTTP proxy.
    pub fn describe(&self) -> String {
        let way = match &self.way {
            Way::TlsRouting => format!("direct TLS routing to {}", self.proxy()),
            Way::Upgrade => format!(
                "ALPN connection upgrade (WebSocket) through the load balancer at {}",
                self.proxy()
            ),
            Way::SshPort(a) if a == self.proxy() => {
                format!("no TLS routing: nodes and Auth through the SSH proxy port {a}")
            }
            Way::SshPort(a) => format!(
                "no TLS routing: nodes and Auth through the SSH proxy port {a}, the web API at {}",
                self.proxy()
            ),
        };
        let via = match crate::proxy_env::from_env(self.node_addr()) {
            Ok(Some(p)) => format!(", via {}", p.describe()),
            Ok(None) => String::new(),
            Err(e) => format!(", proxy setting unusable: {e}"),
        };
        format!("{way}{via} ({})", self.why)
    }

    /// TLS to the proxy for `alpn` as `id`, checked against the identity's CAs with `name`
    /// (default: the proxy's host). Node dials (`node`) upgrade with `alpn-ping`. Without TLS
    /// routing this dials the SSH proxy port.
    pub async fn dial_tls(
        &self,
        id: &Identity,
        alpn: &[&[u8]],
        name: Option<&str>,
        node: bool,
    ) -> Result<ProxyTls> {
        let cfg = tls::client_config(id, alpn)?;
        let addr = self.node_addr().to_string();
        let (host, _) = split_host_port(&addr, "proxy address")?;
        let server = match name {
            Some(n) => {
                ServerName::try_from(n.to_string()).map_err(|_| anyhow!("bad TLS name {n}"))?
            }
            None => tls::server_name(&host)?,
        };
        let (io, what) = match &self.way {
            Way::Upgrade => {
                let proto = if node {
                    upgrade::ALPN_PING
                } else {
                    upgrade::ALPN
                };
                (
                    self.upgraded(proto).await?,
                    format!("{addr} (inside the connection upgrade)"),
                )
            }
            _ => (dial::connect(&addr).await?.0, addr.clone()),
        };
        let tls = match tls::handshake(&format!("proxy {what}"), cfg, server, io).await? {
            Err(e) => {
                if matches!(
                    tls::rustls_error(&e),
                    Some(rustls::Error::NoApplicationProtocol)
                        | Some(rustls::Error::AlertReceived(
                            AlertDescription::NoApplicationProtocol
                        ))
                ) {
                    return Err(tls::not_offered(&addr, alpn));
                }
                bail!("{}", tls::describe_tls_error(&what, alpn, &e))
            }
            Ok(s) => s,
        };
        let got = tls.get_ref().1.alpn_protocol();
        if !alpn.is_empty() && !got.is_some_and(|g| alpn.contains(&g)) {
            return Err(tls::not_offered(&addr, alpn));
        }
        Ok(tls)
    }

    /// A byte stream inside a WebSocket upgrade through the load balancer at the web address.
    pub(crate) async fn upgraded(&self, proto: &str) -> Result<BoxIo> {
        let outer = self.web.dial_alpn(&[b"http/1.1"]).await?;
        // Host: the address as given (Go's client sends the URL's host:port).
        upgrade::websocket(outer, self.proxy(), self.proxy(), proto).await
    }

    /// The join service's connection (ALPN `teleport-proxy-grpc`, `h2`, no client
    /// certificate): straight to the web port checked with `--ca-path` or the system roots;
    /// inside an upgrade, where the proxy presents its Teleport host certificate, checked as
    /// tbot checks it (a certificate naming `teleport.cluster.local`, unexpired).
    pub async fn dial_join(&self, alpn: &[&[u8]]) -> Result<ProxyTls> {
        if self.way != Way::Upgrade {
            return self.web.dial_alpn(alpn).await;
        }
        let io = self.upgraded(upgrade::ALPN).await?;
        let cfg = crate::join_verify::upgraded_join_config(alpn)?;
        let (host, _) = split_host_port(self.proxy(), "proxy address")?;
        let what = format!("{} (inside the connection upgrade)", self.proxy());
        tls::handshake(&format!("proxy {what}"), cfg, tls::server_name(&host)?, io)
            .await?
            .map_err(|e| anyhow!("{}", tls::describe_tls_error(&what, alpn, &e)))
    }
}

/// A [`Route`] found once, on first use: `/webapi/ping` and the upgrade test, retried on the
/// next use while they fail (a daemon started while the proxy is down still starts).
pub struct Finder {
    web: WebClient,
    flags: RouteFlags,
    /// The route once found; the last failure and when.
    found: tokio::sync::Mutex<(Option<Route>, Option<Failure>)>,
}

/// When finding the route last failed, and why.
type Failure = (std::time::Instant, String);

/// How long a failure to find the route answers other callers (see [`Finder::get`]).
const FAILURE_HOLD: Duration = Duration::from_secs(2);

impl Finder {
    /// A route already found (the bot's, for the multiplexer in its process).
    pub fn known(route: Route) -> Finder {
        Finder {
            web: route.web.clone(),
            flags: RouteFlags::default(),
            found: tokio::sync::Mutex::new((Some(route), None)),
        }
    }

    pub fn new(web: WebClient, flags: RouteFlags) -> Finder {
        Finder {
            web,
            flags,
            found: tokio::sync::Mutex::new((None, None)),
        }
    }

    /// The web address.
    pub fn proxy(&self) -> &str {
        self.web.proxy()
    }

    /// The route, found now if not yet. A caller that waited while another's attempt failed
    /// gets that failure (for [`FAILURE_HOLD`]) instead of waiting out a second one: against a
    /// silent proxy every caller fails within one stage's deadline.
    pub async fn get(&self) -> Result<Route> {
        let mut found = self.found.lock().await;
        match &found.0 {
            Some(r) => return Ok(r.clone()),
            None => {
                if let Some((at, e)) = &found.1 {
                    if at.elapsed() < FAILURE_HOLD {
                        bail!("{e}");
                    }
                }
            }
        }
        let attempt = async {
            let ping = self.web.ping().await?;
            Route::discover(self.web.clone(), &ping.json, self.flags).await
        };
        match attempt.await {
            Ok(r) => {
                tracing::info!("proxy path: {}", r.describe());
                *found = (Some(r.clone()), None);
                Ok(r)
            }
            Err(e) => {
                found.1 = Some((std::time::Instant::now(), format!("{e:#}")));
                Err(e)
            }
        }
    }
}

/// What a `/webapi/ping` (or `/webapi/find`) answer and the flags say before any dial (pure):
/// the SSH proxy address when there is no TLS routing, `None` for TLS routing (whether through
/// an upgrade is decided by a dial), and why.
pub fn way_from_ping(
    ping: &serde_json::Value,
    web: &str,
    flags: RouteFlags,
) -> Result<(Option<String>, String)> {
    let said = ping
        .pointer("/proxy/tls_routing_enabled")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let (routing, mut why) = match flags.tls_routing {
        Some(r) => (
            r,
            format!("--{}tls-routing given", if r { "" } else { "no-" }),
        ),
        None => (said, format!("ping says tls_routing_enabled: {said}")),
    };
    if routing {
        return Ok((None, why));
    }
    let ssh = ssh_proxy_host_port(ping, web)?;
    why.push_str(&format!("; SSH proxy address {ssh} from ping"));
    Ok((Some(ssh), why))
}

/// `SSHProxyHostPort()` without TLS routing (api/client/webclient/webclient.go): the
/// `ssh_public_addr` (port from `listen_addr`, else 3023), else the `public_addr` host with the
/// SSH port, else `listen_addr`, else the web address's host with the SSH port. An address
/// that does not come out as `host:port` (a ping field that is no address) is an error naming
/// the field, as Go's address parsing refuses it, rather than a route that fails at each dial.
pub fn ssh_proxy_host_port(ping: &serde_json::Value, web: &str) -> Result<String> {
    let (addr, from) = ssh_proxy_candidate(ping, web);
    match split_host_port(&addr, "") {
        Ok(_) => Ok(addr),
        Err(e) => bail!(
            "the SSH proxy address from {from} is not host:port ({})",
            format!("{e:#}").trim_start()
        ),
    }
}

/// The address [`ssh_proxy_host_port`] picks, and which field it came from.
fn ssh_proxy_candidate(ping: &serde_json::Value, web: &str) -> (String, String) {
    let field = |k: &str| {
        ping.pointer(&format!("/proxy/ssh/{k}"))
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let from = |k: &str| format!("ping's proxy.ssh.{k}");
    let port_of = |a: &str| split_host_port(a, "ping address").ok().map(|(_, p)| p);
    let ssh_port = field("listen_addr")
        .and_then(|a| port_of(&a))
        .unwrap_or(3023);
    let with_port = |a: &str, port: u16| -> String {
        let host = match split_host_port(a, "ping address") {
            Ok((h, _)) => h,
            Err(_) => a.to_string(),
        };
        idmux_wire::hostport::join(&host, port)
    };
    if let Some(a) = field("ssh_public_addr") {
        return match split_host_port(&a, "ping ssh_public_addr") {
            Ok(_) => (a, from("ssh_public_addr")),
            Err(_) => (with_port(&a, ssh_port), from("ssh_public_addr")),
        };
    }
    if let Some(a) = field("public_addr") {
        return (with_port(&a, ssh_port), from("public_addr"));
    }
    if let Some(a) = field("listen_addr") {
        // An unspecified host (0.0.0.0, ::) means the web address's host with that port.
        return match split_host_port(&a, "ping listen_addr") {
            Ok((h, p))
                if h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_unspecified()) =>
            {
                (with_port(web, p), from("listen_addr"))
            }
            _ => (a, from("listen_addr")),
        };
    }
    (with_port(web, ssh_port), format!("the web address {web}"))
}

/// Is the proxy at `web` behind an L7 load balancer? `TELEPORT_TLS_ROUTING_CONN_UPGRADE`
/// decides when set, else a test dial ([`test_dial`]), cached per address and trust for the
/// life of the process as tbot caches it. Returns the answer and why.
pub async fn upgrade_required(web: &WebClient) -> (bool, String) {
    let addr = web.proxy().to_string();
    if let Ok(v) = std::env::var(UPGRADE_ENV) {
        if let Some(b) = parse_upgrade_env(&v, &addr) {
            return (b, format!("{UPGRADE_ENV}={v}"));
        }
    }
    static CACHE: OnceLock<Mutex<HashMap<String, (bool, String)>>> = OnceLock::new();
    let key = format!("{addr}-{}", matches!(web.trust(), Trust::Insecure));
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return hit.clone();
    }
    let (answer, definite) = test_dial(web).await;
    // Only a definite answer is kept (tbot keeps any): a slow or failed test dial at start
    // must not fix the way for the life of a daemon.
    if definite {
        cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, answer.clone());
    }
    answer
}

/// tbot's test (`IsALPNConnUpgradeRequired`): TLS with ALPN `teleport-reversetunnel`;
/// required when the peer refuses the ALPN, picks one we did not offer, or picks none. Any
/// other failure means not required (the real dial will say what is wrong).
/// Also says whether the answer is definite (the peer answered the ALPN question).
async fn test_dial(web: &WebClient) -> ((bool, String), bool) {
    let r = tokio::time::timeout(TEST_TIMEOUT, web.dial_alpn(&[TEST_ALPN])).await;
    match r {
        Err(_) => (
            (
                false,
                format!(
                    "the upgrade test dial got no answer within {}s",
                    TEST_TIMEOUT.as_secs()
                ),
            ),
            false,
        ),
        Ok(Ok(tls)) => match tls.get_ref().1.alpn_protocol() {
            None => (
                (
                    true,
                    "detected: the test dial's ALPN teleport-reversetunnel was not negotiated \
                     (an L7 load balancer)"
                        .into(),
                ),
                true,
            ),
            Some(_) => (
                (
                    false,
                    "the test dial negotiated ALPN teleport-reversetunnel".into(),
                ),
                true,
            ),
        },
        Ok(Err(e)) => {
            let s = format!("{e:#}");
            if s.contains("does not offer ALPN")
                || s.contains("unadvertised")
                || s.contains("SelectedUnofferedApplicationProtocol")
            {
                (
                    (
                        true,
                        "detected: the test dial's ALPN teleport-reversetunnel was refused \
                         (an L7 load balancer)"
                            .into(),
                    ),
                    true,
                )
            } else {
                (
                    (false, format!("the upgrade test dial failed ({s})")),
                    false,
                )
            }
        }
    }
}

/// `TELEPORT_TLS_ROUTING_CONN_UPGRADE`: conditions separated by `;` or `,`, each
/// `<addr>=<bool>` or `<bool>` (the default); the first `<addr>=` matching wins.
pub fn parse_upgrade_env(v: &str, addr: &str) -> Option<bool> {
    let mut default = None;
    for cond in v.split([';', ',']).map(str::trim).filter(|c| !c.is_empty()) {
        match cond.split_once('=') {
            Some((a, b)) => {
                if a.trim() == addr {
                    if let Some(b) = parse_bool(b.trim()) {
                        return Some(b);
                    }
                }
            }
            None => {
                if default.is_none() {
                    default = parse_bool(cond);
                }
            }
        }
    }
    default
}

/// Teleport's `utils.ParseBool` words.
fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "yes" | "yeah" | "y" | "true" | "1" | "on" => Some(true),
        "no" | "nope" | "n" | "false" | "0" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn upgrade_env_conditions() {
        assert_eq!(parse_upgrade_env("true", "p:443"), Some(true));
        assert_eq!(parse_upgrade_env("p:443=yes;false", "p:443"), Some(true));
        assert_eq!(parse_upgrade_env("q:443=yes;false", "p:443"), Some(false));
        assert_eq!(parse_upgrade_env("q:443=yes", "p:443"), None);
        assert_eq!(parse_upgrade_env("p:443=0,p:443=1", "p:443"), Some(false));
        assert_eq!(parse_upgrade_env("maybe", "p:443"), None);
    }

    #[test]
    fn ssh_proxy_host_port_rules() {
        let p =
            |ssh: serde_json::Value| json!({"proxy": {"tls_routing_enabled": false, "ssh": ssh}});
        assert_eq!(
            ssh_proxy_host_port(
                &p(json!({"ssh_public_addr": "ssh.example.com:3023"})),
                "w:443"
            )
            .unwrap(),
            "ssh.example.com:3023"
        );
        assert_eq!(
            ssh_proxy_host_port(
                &p(json!({"ssh_public_addr": "ssh.example.com", "listen_addr": "0.0.0.0:4023"})),
                "w:443"
            )
            .unwrap(),
            "ssh.example.com:4023"
        );
        assert_eq!(
            ssh_proxy_host_port(&p(json!({"public_addr": "proxy.example.com:443"})), "w:443")
                .unwrap(),
            "proxy.example.com:3023",
            "public_addr's host with the SSH port"
        );
        assert_eq!(
            ssh_proxy_host_port(&p(json!({"listen_addr": "10.0.0.1:3023"})), "w:443").unwrap(),
            "10.0.0.1:3023"
        );
        assert_eq!(
            ssh_proxy_host_port(&p(json!({})), "w.example.com:443").unwrap(),
            "w.example.com:3023"
        );
        assert_eq!(
            ssh_proxy_host_port(
                &p(json!({"listen_addr": "0.0.0.0:3023"})),
                "w.example.com:443"
            )
            .unwrap(),
            "w.example.com:3023",
            "an unspecified listen host means the web host"
        );
    }

    /// A ping field that is no address is refused naming the field (found by the fuzz
    /// target `web_json`: such an answer made a route whose every dial failed).
    #[test]
    fn a_ping_address_that_is_no_address_is_refused() {
        let p =
            |ssh: serde_json::Value| json!({"proxy": {"tls_routing_enabled": false, "ssh": ssh}});
        for (ssh, field) in [
            (json!({"listen_addr": "garbage"}), "listen_addr"),
            (json!({"listen_addr": "10.0.0.1:0"}), "listen_addr"),
            (json!({"public_addr": "["}), "public_addr"),
            (json!({"ssh_public_addr": "a]b"}), "ssh_public_addr"),
        ] {
            let e = ssh_proxy_host_port(&p(ssh.clone()), "w:443")
                .expect_err(&ssh.to_string())
                .to_string();
            assert!(
                e.starts_with(&format!(
                    "the SSH proxy address from ping's proxy.ssh.{field} is not host:port"
                )),
                "{e}"
            );
        }
    }
}
