//! `idmux doctor --destination-dir D`: checks what a person would check when `ssh -F
//! D/ssh_config` fails, and says what it found, one `ok`/`warn`/`fail` line per check:
//!
//! - `openssh`: the `ssh` client's version (`ssh -V`) has `ProxyUseFdpass` (6.5+) when the
//!   ssh_config uses it, and its `ssh -Q key-cert` / `ssh -Q key` lists hold the identity's
//!   certificate type and the host CA key types; an `ssh-rsa` (SHA-1) signed certificate is a
//!   warning (OpenSSH 8.2+ servers refuse it by default).
//! - `files`: the key and identity files are owner-only, the folder and sockets are not open
//!   to other users, and the files ssh reads are there.
//! - `identity`: the identity file parses, its key matches its certificates, and `key` matches
//!   `key-cert.pub` (the pair OpenSSH reads).
//! - `certificate`: the time left (fail when expired or not yet valid, warn under a third of
//!   its lifetime: the bot renews well before that).
//! - `clock`: local time against the proxy's HTTP `Date` on `/webapi/ping`.
//! - `proxy`: a connection as the daemon makes it (`--transport auto|grpc|ssh`): TLS with the
//!   proxy's certificate verified against the cluster's CA in the identity, then gRPC's
//!   TransportService or the SSH server (host certificate checked, login with the identity).
//! - `daemon`: something answers on `v1.sock`, and `agent.sock` serves a valid certificate
//!   (fdpass ssh_config); not needed for a stdio ssh_config.
//! - `node` (with `--node host[:port]`): a dial through the daemon (or the proxy, for a stdio
//!   ssh_config) returns the node's SSH banner; a refusal shows the daemon's own error line.
//!
//! The exit status is non-zero when any check fails. Parsing (`ssh -V`, the ssh_config's proxy
//! address, the agent's answer) is pure and unit-tested; the checks themselves are tested end
//! to end against a dev cluster and a running bot.

use std::io::{IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use russh::keys::ssh_key::Certificate;

use crate::identity::{rfc3339, unix_now, Identity, KeyPair};
use crate::transport::link::{self, TransportKind};
use crate::transport::relay;

/// `idmux doctor`.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The destination dir to check (written by `idmux start` or tbot).
    #[arg(long)]
    pub destination_dir: PathBuf,
    /// The proxy, host:port (default: the address in the destination's ssh_config).
    #[arg(long)]
    pub proxy_server: Option<String>,
    /// Dial this node and read its SSH banner: host[:port] (port 3022 by default).
    #[arg(long)]
    pub node: Option<String>,
    /// The transport to check the proxy with (as `idmux start --transport`).
    #[arg(long, value_enum, default_value_t = TransportKind::Auto)]
    pub transport: TransportKind,
}

/// The verdict of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Check {
    pub status: Status,
    pub name: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<4} {}: {}",
            self.status.word(),
            self.name,
            self.detail
        )
    }
}

fn check(status: Status, name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        status,
        name,
        detail: detail.into(),
    }
}

/// `(major, minor)` from `ssh -V` output such as `OpenSSH_9.2p1 Debian-2+deb12u10, OpenSSL ...`
/// or `OpenSSH_for_Windows_8.1p1, LibreSSL 3.0.2`.
pub fn parse_ssh_version(text: &str) -> Option<(u32, u32)> {
    let at = text.find("OpenSSH_")? + "OpenSSH_".len();
    let rest = &text[at..];
    let start = rest.find(|c: char| c.is_ascii_digit())?;
    let rest = &rest[start..];
    let mut parts = rest.splitn(2, '.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    Some((major, minor.parse().ok()?))
}

/// The proxy address an ssh_config written by idmux or tbot names: the stdio ProxyCommand's
/// `--proxy-server=`, or idmux's `via proxy '...'` header in `<cluster>.ssh_config`.
pub fn proxy_from_ssh_config(text: &str) -> Option<String> {
    for marker in ["--proxy-server=", "--proxy-server ", "via proxy "] {
        if let Some(at) = text.find(marker) {
            let rest = text[at + marker.len()..].trim_start();
            let v: String = match rest.strip_prefix('\'') {
                Some(q) => q.chars().take_while(|&c| c != '\'').collect(),
                None => rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '\'')
                    .collect(),
            };
            if !v.is_empty() {
                return Some(v);
            }
        }
    }
    None
}

/// Does this ssh_config pass connections by fd (`ProxyUseFdpass yes`)?
pub fn uses_fdpass(ssh_config: &str) -> bool {
    ssh_config.lines().any(|l| {
        let mut w = l.split_whitespace();
        matches!((w.next(), w.next()), (Some(k), Some(v)) if k.eq_ignore_ascii_case("ProxyUseFdpass") && v.eq_ignore_ascii_case("yes"))
    })
}

/// The certificates in an ssh-agent `SSH_AGENT_IDENTITIES_ANSWER` (type 12) message body
/// (after the length): plain keys are skipped.
pub fn parse_agent_identities(msg: &[u8]) -> Result<Vec<Certificate>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
        if b.len() < n {
            bail!("the agent's answer is cut short");
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    fn u32_of(b: &mut &[u8]) -> Result<usize> {
        let x = take(b, 4)?;
        Ok(u32::from_be_bytes([x[0], x[1], x[2], x[3]]) as usize)
    }
    let mut b = msg;
    let kind = take(&mut b, 1)?[0];
    if kind != 12 {
        bail!("the agent answered message type {kind}, not an identities answer (12)");
    }
    let n = u32_of(&mut b)?;
    let mut certs = Vec::new();
    for _ in 0..n.min(1024) {
        let len = u32_of(&mut b)?;
        let blob = take(&mut b, len)?;
        let clen = u32_of(&mut b)?;
        take(&mut b, clen)?;
        if let Ok(c) = Certificate::from_bytes(blob) {
            certs.push(c);
        }
    }
    Ok(certs)
}

/// Whole seconds as `1h2m` / `5m3s` / `40s`.
pub fn short_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m"),
    }
}

/// Run `ssh` with args; the text of stdout and stderr.
fn ssh_output(args: &[&str]) -> Result<String> {
    let o = std::process::Command::new("ssh")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| anyhow!("cannot run ssh: {e}"))?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    ))
}

fn check_openssh(id: Option<&Identity>, fdpass: bool) -> Check {
    const N: &str = "openssh";
    let v = match ssh_output(&["-V"]) {
        Ok(v) => v.trim().to_string(),
        Err(e) => return check(Status::Fail, N, format!("{e} (install openssh-client)")),
    };
    let name = v.split([',', ' ']).next().unwrap_or("").to_string();
    let Some((major, minor)) = parse_ssh_version(&v) else {
        return check(
            Status::Warn,
            N,
            format!("cannot tell the version from `ssh -V`: {v:?}"),
        );
    };
    if fdpass && (major, minor) < (6, 5) {
        return check(
            Status::Fail,
            N,
            format!("{name} has no ProxyUseFdpass (needs OpenSSH 6.5+), which the ssh_config uses; regenerate it with `idmux ssh-config --mode stdio`"),
        );
    }
    let mut said = vec![name.clone()];
    if fdpass {
        said.push("ProxyUseFdpass".into());
    }
    let Some(id) = id else {
        return check(Status::Ok, N, said.join(", "));
    };
    let certs = ssh_output(&["-Q", "key-cert"]).unwrap_or_default();
    let keys = ssh_output(&["-Q", "key"]).unwrap_or_default();
    let listed = |list: &str, t: &str| list.lines().any(|l| l.trim() == t);
    let cert_type = id.ssh_cert.algorithm().to_certificate_type();
    if !listed(&certs, &cert_type) {
        return check(
            Status::Fail,
            N,
            format!("{name} does not support the certificate type {cert_type} (`ssh -Q key-cert`)"),
        );
    }
    said.push(cert_type);
    for ca in &id.host_cas {
        let t = ca.key.algorithm().as_str().to_string();
        if !listed(&keys, &t) {
            return check(
                Status::Fail,
                N,
                format!("{name} does not support the host CA key type {t} (`ssh -Q key`)"),
            );
        }
        if !said.contains(&format!("host CA {t}")) {
            said.push(format!("host CA {t}"));
        }
    }
    let sig = id.ssh_cert.signature().algorithm();
    if sig.as_str() == "ssh-rsa" {
        return check(
            Status::Warn,
            N,
            format!("{}; the certificate is signed with ssh-rsa (SHA-1), which OpenSSH 8.2+ servers refuse by default", said.join(", ")),
        );
    }
    check(Status::Ok, N, said.join(", ") + " supported")
}

fn mode_of(p: &Path) -> Option<(u32, u32)> {
    std::fs::symlink_metadata(p)
        .ok()
        .map(|m| (m.permissions().mode() & 0o7777, m.uid()))
}

fn check_files(dir: &Path, fdpass: bool) -> Check {
    const N: &str = "files";
    let Some((dmode, _)) = mode_of(dir) else {
        return check(
            Status::Fail,
            N,
            format!("{}: no such directory", dir.display()),
        );
    };
    let mut problems = Vec::new();
    if dmode & 0o022 != 0 {
        problems.push(format!(
            "{} is {:04o}: other users can replace its files (chmod go-w)",
            dir.display(),
            dmode
        ));
    }
    let mut need = vec![
        "identity",
        "key",
        "key-cert.pub",
        "ssh_config",
        "known_hosts",
    ];
    if fdpass {
        need.push("v1.sock");
        need.push("agent.sock");
    }
    let missing: Vec<&str> = need
        .iter()
        .copied()
        .filter(|f| mode_of(&dir.join(f)).is_none())
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "missing {} (has the bot written this dir? is it running?)",
            missing.join(", ")
        ));
    }
    for f in ["key", "identity", "v1.sock", "agent.sock"] {
        if let Some((m, _)) = mode_of(&dir.join(f)) {
            if m & 0o077 != 0 {
                let what = if f.ends_with(".sock") {
                    "other users can use the bot's identity through it"
                } else {
                    "ssh refuses an unprotected private key and other users can read it"
                };
                problems.push(format!(
                    "{f} is {m:04o}: {what} (chmod 600 {})",
                    dir.join(f).display()
                ));
            }
        }
    }
    if problems.is_empty() {
        let n = need.len();
        check(
            Status::Ok,
            N,
            format!(
                "{n} files present; key and identity owner-only; {} {:04o}",
                dir.display(),
                dmode
            ),
        )
    } else {
        check(Status::Fail, N, problems.join("; "))
    }
}

/// The identity of the dir and the `key` + `key-cert.pub` pair.
fn check_identity(dir: &Path) -> (Check, Option<Identity>, Option<Certificate>) {
    const N: &str = "identity";
    let id = match Identity::load_destination(dir) {
        Ok(id) => id,
        Err(e) => return (check(Status::Fail, N, format!("{e:#}")), None, None),
    };
    if let Err(e) = id.check_consistent() {
        return (
            check(
                Status::Fail,
                N,
                format!("{}: {e:#}", dir.join("identity").display()),
            ),
            Some(id),
            None,
        );
    }
    let pair = (|| -> Result<Certificate> {
        let key = KeyPair::from_pem(&crate::fsutil::read_string(&dir.join("key"))?)
            .map_err(|e| anyhow!("{}: {e:#}", dir.join("key").display()))?;
        let text = crate::fsutil::read_string(&dir.join("key-cert.pub"))?;
        let cert = Certificate::from_openssh(text.trim())
            .map_err(|e| anyhow!("{}: {e}", dir.join("key-cert.pub").display()))?;
        if !key.matches_ssh(cert.public_key()) {
            bail!("key and key-cert.pub hold different keys: ssh would offer a certificate it cannot sign for");
        }
        Ok(cert)
    })();
    let cert = match pair {
        Ok(c) => c,
        Err(e) => return (check(Status::Fail, N, format!("{e:#}")), Some(id), None),
    };
    let who = id
        .tls_identity()
        .map(|t| format!("{} (roles {})", t.username, t.groups.join(",")))
        .unwrap_or_else(|_| cert.key_id().to_string());
    let cluster = id.cluster_name().unwrap_or_else(|_| "?".into());
    let logins: Vec<&str> = cert
        .valid_principals()
        .iter()
        .map(String::as_str)
        .filter(|p| !p.starts_with("-teleport"))
        .collect();
    let logins = logins.join(",");
    (
        check(
            Status::Ok,
            N,
            format!("{who}, cluster {cluster}, logins {logins}; key matches key-cert.pub"),
        ),
        Some(id),
        Some(cert),
    )
}

fn check_certificate(id: &Identity, cert: &Certificate) -> Check {
    const N: &str = "certificate";
    let now = unix_now();
    let tls_end = id
        .expires()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (after, before) = (cert.valid_after(), cert.valid_before().min(tls_end));
    if before <= now {
        return check(
            Status::Fail,
            N,
            format!(
                "expired {} ago, at {} (is the bot running? `systemctl status idmux`, `journalctl -u idmux`)",
                short_duration(now - before),
                rfc3339(before)
            ),
        );
    }
    if after > now {
        return check(
            Status::Fail,
            N,
            format!(
                "not valid until {} ({} from now): is this machine's clock behind?",
                rfc3339(after),
                short_duration(after - now)
            ),
        );
    }
    let (left, life) = (before - now, before.saturating_sub(after).max(1));
    let text = format!(
        "valid for another {} of {}, until {}",
        short_duration(left),
        short_duration(life),
        rfc3339(before)
    );
    if left * 3 < life {
        check(
            Status::Warn,
            N,
            format!(
                "{text}: less than a third left, renewals may be failing (check the bot's log)"
            ),
        )
    } else {
        check(Status::Ok, N, text)
    }
}

/// The proxy's clock against ours, from `/webapi/ping`'s `Date` header.
async fn check_clock(proxy: &str, dir: &Path) -> Check {
    const N: &str = "clock";
    let ca = dir.join("teleport-host-ca.crt");
    let trust = if ca.exists() {
        crate::transport::web::Trust::CaFile(ca)
    } else {
        crate::transport::web::Trust::System
    };
    let ping = match crate::transport::web::WebClient::new(proxy, &trust) {
        Ok(c) => c.ping().await,
        Err(e) => Err(e),
    };
    let p = match ping {
        Ok(p) => p,
        Err(e) => return check(Status::Warn, N, format!("not checked: {e:#}")),
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
async fn tls_verdict(proxy: &str, id: &Identity) -> Option<String> {
    use crate::transport::{grpc::ALPN_PROXY_GRPC, tls};
    use tokio::io::AsyncReadExt;
    let mut s = match tls::dial(proxy, id, &[ALPN_PROXY_GRPC]).await {
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
async fn check_proxy(proxy: &str, id: &Identity, kind: TransportKind) -> Check {
    const N: &str = "proxy";
    let t0 = Instant::now();
    let connected = match link::connect(proxy, id, kind).await {
        // gRPC: the handshake alone does not show the proxy's verdict on the certificate.
        Ok(link::Link::Grpc(g)) => match g.cluster_details().await {
            Ok(_) => Ok(link::Link::Grpc(g)),
            // HTTP/2 may only see a broken pipe where the proxy sent a TLS alert: ask again
            // on a bare TLS connection, whose first read carries the alert.
            Err(e) => Err(tls_verdict(proxy, id)
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
    let mut s = UnixStream::connect(sock)
        .map_err(|e| anyhow!("{}: cannot connect: {e}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&[0, 0, 0, 1, 11])?; // SSH_AGENTC_REQUEST_IDENTITIES
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .map_err(|e| anyhow!("{}: no answer: {e}", sock.display()))?;
    let n = u32::from_be_bytes(len) as usize;
    if n > 1 << 20 {
        bail!("{}: answer too long ({n} bytes)", sock.display());
    }
    let mut body = vec![0u8; n];
    s.read_exact(&mut body)?;
    parse_agent_identities(&body).map_err(|e| anyhow!("{}: {e}", sock.display()))
}

fn check_daemon(dir: &Path, fdpass: bool) -> Check {
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

/// Split `host[:port]` (port 3022 by default).
pub fn node_target(s: &str) -> Result<(String, u16)> {
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.contains(':') => Ok((
            h.to_string(),
            p.parse()
                .map_err(|_| anyhow!("--node {s:?}: bad port {p:?}"))?,
        )),
        _ if !s.is_empty() && !s.contains(':') => Ok((s.to_string(), 3022)),
        _ => bail!("--node {s:?}: want host or host:port"),
    }
}

/// The first line a peer sends (the SSH banner), read within 15 s.
fn read_line(s: &mut UnixStream) -> Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    while !got.contains(&b'\n') && got.len() < 1024 {
        let n = s.read(&mut b)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&b[..n]);
    }
    Ok(first_line(&got))
}

/// The first line of what a node sent (its SSH banner), trimmed.
fn first_line(got: &[u8]) -> String {
    String::from_utf8_lossy(got)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Dial through `v1.sock` as idmux-fdpass does, with a pipe as the "stderr" the daemon
/// reports failures on.
fn dial_v1(v1: &Path, host: &str, port: u16) -> Result<String> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let mut s =
        UnixStream::connect(v1).map_err(|e| anyhow!("{}: cannot connect: {e}", v1.display()))?;
    let (err_r, err_w) = nix::unistd::pipe()?;
    let req = format!("{host}:{port}\0");
    let fds = [err_w.as_raw_fd()];
    sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(req.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| anyhow!("{}: cannot send the request: {e}", v1.display()))?;
    drop(err_w);
    let banner = read_line(&mut s)?;
    if banner.starts_with("SSH-") {
        return Ok(banner);
    }
    let mut why = String::new();
    let _ = std::fs::File::from(err_r).read_to_string(&mut why);
    let why = why.lines().next().unwrap_or("").trim().to_string();
    if why.is_empty() {
        bail!("the daemon closed the connection without a banner or an error line");
    }
    bail!("{why}")
}

/// Dial through the proxy directly (stdio ssh_config), over `kind`; the banner and the
/// transport used.
async fn dial_proxy(
    proxy: &str,
    id: &Identity,
    host: &str,
    port: u16,
    kind: TransportKind,
) -> Result<(String, TransportKind)> {
    use tokio::io::AsyncReadExt;
    let cluster = id.cluster_name()?;
    let l = link::connect(proxy, id, kind).await?;
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
        Ok(first_line(&got))
    }
    .await;
    l.close().await;
    result.map(|b| (b, used))
}

async fn check_node(
    node: &str,
    dir: &Path,
    fdpass: bool,
    proxy: Option<&str>,
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
        let (h, p) = (host.clone(), port);
        let r = tokio::task::spawn_blocking(move || dial_v1(&v1, &h, p))
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

/// Run every check; the lines in order.
pub async fn checks(a: &DoctorArgs) -> Vec<Check> {
    let dir = crate::cli::absolute(&a.destination_dir).unwrap_or(a.destination_dir.clone());
    let mut out = Vec::new();
    let cfg = std::fs::read_to_string(dir.join("ssh_config")).unwrap_or_default();
    let fdpass = uses_fdpass(&cfg);
    let (idc, id, cert) = check_identity(&dir);
    out.push(check_openssh(id.as_ref(), fdpass));
    out.push(check_files(&dir, fdpass));
    out.push(idc);
    if let (Some(id), Some(cert)) = (&id, &cert) {
        out.push(check_certificate(id, cert));
    }
    let proxy = a.proxy_server.clone().or_else(|| {
        let mut texts = vec![cfg.clone()];
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with(".ssh_config") {
                    texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        texts.iter().find_map(|t| proxy_from_ssh_config(t))
    });
    match &proxy {
        None => out.push(check(
            Status::Warn,
            "proxy",
            "not checked: no proxy address in the ssh_config; pass --proxy-server host:port",
        )),
        Some(p) => {
            out.push(check_clock(p, &dir).await);
            match &id {
                Some(id) => out.push(check_proxy(p, id, a.transport).await),
                None => out.push(check(
                    Status::Fail,
                    "proxy",
                    "not checked: no usable identity",
                )),
            }
        }
    }
    out.push(check_daemon(&dir, fdpass));
    if let Some(n) = &a.node {
        out.push(check_node(n, &dir, fdpass, proxy.as_deref(), id.as_ref(), a.transport).await);
    }
    out
}

/// `idmux doctor`: print the lines and a summary; an error (exit status 1) if any failed.
pub fn run(a: DoctorArgs) -> Result<()> {
    let t0 = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let lines = rt.block_on(checks(&a));
    let mut n = [0usize; 3];
    for c in &lines {
        println!("{c}");
        n[c.status as usize] += 1;
    }
    println!(
        "doctor: {} ok, {} warn, {} fail ({} ms)",
        n[0],
        n[1],
        n[2],
        t0.elapsed().as_millis()
    );
    let _ = std::io::stdout().flush();
    if n[2] > 0 {
        bail!("{} check(s) failed", n[2]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_versions() {
        assert_eq!(
            parse_ssh_version("OpenSSH_9.2p1 Debian-2+deb12u10, OpenSSL 3.0.19 27 Jan 2026"),
            Some((9, 2))
        );
        assert_eq!(
            parse_ssh_version("OpenSSH_for_Windows_8.1p1, LibreSSL 3.0.2"),
            Some((8, 1))
        );
        assert_eq!(
            parse_ssh_version("OpenSSH_6.4, OpenSSL 1.0.1"),
            Some((6, 4))
        );
        assert_eq!(parse_ssh_version("Dropbear v2022.83"), None);
    }

    #[test]
    fn proxy_address_from_ssh_config() {
        let stdio = "    ProxyCommand '/bin/idmux' ssh-proxy-command --destination-dir='/d' --proxy-server='127.0.0.1:3080' --cluster='c'";
        assert_eq!(
            proxy_from_ssh_config(stdio).as_deref(),
            Some("127.0.0.1:3080")
        );
        let tbot = "ProxyCommand /usr/local/bin/tbot ssh-proxy-command --destination-dir=/opt/machine-id --proxy-server=example.teleport.sh:443 --cluster=example";
        assert_eq!(
            proxy_from_ssh_config(tbot).as_deref(),
            Some("example.teleport.sh:443")
        );
        let cluster = "# Cluster-specific ssh_config generated by idmux for cluster 'c' via proxy 'p.example:443'\n";
        assert_eq!(
            proxy_from_ssh_config(cluster).as_deref(),
            Some("p.example:443")
        );
        assert_eq!(proxy_from_ssh_config("Host *\n  Port 22\n"), None);
    }

    #[test]
    fn fdpass_detection() {
        assert!(uses_fdpass("Host *.c\n    ProxyUseFDPass yes\n"));
        assert!(!uses_fdpass("Host *.c\n    ProxyCommand x\n"));
        assert!(!uses_fdpass("# ProxyUseFdpass yes is not used here\n"));
    }

    #[test]
    fn agent_answers() {
        // Type 12, zero keys.
        assert!(parse_agent_identities(&[12, 0, 0, 0, 0])
            .unwrap()
            .is_empty());
        // A plain (non-certificate) key blob is skipped; a short answer is an error.
        let mut m = vec![12, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 1, b'c'];
        assert!(parse_agent_identities(&m).unwrap().is_empty());
        m.truncate(12);
        assert!(parse_agent_identities(&m).is_err());
        assert!(parse_agent_identities(&[5]).is_err());
    }

    #[test]
    fn node_targets() {
        assert_eq!(node_target("node-1").unwrap(), ("node-1".into(), 3022));
        assert_eq!(node_target("node-1.c:22").unwrap(), ("node-1.c".into(), 22));
        assert!(node_target("a:b").is_err());
        assert!(node_target("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(short_duration(40), "40s");
        assert_eq!(short_duration(303), "5m3s");
        assert_eq!(short_duration(3720), "1h2m");
    }
}
