//! The bot's configuration: `tbot start` flags, or a tbot-style YAML file (version v2).
//!
//! Parsing is pure: YAML text in, [`BotConfig`] or an error naming the key and its line out.
//! Unknown keys are errors (serde's `deny_unknown_fields` with serde_norway's line numbers: the maintained fork of serde_yaml, same errors).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;

use idmux_identity::openssh::Mode;
use idmux_transport::link::TransportKind;
use idmux_transport::route::RouteFlags;
use idmux_transport::web::Trust;

/// Everything `idmux start` needs.
#[derive(Clone, Debug)]
pub struct BotConfig {
    pub proxy_server: String,
    pub token: Option<String>,
    pub data_dir: PathBuf,
    pub outputs: Vec<Output>,
    pub certificate_ttl: Duration,
    pub renewal_interval: Duration,
    pub oneshot: bool,
    pub trust: Trust,
    /// Run the ssh multiplexer service (v1.sock, agent.sock) in this destination dir.
    pub multiplexer: Option<PathBuf>,
    /// The multiplexer's diagnostics address.
    pub diag_addr: Option<std::net::SocketAddr>,
    /// Channels per upstream connection.
    pub max_channels: usize,
    /// How the multiplexer reaches nodes.
    pub transport: TransportKind,
    /// TLS routing and the connection upgrade, when the user decides them (else ping and the
    /// upgrade test do).
    pub route_flags: RouteFlags,
}

/// One identity output (a destination dir).
#[derive(Clone, Debug)]
pub struct Output {
    pub dir: PathBuf,
    /// Roles to impersonate; empty = the bot role's impersonate list (`GetRole`), as tbot.
    pub roles: Vec<String>,
    pub mode: Mode,
    /// Route bare one-label names to the cluster (idmux's own; see `SshConfigParams`).
    pub bare_names: bool,
}

/// A token value as tbot reads it (`utils.TryReadValueAsFile`): an absolute path is a file
/// holding the token (whitespace trimmed); anything else is the token itself. `what` names
/// where the value came from (`--token`, a config file's `onboarding.token`). The file's
/// contents never appear in messages.
pub fn token_value(value: &str, what: &str) -> Result<String> {
    if !std::path::Path::new(value).is_absolute() {
        return Ok(value.to_string());
    }
    let text = std::fs::read_to_string(value)
        .map_err(|e| anyhow!("{what} {value}: cannot read the token file: {e}"))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        bail!("{what} {value}: the token file is empty");
    }
    Ok(token)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV2 {
    version: String,
    proxy_server: Option<String>,
    onboarding: Option<Onboarding>,
    storage: Option<Destination>,
    #[serde(default)]
    outputs: Vec<FileOutput>,
    #[serde(default)]
    services: Vec<FileService>,
    credential_ttl: Option<String>,
    renewal_interval: Option<String>,
    #[serde(default)]
    oneshot: bool,
    ca_path: Option<PathBuf>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    debug: bool,
    /// idmux's own key (tbot has none): the node transport, auto|grpc|ssh.
    #[serde(default)]
    transport: TransportKind,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Onboarding {
    join_method: String,
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Destination {
    #[serde(rename = "type")]
    kind: String,
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOutput {
    #[serde(rename = "type")]
    kind: String,
    destination: Destination,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default = "default_ssh_config")]
    ssh_config: String,
    /// idmux's own key (tbot has none): also route bare one-label host names.
    #[serde(default)]
    bare_names: bool,
}

fn default_ssh_config() -> String {
    "on".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileService {
    #[serde(rename = "type")]
    kind: String,
    destination: Destination,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    enable_resumption: Option<bool>,
    #[serde(default)]
    proxy_command: Vec<String>,
}

/// Parse a duration value of `key`, naming the key and its line on error.
fn duration(text: &str, origin: &str, key: &str, v: Option<String>) -> Result<Option<Duration>> {
    let Some(v) = v else { return Ok(None) };
    humantime::parse_duration(&v).map(Some).map_err(|e| {
        let line = text
            .lines()
            .position(|l| l.trim_start().starts_with(&format!("{key}:")))
            .map(|n| n + 1)
            .unwrap_or(0);
        anyhow!("{origin}: {key}: bad duration {v:?} at line {line}: {e}")
    })
}

fn dir_of(d: Destination, what: &str) -> Result<PathBuf> {
    if d.kind != "directory" {
        bail!(
            "{what}: destination type {:?} is not supported (only directory)",
            d.kind
        );
    }
    Ok(d.path)
}

/// Parse a tbot v2 YAML config. `origin` names the file in errors.
pub fn parse_yaml(text: &str, origin: &str) -> Result<BotConfig> {
    let f: FileV2 = serde_norway::from_str(text).map_err(|e| anyhow!("{origin}: {e}"))?;
    if f.version != "v2" {
        bail!(
            "{origin}: version {:?} is not supported (want v2)",
            f.version
        );
    }
    let _ = f.debug;
    let proxy_server = f
        .proxy_server
        .ok_or_else(|| anyhow!("{origin}: proxy_server is required"))?;
    let token = match f.onboarding {
        Some(o) => {
            if o.join_method != "token" {
                bail!(
                    "{origin}: onboarding.join_method {:?} is not supported (want token)",
                    o.join_method
                );
            }
            o.token
        }
        None => None,
    };
    let data_dir = match f.storage {
        Some(s) => dir_of(s, &format!("{origin}: storage"))?,
        None => PathBuf::from("/var/lib/teleport/bot"),
    };
    let mut outputs = Vec::new();
    let mut multiplexer = None;
    for s in f.services {
        let _ = (&s.name, &s.enable_resumption, &s.proxy_command);
        if s.kind != "ssh-multiplexer" {
            bail!(
                "{origin}: services: type {:?} is not supported (want ssh-multiplexer)",
                s.kind
            );
        }
        multiplexer = Some(dir_of(s.destination, &format!("{origin}: services"))?);
    }
    for o in f.outputs {
        if o.kind != "identity" {
            bail!(
                "{origin}: outputs: type {:?} is not supported (want identity)",
                o.kind
            );
        }
        if o.ssh_config != "on" && o.ssh_config != "off" {
            bail!(
                "{origin}: outputs: ssh_config {:?}: want on or off",
                o.ssh_config
            );
        }
        let dir = dir_of(o.destination, &format!("{origin}: outputs"))?;
        let mode = if multiplexer.as_ref() == Some(&dir) {
            Mode::Fdpass
        } else {
            Mode::Stdio
        };
        outputs.push(Output {
            dir,
            roles: o.roles,
            mode,
            bare_names: o.bare_names,
        });
    }
    let trust = if f.insecure {
        Trust::Insecure
    } else if let Some(p) = f.ca_path {
        Trust::CaFile(p)
    } else {
        Trust::System
    };
    Ok(BotConfig {
        proxy_server,
        token,
        data_dir,
        outputs,
        certificate_ttl: duration(text, origin, "credential_ttl", f.credential_ttl)?
            .unwrap_or(Duration::from_secs(3600)),
        renewal_interval: duration(text, origin, "renewal_interval", f.renewal_interval)?
            .unwrap_or(Duration::from_secs(20 * 60)),
        oneshot: f.oneshot,
        trust,
        multiplexer,
        diag_addr: None,
        max_channels: 100,
        transport: f.transport,
        route_flags: RouteFlags::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version: v2
proxy_server: proxy.example.com:443
onboarding:
  join_method: token
  token: abc
storage:
  type: directory
  path: /var/lib/idmux
outputs:
  - type: identity
    destination:
      type: directory
      path: /opt/machine-id
    roles: [access]
credential_ttl: 30m
renewal_interval: 10m
";

    #[test]
    fn parses_tbot_v2() {
        let c = parse_yaml(GOOD, "bot.yaml").unwrap();
        assert_eq!(c.proxy_server, "proxy.example.com:443");
        assert_eq!(c.token.as_deref(), Some("abc"));
        assert_eq!(c.outputs[0].roles, vec!["access".to_string()]);
        assert_eq!(c.certificate_ttl, Duration::from_secs(1800));
        assert_eq!(c.renewal_interval, Duration::from_secs(600));
        assert_eq!(c.transport, TransportKind::Auto);
    }

    #[test]
    fn transport_key() {
        let c = parse_yaml(&format!("{GOOD}transport: ssh\n"), "b").unwrap();
        assert_eq!(c.transport, TransportKind::Ssh);
        let c = parse_yaml(&format!("{GOOD}transport: grpc\n"), "b").unwrap();
        assert_eq!(c.transport, TransportKind::Grpc);
        let e = parse_yaml(&format!("{GOOD}transport: quic\n"), "b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("quic") && e.contains("line 17"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let bad = GOOD.replace("    roles: [access]", "    rolez: [access]");
        let e = parse_yaml(&bad, "bot.yaml").unwrap_err().to_string();
        assert!(e.contains("rolez") && e.contains("line 14"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse_yaml(&GOOD.replace("30m", "thirty"), "bot.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("credential_ttl") && e.contains("thirty") && e.contains("line 15"),
            "{e}"
        );
        let e = parse_yaml(&GOOD.replace("join_method: token", "join_method: iam"), "b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("iam"), "{e}");
        let e = parse_yaml(&GOOD.replace("version: v2", "version: v1"), "b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("v1"), "{e}");
    }
}
