//! Which HTTP proxy, if any, a dial to `host:port` goes through: `HTTPS_PROXY`, `HTTP_PROXY`
//! and `NO_PROXY` (and their lower-case forms) read with Go's rules, as tbot reads them
//! (`golang.org/x/net/http/httpproxy` `FromEnvironment`, used by Teleport's
//! `api/utils/proxy.GetProxyURL`: the `https` scheme is asked first, then `http`).
//!
//! Go's rules, which differ from curl's (hyper-util's matcher follows curl): `localhost` and
//! loopback IP literals never use a proxy; `NO_PROXY` entries are comma-separated, `*` matches
//! everything, an IP or CIDR matches IP literals, `name` matches the name and its subdomains,
//! `.name` (or `*.name`) only subdomains, and an entry with `:port` matches that port only.
//! `ALL_PROXY` is not read. `REQUEST_METHOD` set (a CGI process) ignores `HTTP_PROXY`.
//!
//! Pure: the environment is passed in, so the rules are unit-tested without touching it.

use std::net::IpAddr;

use anyhow::{bail, Result};

/// How a forward proxy is spoken to (the URL's scheme).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// `http://`: HTTP CONNECT over TCP.
    Http,
    /// `https://`: HTTP CONNECT inside TLS to the proxy.
    Https,
    /// `socks5://`: a SOCKS5 CONNECT (RFC 1928), the target by name.
    Socks5,
}

/// A forward proxy every dial goes through. (Its `Debug` leaves the credentials out.)
#[derive(Clone, PartialEq, Eq)]
pub struct ForwardProxy {
    /// `host:port` of the proxy.
    pub addr: String,
    /// `user:password` from the proxy URL (still `%`-escaped), for `Proxy-Authorization:
    /// Basic` or SOCKS5's username/password authentication (RFC 1929).
    pub userinfo: Option<String>,
    /// Which variable named it (for messages): `HTTPS_PROXY`, `http_proxy`, ...
    pub var: &'static str,
    pub kind: ProxyKind,
}

impl std::fmt::Debug for ForwardProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardProxy")
            .field("addr", &self.addr)
            .field("userinfo", &self.userinfo.as_ref().map(|_| "***"))
            .field("var", &self.var)
            .field("kind", &self.kind)
            .finish()
    }
}

impl ForwardProxy {
    /// The proxy as messages name it: `HTTP proxy 10.0.0.9:3128 (from HTTPS_PROXY)`.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            ProxyKind::Http => "HTTP",
            ProxyKind::Https => "HTTPS",
            ProxyKind::Socks5 => "SOCKS5",
        };
        format!("{kind} proxy {} (from {})", self.addr, self.var)
    }
}

/// The proxy for a dial to `target` (`host:port`), read from `env` (a lookup such as
/// `|k| std::env::var(k).ok()`). `Ok(None)`: dial directly.
pub fn proxy_for(
    target: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<ForwardProxy>> {
    let get = |names: [&'static str; 2]| {
        names
            .into_iter()
            .find_map(|n| env(n).filter(|v| !v.is_empty()).map(|v| (n, v)))
    };
    let https = get(["HTTPS_PROXY", "https_proxy"]);
    let cgi = env("REQUEST_METHOD").is_some_and(|v| !v.is_empty());
    let http = if cgi {
        None
    } else {
        get(["HTTP_PROXY", "http_proxy"])
    };
    let Some((var, url)) = https.or(http) else {
        return Ok(None);
    };
    let no = get(["NO_PROXY", "no_proxy"])
        .map(|(_, v)| v)
        .unwrap_or_default();
    if !use_proxy(target, &no) {
        return Ok(None);
    }
    parse_proxy_url(var, &url).map(Some)
}

/// The process environment's proxy for `target`.
pub fn from_env(target: &str) -> Result<Option<ForwardProxy>> {
    proxy_for(target, |k| std::env::var(k).ok())
}

/// `http://`, `https://` or `socks5://[user:pass@]host[:port]` (the scheme may be left out,
/// as Go allows: then `http`), the three schemes Teleport's `DialProxyWithDialer`
/// (`api/client/proxy.go`) takes (`socks5` through `golang.org/x/net/proxy`).
fn parse_proxy_url(var: &'static str, url: &str) -> Result<ForwardProxy> {
    let shown = redact(url);
    let (rest, kind) = match url.split_once("://") {
        None => (url, ProxyKind::Http),
        Some((scheme, r)) => match scheme.to_ascii_lowercase().as_str() {
            "http" => (r, ProxyKind::Http),
            "https" => (r, ProxyKind::Https),
            "socks5" => (r, ProxyKind::Socks5),
            _ => bail!(
                "{var}={shown}: proxy scheme {scheme:?} is not supported (only http://, \
                 https:// and socks5://)"
            ),
        },
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    if hostport.is_empty() {
        bail!("{var}={shown}: no proxy host");
    }
    // Go's default ports (net/http's `canonicalAddr`): 80, 443, and 1080 for socks5://.
    let has_port = match hostport.rsplit_once(':') {
        Some((h, p)) => !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':'),
        None => false,
    } && !(hostport.starts_with('[') && hostport.ends_with(']'));
    let addr = if has_port {
        hostport.to_string()
    } else {
        let port = match kind {
            ProxyKind::Http => 80,
            ProxyKind::Https => 443,
            ProxyKind::Socks5 => 1080,
        };
        format!("{hostport}:{port}")
    };
    // What Go's url.Parse refuses (an unescaped `/` or `@` in a password cuts the URL short,
    // a bad port, an IPv6 literal without brackets) must not become an address.
    let bracketed = addr.starts_with('[');
    if !matches!(idmux_wire::hostport::split(&addr),
                 Ok((h, p)) if p > 0 && (bracketed || !h.contains(':')))
    {
        bail!("{var}={shown}: not a proxy URL (want scheme://[user:password@]host[:port], with `%`-escapes in the user name and password)");
    }
    Ok(ForwardProxy {
        addr,
        userinfo,
        var,
        kind,
    })
}

/// `url` with everything between the scheme and the last `@` replaced by `***`, for messages:
/// a password with an unescaped `/` or `@` in it is hidden too.
fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}***@{host}"),
        None => url.to_string(),
    }
}

/// Go's `useProxy`: should a dial to `target` go through the proxy, given `NO_PROXY`?
fn use_proxy(target: &str, no_proxy: &str) -> bool {
    let (host, port) = split(target);
    let host = host.to_ascii_lowercase();
    if host == "localhost" {
        return false;
    }
    let ip = host.parse::<IpAddr>().ok();
    if ip.is_some_and(|ip| ip.is_loopback()) {
        return false;
    }
    for entry in no_proxy.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let entry = entry.to_ascii_lowercase();
        if entry == "*" {
            return false;
        }
        if let Some((net, bits)) = entry.split_once('/') {
            if let (Ok(net), Ok(bits), Some(ip)) = (net.parse::<IpAddr>(), bits.parse::<u8>(), ip) {
                if in_cidr(ip, net, bits) {
                    return false;
                }
            }
            continue;
        }
        let (ehost, eport) = split(&entry);
        if let Ok(eip) = ehost.parse::<IpAddr>() {
            if ip == Some(eip) && (eport.is_empty() || eport == port) {
                return false;
            }
            continue;
        }
        if !eport.is_empty() && eport != port {
            continue;
        }
        // Go strips `*` only from `*.`: `*example.com` stays a literal (matching nothing).
        let ehost = match ehost.strip_prefix("*.") {
            Some(_) => &ehost[1..],
            None => ehost,
        };
        let matched = match ehost.strip_prefix('.') {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == ehost || host.ends_with(&format!(".{ehost}")),
        };
        if matched {
            return false;
        }
    }
    true
}

/// `host:port` or `[v6]:port` into host and port (port empty when absent).
fn split(s: &str) -> (&str, &str) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            return (h, p.strip_prefix(':').unwrap_or(""));
        }
    }
    match s.rsplit_once(':') {
        // More than one colon without brackets: an IPv6 literal without a port.
        Some((h, _)) if h.contains(':') => (s, ""),
        Some((h, p)) => (h, p),
        None => (s, ""),
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    const P: &[(&str, &str)] = &[("HTTPS_PROXY", "http://squid.corp:3128")];

    #[test]
    fn https_proxy_wins_over_http_proxy_and_lower_case_is_read() {
        let e = env(&[
            ("HTTP_PROXY", "http://h:1"),
            ("https_proxy", "http://u:p@s:2"),
        ]);
        let p = proxy_for("proxy.example.com:443", e).unwrap().unwrap();
        assert_eq!(p.addr, "s:2");
        assert_eq!(p.userinfo.as_deref(), Some("u:p"));
        assert_eq!(p.var, "https_proxy");
        let e = env(&[("HTTP_PROXY", "h")]);
        let p = proxy_for("proxy.example.com:443", e).unwrap().unwrap();
        assert_eq!(
            p.addr, "h:80",
            "no scheme, no port: http and port 80, as Go"
        );
        assert_eq!(proxy_for("a:1", env(&[])).unwrap(), None);
        assert_eq!(
            proxy_for("a:1", env(&[("ALL_PROXY", "http://x:1")])).unwrap(),
            None
        );
        assert_eq!(
            proxy_for(
                "a:1",
                env(&[("HTTP_PROXY", "http://x:1"), ("REQUEST_METHOD", "GET")])
            )
            .unwrap(),
            None,
            "CGI ignores HTTP_PROXY"
        );
    }

    #[test]
    fn localhost_and_loopback_literals_bypass_the_proxy() {
        for t in [
            "localhost:3080",
            "127.0.0.1:3080",
            "127.0.1.1:3080",
            "[::1]:3080",
        ] {
            assert_eq!(proxy_for(t, env(P)).unwrap(), None, "{t}");
        }
        // A name that resolves to loopback is still proxied: only literals bypass.
        assert!(proxy_for("myhost:3080", env(P)).unwrap().is_some());
    }

    #[test]
    fn no_proxy_rules_are_gos() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "a.b:443", false),
            ("example.com", "example.com:443", false),
            ("example.com", "proxy.example.com:443", false),
            ("example.com", "notexample.com:443", true),
            (".example.com", "example.com:443", true),
            (".example.com", "proxy.example.com:443", false),
            ("*.example.com", "proxy.example.com:443", false),
            ("example.com:8443", "example.com:443", true),
            ("example.com:443", "example.com:443", false),
            ("10.0.0.0/8", "10.1.2.3:443", false),
            ("10.0.0.0/8", "11.1.2.3:443", true),
            ("192.168.1.5", "192.168.1.5:443", false),
            ("192.168.1.5:80", "192.168.1.5:443", true),
            (" foo , EXAMPLE.com ", "Proxy.Example.COM:443", false),
        ];
        for (no, target, proxied) in cases {
            assert_eq!(
                use_proxy(target, no),
                *proxied,
                "NO_PROXY={no} target={target}"
            );
        }
    }

    #[test]
    fn credentials_never_reach_messages_and_schemes_are_case_blind() {
        let e = proxy_for("a:1", env(&[("HTTPS_PROXY", "socks4://u:secret@s:1080")])).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("socks4://***@s:1080"), "{e}");
        let p = proxy_for("a:1", env(&[("HTTPS_PROXY", "HTTP://s:3128")]))
            .unwrap()
            .unwrap();
        assert_eq!(p.addr, "s:3128");
        assert!(use_proxy("example.com:443", "*example.com"));
    }

    #[test]
    fn an_https_proxy_is_reached_over_tls_with_gos_default_port() {
        let p = proxy_for("a:1", env(&[("HTTPS_PROXY", "HTTPS://u:p@s")]))
            .unwrap()
            .unwrap();
        assert_eq!((p.addr.as_str(), p.kind), ("s:443", ProxyKind::Https));
        assert_eq!(p.userinfo.as_deref(), Some("u:p"));
        assert_eq!(p.describe(), "HTTPS proxy s:443 (from HTTPS_PROXY)");
        let p = proxy_for("a:1", env(&[("https_proxy", "https://[fd00::1]:8443")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.addr.as_str(), p.kind),
            ("[fd00::1]:8443", ProxyKind::Https)
        );
        let p = proxy_for("a:1", env(&[("HTTP_PROXY", "s:3128")]))
            .unwrap()
            .unwrap();
        assert_eq!(p.kind, ProxyKind::Http);
        assert_eq!(p.describe(), "HTTP proxy s:3128 (from HTTP_PROXY)");
    }

    #[test]
    fn a_socks5_proxy_takes_its_credentials_and_gos_default_port() {
        let p = proxy_for("a:1", env(&[("HTTPS_PROXY", "SOCKS5://u:p%40ss@s")]))
            .unwrap()
            .unwrap();
        assert_eq!((p.addr.as_str(), p.kind), ("s:1080", ProxyKind::Socks5));
        assert_eq!(p.userinfo.as_deref(), Some("u:p%40ss"));
        assert_eq!(p.describe(), "SOCKS5 proxy s:1080 (from HTTPS_PROXY)");
    }

    #[test]
    fn urls_go_refuses_are_refused_without_showing_the_password() {
        for url in [
            "https://u:pa/ss@h",
            "http://s:abc",
            "https://fd00::1",
            "http://:3128",
        ] {
            let e = match proxy_for("a:1", |k| (k == "HTTPS_PROXY").then(|| url.to_string())) {
                Ok(p) => panic!("{url} gave {p:?}"),
                Err(e) => e.to_string(),
            };
            assert!(
                e.contains("not a proxy URL") || e.contains("no proxy host"),
                "{url}: {e}"
            );
            assert!(!e.contains("pa/ss") && !e.contains("u:pa"), "{url}: {e}");
        }
        let p = proxy_for("a:1", env(&[("HTTPS_PROXY", "socks5://u:secret@s:1080")]))
            .unwrap()
            .unwrap();
        assert!(!format!("{p:?}").contains("secret"), "{p:?}");
    }

    #[test]
    fn unsupported_schemes_are_named() {
        let e = proxy_for("a:1", env(&[("HTTPS_PROXY", "socks4://s:1080")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "HTTPS_PROXY=socks4://s:1080: proxy scheme \"socks4\" is not supported (only http://, https:// and socks5://)"
        );
    }
}
