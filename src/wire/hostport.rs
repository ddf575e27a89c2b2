//! The one `host:port` split, pure, and the one join; every address idmux reads goes through
//! [`split`] (flags, YAML, v1.sock requests, dial targets, doctor's `--node`), so IPv6 rules
//! are the same everywhere: `[v6]:port`, brackets only around the whole host and dropped.
//! Also Teleport's `cleanTargetHost`.

use std::fmt;

/// What is wrong with a `host:port`.
#[derive(Debug, PartialEq, Eq)]
pub enum HostPortError<'a> {
    /// No `:port` at all.
    NoPort,
    EmptyHost,
    /// A `[` or `]` that does not enclose the whole host (the host, brackets removed).
    BadHost(&'a str),
    /// The text after the last `:`, not a `u16`.
    BadPort(&'a str),
}

impl fmt::Display for HostPortError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPortError::NoPort => write!(f, "want host:port"),
            HostPortError::EmptyHost => write!(f, "empty host"),
            HostPortError::BadHost(h) => write!(f, "bad host {h:?}"),
            HostPortError::BadPort(p) => write!(f, "bad port {p:?}"),
        }
    }
}

/// Split `host:port` (`[v6]:port` too; the brackets are dropped). Port 0 parses; the callers
/// decide whether it is allowed.
pub fn split(s: &str) -> Result<(&str, u16), HostPortError<'_>> {
    let (h, p) = s.rsplit_once(':').ok_or(HostPortError::NoPort)?;
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    if h.is_empty() {
        return Err(HostPortError::EmptyHost);
    }
    // Brackets only enclose an IPv6 literal; any left over is no host. (Found by fuzzing:
    // "[[]]:3" was accepted as host "[]".)
    if h.contains(['[', ']']) {
        return Err(HostPortError::BadHost(h));
    }
    let port = p.parse().map_err(|_| HostPortError::BadPort(p))?;
    Ok((h, port))
}

/// Split `host:port` (port required, not 0), naming the flag (or other source) in the error.
pub fn split_host_port(s: &str, what: &str) -> anyhow::Result<(String, u16)> {
    match split(s) {
        Ok((h, port)) if port > 0 => Ok((h.to_string(), port)),
        Ok(_) => anyhow::bail!("{what} {s:?}: bad port \"0\""),
        Err(HostPortError::BadPort(p)) => anyhow::bail!("{what} {s:?}: bad port {p:?}"),
        Err(e) => anyhow::bail!("{what} {s:?}: {e}"),
    }
}

/// `host:port`, with brackets around an IPv6 host.
pub fn join(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host of an address the user gave (`host:port`, `[v6]:port`, or a bare IP or name).
pub fn host_of(addr: &str) -> &str {
    if addr.parse::<std::net::IpAddr>().is_ok() {
        return addr;
    }
    match split(addr) {
        Ok((h, _)) => h,
        Err(_) => addr,
    }
}

/// Teleport's cleanTargetHost: strip a trailing `.<proxy host>`, then a trailing `.<cluster>`.
/// The proxy resolves what is left (node name, UUID or registered address).
pub fn clean_target_host<'a>(target: &'a str, proxy_host: &str, cluster: &str) -> &'a str {
    let strip = |t: &'a str, suffix: &str| -> &'a str {
        if suffix.is_empty() {
            return t;
        }
        match t.strip_suffix(suffix) {
            Some(rest) if rest.ends_with('.') => &rest[..rest.len() - 1],
            _ => t,
        }
    };
    strip(strip(target, proxy_host), cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parts() {
        assert_eq!(split("node-1:3022"), Ok(("node-1", 3022)));
        assert_eq!(split("[::1]:22"), Ok(("::1", 22)));
        assert_eq!(split("h:0"), Ok(("h", 0)));
        assert_eq!(split("h"), Err(HostPortError::NoPort));
        assert_eq!(split("[]:22"), Err(HostPortError::EmptyHost));
        assert_eq!(split(":22"), Err(HostPortError::EmptyHost));
        assert_eq!(split("h:x"), Err(HostPortError::BadPort("x")));
        assert_eq!(split("h:99999"), Err(HostPortError::BadPort("99999")));
        assert_eq!(split("[[]]:3"), Err(HostPortError::BadHost("[]")));
        assert_eq!(split("a]:3"), Err(HostPortError::BadHost("a]")));
        assert_eq!(split("[::1:3"), Err(HostPortError::BadHost("[::1")));
    }

    #[test]
    fn join_brackets_v6() {
        assert_eq!(join("::1", 22), "[::1]:22");
        assert_eq!(join("h", 22), "h:22");
        assert_eq!(join("node-1", 3022), "node-1:3022");
        assert_eq!(split(&join("::1", 22)), Ok(("::1", 22)));
    }

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("proxy.example.com:443"), "proxy.example.com");
        assert_eq!(host_of("proxy.example.com"), "proxy.example.com");
        assert_eq!(host_of("proxy.example.com:3080"), "proxy.example.com");
        assert_eq!(host_of("127.0.0.1:3080"), "127.0.0.1");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("[::1]:3080"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("proxy"), "proxy");
    }

    #[test]
    fn clean_target_host_like_teleport() {
        let c = |t| clean_target_host(t, "proxy.example.com", "example.com");
        assert_eq!(c("node-1.example.com"), "node-1");
        assert_eq!(c("node-1.proxy.example.com"), "node-1");
        assert_eq!(c("node-1"), "node-1");
        // Only whole labels are stripped.
        assert_eq!(c("node-1xexample.com"), "node-1xexample.com");
        // The proxy host first, then the cluster.
        assert_eq!(clean_target_host("a.b.proxy.c", "proxy.c", "b"), "a");
        // The cluster name itself is not a node name, and is left alone.
        assert_eq!(c("example.com"), "example.com");
        // IPs and empty parts.
        assert_eq!(clean_target_host("10.0.0.1", "127.0.0.1", ""), "10.0.0.1");
        assert_eq!(clean_target_host("n.c", "", "c"), "n");
    }

    #[test]
    fn split_host_port_errors_name_the_flag() {
        assert_eq!(split_host_port("a:1", "--x").unwrap(), ("a".into(), 1));
        assert!(split_host_port("a", "--proxy-server")
            .unwrap_err()
            .to_string()
            .contains("--proxy-server"));
        assert!(split_host_port("a:x", "--p").is_err());
        assert_eq!(
            split_host_port("h:0", "--x").unwrap_err().to_string(),
            "--x \"h:0\": bad port \"0\""
        );
        assert_eq!(
            split_host_port("[]:1", "--x").unwrap_err().to_string(),
            "--x \"[]:1\": empty host"
        );
    }
}
