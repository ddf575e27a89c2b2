//! Checks that talk to something: the proxy's clock and TLS verdict, a connection as the
//! daemon makes it, the daemon's sockets, and a node through the daemon or the proxy.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use russh::keys::ssh_key::Certificate;

use idmux_client::mux::local;
use idmux_identity::{rfc3339, unix_now, Identity};
use idmux_transport::link::{self, TransportKind};
use idmux_transport::relay;
use idmux_transport::route::{Route, RouteFlags};
use idmux_transport::web::{Trust, WebClient};

use super::parse::*;
use super::{check, Check, Status};

/// `/webapi/ping` of `proxy`, its web certificate checked with `ca_path`, else the cluster's
/// host CA file in `dir` and then the system roots (a load balancer's own certificate).
pub(super) async fn ping(
    proxy: &str,
    dir: &Path,
    ca_path: Option<&Path>,
) -> Result<(WebClient, idmux_transport::web::Ping)> {
    let host_ca = dir.join("teleport-host-ca.crt");
    let mut trusts = Vec::new();
    match ca_path {
        Some(p) => trusts.push(Trust::CaFile(p.to_path_buf())),
        None => {
            if host_ca.exists() {
                trusts.push(Trust::CaFile(host_ca));
            }
            trusts.push(Trust::System);
        }
    }
    let mut last = anyhow!("no trust to check the proxy's web certificate with");
    for t in trusts {
        let web = match WebClient::new(proxy, &t) {
            Ok(w) => w,
            Err(e) => {
                last = e;
                continue;
            }
        };
        match web.ping().await {
            Ok(p) => return Ok((web, p)),
            // Only a certificate the trust does not cover is worth another try; a proxy
            // that does not answer will not answer the next one either.
            Err(e) if format!("{e:#}").contains("certificate") => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// How this machine reaches the proxy (`path`): the way ping and the flags give (TLS routing,
/// the connection upgrade through a load balancer, the SSH proxy port), any HTTP proxy, and
/// why. Without a ping (a stdio ssh_config written for the SSH proxy port names no web
/// address) the flags alone decide.
pub(super) async fn find_route(
    proxy: &str,
    dir: &Path,
    ca_path: Option<&Path>,
    flags: RouteFlags,
) -> (Option<Route>, Check, Option<idmux_transport::web::Ping>) {
    const N: &str = "path";
    if flags.tls_routing == Some(false) {
        return match idmux_client::proxy_command::route(proxy, flags).await {
            Ok(r) => {
                let d = r.describe();
                (Some(r), check(Status::Ok, N, d), None)
            }
            Err(e) => (None, check(Status::Fail, N, format!("{e:#}")), None),
        };
    }
    match ping(proxy, dir, ca_path).await {
        Ok((web, p)) => match Route::discover(web, &p.json, flags).await {
            Ok(r) => {
                let d = r.describe();
                (Some(r), check(Status::Ok, N, d), Some(p))
            }
            Err(e) => (None, check(Status::Fail, N, format!("{e:#}")), Some(p)),
        },
        // The web certificate did not verify (the checks below still show what the identity's
        // own CAs make of the proxy); the flags alone give the way.
        Err(e) if format!("{e:#}").contains("certificate") => {
            match idmux_client::proxy_command::route(proxy, flags).await {
                Ok(r) => {
                    let d = format!("{} (no ping: {e:#})", r.describe());
                    (Some(r), check(Status::Warn, N, d), None)
                }
                Err(e2) => (None, check(Status::Fail, N, format!("{e:#}; {e2:#}")), None),
            }
        }
        // No answer from the web port: the other checks would only wait for it again.
        Err(e) => (None, check(Status::Fail, N, format!("{e:#}")), None),
    }
}

/// The proxy's clock against ours, from `/webapi/ping`'s `Date` header.
pub(super) fn check_clock(proxy: &str, ping: Option<&idmux_transport::web::Ping>) -> Check {
    const N: &str = "clock";
    let Some(p) = ping else {
        return check(Status::Warn, N, "not checked: no answer to /webapi/ping");
    };
    let Some(date) = p.date else {
        return check(
            Status::Warn,
            N,
            "not checked: the proxy's answer has no Date header",
        );
    };
    let ms = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    };
    // Date is truncated to the second: the proxy's time lies in [date, date + 1 s).
    let mid = (ms(p.sent) + ms(p.received)) / 2;
    let skew = ms(date) + 500 - mid;
    let slack = 500 + (ms(p.received) - ms(p.sent)) / 2;
    let words = if skew.abs() <= slack {
        format!("within {:.1}s of proxy {proxy}", slack as f64 / 1000.0)
    } else {
        format!(
            "{:.1}s {} proxy {proxy} (±{:.1}s)",
            skew.abs() as f64 / 1000.0,
            if skew > 0 { "behind" } else { "ahead of" },
            slack as f64 / 1000.0
        )
    };
    match skew.abs() - slack {
        d if d <= 30_000 => check(Status::Ok, N, words),
        d if d <= 120_000 => check(
            Status::Warn,
            N,
            format!("{words}: certificates are backdated by a minute only; run NTP (timedatectl)"),
        ),
        _ => check(
            Status::Fail,
            N,
            format!(
                "{words}: certificates will look expired or not yet valid; run NTP (timedatectl)"
            ),
        ),
    }
}

/// The proxy's verdict on the identity's certificate, read on a bare TLS connection (ALPN of
/// the gRPC transport): under TLS 1.3 a refusal arrives as an alert on the first read. `None`
/// when the proxy just waits for the client to speak (accepted).
async fn tls_verdict(route: &Route, id: &Identity) -> Option<String> {
    use idmux_transport::{grpc::ALPN_PROXY_GRPC, tls};
    use tokio::io::AsyncReadExt;
    let proxy = route.node_addr();
    let mut s = match route.dial_tls(id, &[ALPN_PROXY_GRPC], None, true).await {
        Ok(s) => s,
        Err(e) => return Some(format!("{e:#}")),
    };
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await {
        Ok(Err(e)) => Some(tls::describe_tls_error(proxy, &[ALPN_PROXY_GRPC], &e)),
        Ok(Ok(0)) => Some(format!(
            "proxy {proxy} closed the connection right after the TLS handshake"
        )),
        _ => None,
    }
}

/// A connection to the proxy as the daemon makes it: TLS verified against the identity's
/// cluster CA, then the transport (`--transport`: gRPC, or the SSH server whose host
/// certificate is checked and which the identity logs in to).
pub(super) async fn check_proxy(route: &Route, id: &Identity, kind: TransportKind) -> Check {
    const N: &str = "proxy";
    let proxy = route.node_addr();
    let t0 = Instant::now();
    let connected = match link::connect(route, id, kind).await {
        // gRPC: the handshake alone does not show the proxy's verdict on the certificate.
        Ok(link::Link::Grpc(g)) => match g.cluster_details().await {
            Ok(_) => Ok(link::Link::Grpc(g)),
            // HTTP/2 may only see a broken pipe where the proxy sent a TLS alert: ask again
            // on a bare TLS connection, whose first read carries the alert.
            Err(e) => Err(tls_verdict(route, id)
                .await
                .map(|w| anyhow!("{w}"))
                .unwrap_or(e)),
        },
        other => other,
    };
    match connected {
        Ok(l) => {
            let ms = t0.elapsed().as_millis();
            let how = match l.kind() {
                TransportKind::Ssh => "SSH transport: host certificate checked, login accepted",
                _ => "gRPC transport: identity accepted (GetClusterDetails answered)",
            };
            l.close().await;
            check(
                Status::Ok,
                N,
                format!(
                    "{proxy}: TLS certificate verified against the cluster CA; {how} ({ms} ms)"
                ),
            )
        }
        Err(e) => check(Status::Fail, N, format!("{e:#}")),
    }
}

/// Ask the agent socket for its identities.
fn agent_certs(sock: &Path) -> Result<Vec<Certificate>> {
    let body = local::agent_call(
        sock,
        &[idmux_wire::agent::REQUEST_IDENTITIES],
        Duration::from_secs(5),
    )?;
    parse_agent_identities(&body).map_err(|e| anyhow!("{}: {e}", sock.display()))
}

pub(super) fn check_daemon(dir: &Path, fdpass: bool) -> Check {
    const N: &str = "daemon";
    let v1 = dir.join("v1.sock");
    if !fdpass && !v1.exists() {
        return check(
            Status::Ok,
            N,
            "not used: the ssh_config runs a stdio ProxyCommand per connection",
        );
    }
    if let Err(e) = UnixStream::connect(&v1) {
        return check(
            Status::Fail,
            N,
            format!(
                "nothing answers on {}: {e} (is `idmux start` running? `systemctl status idmux`)",
                v1.display()
            ),
        );
    }
    let agent = dir.join("agent.sock");
    match agent_certs(&agent) {
        Err(e) => check(Status::Fail, N, format!("v1.sock answers, but {e:#}")),
        Ok(certs) if certs.is_empty() => check(
            Status::Fail,
            N,
            format!(
                "v1.sock answers, but {} serves no certificate yet",
                agent.display()
            ),
        ),
        Ok(certs) => {
            let now = unix_now();
            let best = certs.iter().map(|c| c.valid_before()).max().unwrap_or(0);
            if best <= now {
                check(
                    Status::Fail,
                    N,
                    format!("v1.sock answers, but the agent's certificate expired at {} (renewals failing?)", rfc3339(best)),
                )
            } else {
                check(
                    Status::Ok,
                    N,
                    format!(
                        "v1.sock answers; agent.sock serves {} certificate(s), valid for another {}",
                        certs.len(),
                        short_duration(best - now)
                    ),
                )
            }
        }
    }
}

/// Dial through the proxy directly (stdio ssh_config), over `kind`; the banner and the
/// transport used.
async fn dial_proxy(
    route: &Route,
    id: &Identity,
    host: &str,
    port: u16,
    kind: TransportKind,
) -> Result<(String, TransportKind)> {
    use tokio::io::AsyncReadExt;
    let cluster = id.cluster_name()?;
    let l = link::connect(route, id, kind).await?;
    let used = l.kind();
    let result = async {
        let node = l.open_node(host, port, &cluster, None).await?;
        // The relay writes the node's bytes into one end of a pipe; read the banner from the
        // other, then drop both (the relay ends with them).
        let (mut mine, theirs) = tokio::io::duplex(64 * 1024);
        let (tr, tw) = tokio::io::split(theirs);
        let relay = relay::relay(node, tr, tw, tokio::io::sink(), ("doctor", "doctor"));
        tokio::pin!(relay);
        let read = async {
            let mut got = Vec::new();
            let mut b = [0u8; 256];
            while !got.contains(&b'\n') && got.len() < 1024 {
                let n = mine.read(&mut b).await?;
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&b[..n]);
            }
            anyhow::Ok(got)
        };
        let got = tokio::time::timeout(Duration::from_secs(15), async {
            tokio::select! {
                r = read => r,
                r = &mut relay => match r {
                    Ok(()) => bail!("the node closed the connection before its banner"),
                    Err(e) => Err(e),
                },
            }
        })
        .await
        .map_err(|_| anyhow!("no SSH banner within 15s"))??;
        Ok(local::first_line(&got))
    }
    .await;
    l.close().await;
    result.map(|b| (b, used))
}

pub(super) async fn check_node(
    node: &str,
    dir: &Path,
    fdpass: bool,
    proxy: Option<&Route>,
    id: Option<&Identity>,
    kind: TransportKind,
) -> Check {
    const N: &str = "node";
    let (host, port) = match node_target(node) {
        Ok(t) => t,
        Err(e) => return check(Status::Fail, N, format!("{e:#}")),
    };
    let t0 = Instant::now();
    let (via, r) = if fdpass || dir.join("v1.sock").exists() {
        let v1 = dir.join("v1.sock");
        let target = idmux_wire::v1::Target {
            host: host.clone(),
            port,
            cluster: String::new(),
        };
        let r = tokio::task::spawn_blocking(move || {
            local::dial_v1(&v1, &target, Duration::from_secs(15))
        })
        .await
        .unwrap_or_else(|e| Err(anyhow!("{e}")));
        ("v1.sock".to_string(), r)
    } else {
        match (proxy, id) {
            (Some(p), Some(id)) => match dial_proxy(p, id, &host, port, kind).await {
                Ok((b, used)) => (format!("the proxy ({used} transport)"), Ok(b)),
                Err(e) => ("the proxy".to_string(), Err(e)),
            },
            _ => {
                return check(
                    Status::Fail,
                    N,
                    "cannot dial: no daemon, and no proxy address or identity",
                )
            }
        }
    };
    match r {
        Ok(b) if b.starts_with("SSH-") => check(
            Status::Ok,
            N,
            format!(
                "{host}:{port} through {via}: {b} ({} ms)",
                t0.elapsed().as_millis()
            ),
        ),
        Ok(b) => check(
            Status::Fail,
            N,
            format!("{host}:{port} through {via}: not an SSH banner: {b:?}"),
        ),
        Err(e) => check(
            Status::Fail,
            N,
            format!("{host}:{port} through {via}: {e:#}"),
        ),
    }
}
