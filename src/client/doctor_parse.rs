//! What `idmux doctor` reads, pure: `ssh -V`, an ssh_config's proxy, ProxyCommand programs and
//! route flags, the agent's identities answer, `--node`, and durations as the report prints
//! them.
//!
//! Here rather than in the binary so the fuzz target `doctor` reaches the same code the doctor
//! runs (`src/cmd/doctor/` calls these). Must not know: clap, the checks themselves or how
//! their results are printed.

use anyhow::{bail, Result};
use russh::keys::ssh_key::Certificate;

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

/// The program every ProxyCommand of an ssh_config runs (the first word, unquoted as ssh
/// would: single or double quotes), each once, in order.
pub fn proxy_command_programs(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        let Some(rest) = t
            .strip_prefix("ProxyCommand")
            .filter(|r| r.starts_with([' ', '\t', '=']))
        else {
            continue;
        };
        let rest = rest.trim_start_matches([' ', '\t', '=']);
        let prog = match rest.chars().next() {
            Some(q @ ('\'' | '"')) => rest[1..].split(q).next().unwrap_or(""),
            _ => rest.split_whitespace().next().unwrap_or(""),
        };
        if !prog.is_empty() && !out.iter().any(|p| p == prog) {
            out.push(prog.to_string());
        }
    }
    out
}

/// The way tbot's (and idmux's) stdio ProxyCommand line says: `--[no-]tls-routing`,
/// `--[no-]connection-upgrade`.
pub fn route_flags_from_ssh_config(text: &str) -> idmux_transport::route::RouteFlags {
    let line = text
        .lines()
        .find(|l| l.contains("ssh-proxy-command"))
        .unwrap_or_default();
    let has = |w: &str| line.split_whitespace().any(|x| x == w);
    let pick = |on: &str, off: &str| {
        if has(off) {
            Some(false)
        } else if has(on) {
            Some(true)
        } else {
            None
        }
    };
    idmux_transport::route::RouteFlags {
        tls_routing: pick("--tls-routing", "--no-tls-routing"),
        upgrade: pick("--connection-upgrade", "--no-connection-upgrade"),
    }
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
    Ok(idmux_wire::agent::parse_identities(msg)?
        .iter()
        .filter_map(|k| Certificate::from_bytes(&k.blob).ok())
        .collect())
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

/// Split `host[:port]` (port 3022 by default).
pub fn node_target(s: &str) -> Result<(String, u16)> {
    use idmux_wire::hostport::{split, HostPortError};
    match split(s) {
        Ok((h, port)) => Ok((h.to_string(), port)),
        Err(HostPortError::NoPort) if !s.is_empty() && !s.contains(['[', ']']) => {
            Ok((s.to_string(), 3022))
        }
        Err(HostPortError::BadPort(p)) => bail!("--node {s:?}: bad port {p:?}"),
        Err(_) => bail!("--node {s:?}: want host or host:port"),
    }
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
    fn proxy_command_program() {
        let cfg = "Host *.c !p\n    ProxyCommand '/usr/bin/idmux-fdpass' '/d/v1.sock' '%h:%p|c'\n\
                   Host x\n    ProxyCommand /usr/local/bin/tbot ssh-proxy-command --x\n\
                   Host y\n    ProxyCommand=\"/opt/my bin/fdpass\" a\n";
        assert_eq!(
            proxy_command_programs(cfg),
            vec![
                "/usr/bin/idmux-fdpass",
                "/usr/local/bin/tbot",
                "/opt/my bin/fdpass"
            ]
        );
        assert!(proxy_command_programs("ProxyJump x\n").is_empty());
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
