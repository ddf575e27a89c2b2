//! tsh's `proxy_templates` (a tsh config file, `~/.tsh/config/config.yaml`), as tbot's
//! ssh-multiplexer applies them (`proxy_templates_path`; `lib/client` `ProxyTemplates.Apply`,
//! `lib/tbot/services/ssh/multiplexer.go`):
//!
//! ```yaml
//! proxy_templates:
//!   - template: '^(\w+)\.(leaf1|leaf2)\.example\.com:(.*)$'   # matched against host:port
//!     cluster: "$2"                                          # optional
//!     host: "$1:$3"                                          # optional, host or host:port
//! ```
//!
//! The first template whose regular expression matches `host:port` wins; its `cluster` and
//! `host` (with `$1`, `${name}` expanded) replace the request's. `proxy` is ignored, as tbot's
//! multiplexer ignores it. `search` and `query` (a node looked up through Auth, dialled by its
//! UUID) are refused when the file is loaded, with one line: idmux does not do that lookup.
//! Pure: text in, a rewrite out; the file is read once, at start, as tbot does.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;

/// The loaded templates, in order.
#[derive(Debug, Default)]
pub struct ProxyTemplates {
    list: Vec<Template>,
}

#[derive(Debug)]
struct Template {
    re: regex::Regex,
    cluster: String,
    host: String,
}

#[derive(Deserialize)]
struct TshConfig {
    #[serde(default)]
    proxy_templates: Vec<FileTemplate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTemplate {
    #[serde(default)]
    template: String,
    #[serde(default)]
    proxy: String,
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    query: String,
    #[serde(default)]
    search: String,
}

/// What a matching template makes of a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub host: String,
    pub port: u16,
    pub cluster: String,
}

impl ProxyTemplates {
    /// Read a tsh config file (only `proxy_templates` is used).
    pub fn load(path: &Path) -> Result<ProxyTemplates> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("{}: cannot read the proxy templates: {e}", path.display()))?;
        ProxyTemplates::parse(&text, &path.display().to_string())
    }

    /// Parse a tsh config's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<ProxyTemplates> {
        let f: TshConfig = serde_norway::from_str(text)
            .map_err(|e| anyhow!("{origin}: loading proxy templates: {e}"))?;
        let mut list = Vec::new();
        for (i, t) in f.proxy_templates.into_iter().enumerate() {
            let what = format!("{origin}: proxy_templates[{i}]");
            if t.template.is_empty() {
                bail!("{what}: empty proxy template");
            }
            if [&t.proxy, &t.cluster, &t.host, &t.query, &t.search]
                .iter()
                .all(|f| f.is_empty())
            {
                bail!("{what}: empty proxy, cluster, host, query, and search fields in proxy template, but at least one is required");
            }
            if !t.query.is_empty() || !t.search.is_empty() {
                bail!("{what}: search and query (a node looked up through Auth) are not supported by idmux's multiplexer; use host and cluster");
            }
            let re = regex::Regex::new(&t.template)
                .map_err(|e| anyhow!("{what}: template {:?}: {e}", t.template))?;
            list.push(Template {
                re,
                cluster: t.cluster,
                host: t.host,
            });
        }
        Ok(ProxyTemplates { list })
    }

    /// Apply the first template matching `host:port`, or `None` when none does.
    pub fn apply(&self, host: &str, port: u16, cluster: &str) -> Option<Rewrite> {
        let full = format!("{host}:{port}");
        let t = self.list.iter().find(|t| t.re.is_match(&full))?;
        // As Go's `ExpandString` over every match, concatenated.
        let expand = |field: &str| {
            let mut out = String::new();
            if field.is_empty() {
                return out;
            }
            for caps in t.re.captures_iter(&full) {
                caps.expand(field, &mut out);
            }
            out
        };
        let mut r = Rewrite {
            host: host.to_string(),
            port,
            cluster: cluster.to_string(),
        };
        let c = expand(&t.cluster);
        if !c.is_empty() {
            r.cluster = c;
        }
        let h = expand(&t.host);
        if !h.is_empty() {
            match h
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            {
                Some((h, p)) => {
                    r.host = h.to_string();
                    r.port = p;
                }
                None => r.host = h,
            }
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TSH: &str = r#"
add_headers: []
proxy_templates:
  - template: '^(\w+)\.(leaf1|leaf2)\.example\.com:(.*)$'
    proxy: "$2.example.com:443"
    cluster: "$2"
    host: "$1:$3"
  - template: '^(?P<name>\w+)\.lab:(\d+)$'
    host: "${name}-node"
"#;

    #[test]
    fn first_match_rewrites_host_port_and_cluster() {
        let t = ProxyTemplates::parse(TSH, "tsh.yaml").unwrap();
        assert_eq!(
            t.apply("node1.leaf2.example.com", 3022, "root"),
            Some(Rewrite {
                host: "node1".into(),
                port: 3022,
                cluster: "leaf2".into()
            })
        );
        assert_eq!(
            t.apply("db.lab", 22, "root"),
            Some(Rewrite {
                host: "db-node".into(),
                port: 22,
                cluster: "root".into()
            })
        );
        assert_eq!(t.apply("other.example.com", 22, "root"), None);
    }

    #[test]
    fn bad_templates_are_named() {
        for (y, want) in [
            (
                "proxy_templates:\n  - template: ''\n    host: x\n",
                "empty proxy template",
            ),
            (
                "proxy_templates:\n  - template: 'a'\n",
                "at least one is required",
            ),
            (
                "proxy_templates:\n  - template: '('\n    host: x\n",
                "template \"(\"",
            ),
            (
                "proxy_templates:\n  - template: 'a'\n    search: x\n",
                "not supported",
            ),
            ("proxy_templates:\n  - template: 'a'\n    hots: x\n", "hots"),
        ] {
            let e = ProxyTemplates::parse(y, "t.yaml").unwrap_err().to_string();
            assert!(e.contains(want) && e.starts_with("t.yaml"), "{e}");
        }
    }
}
