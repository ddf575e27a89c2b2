//! The bot's configuration: `tbot start` flags, or tbot's YAML (version v2), as `tbot
//! configure` writes it (`lib/tbot/config/config.go`, `lib/tbot/bot/onboarding/config.go`,
//! `lib/tbot/services/identity/output_config.go`, `lib/tbot/services/ssh/multiplexer_config.go`,
//! `lib/tbot/bot/destination/directory.go`, `lib/tbot/bot/credential_lifetime.go`).
//!
//! Parsing is pure: YAML text in, [`BotConfig`] or an error naming the key and its line out. The
//! CLI (which knows clap) and the bot (which does the work) both build on it; it knows neither.
//! Unknown keys are errors, as tbot's `KnownFields(true)` (serde's `deny_unknown_fields` with
//! serde_norway's line numbers). tbot keys idmux does not carry out are refused with one line
//! saying so, never ignored; tbot's warnings are kept in [`BotConfig::warnings`] for the caller to
//! log.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use idmux_identity::openssh::Mode;
use idmux_transport::auth_direct::FirstTrust;
use idmux_transport::link::TransportKind;
use idmux_transport::route::RouteFlags;
use idmux_transport::web::Trust;

/// tbot's defaults (`DefaultCertificateTTL`, `DefaultRenewInterval`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
pub const DEFAULT_RENEWAL: Duration = Duration::from_secs(20 * 60);
/// tbot's default storage (`storage:` unset).
pub const DEFAULT_STORAGE: &str = "/var/lib/teleport/bot";
/// Teleport's shortest certificate (`apidefaults.MinCertDuration`): Auth never issues less.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Teleport's longest renewable bot certificate (`defaults.MaxRenewableCertTTL`): Auth cuts a
/// longer request to this.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Where tbot's v1-to-v2 guide is.
const MIGRATION_GUIDE: &str = "https://goteleport.com/docs/reference/machine-id/v14-upgrade-guide/";

/// Everything `idmux start` needs.
#[derive(Clone, Debug)]
pub struct BotConfig {
    /// The proxy's address, host:port (empty only when `auth_server` is given).
    pub proxy_server: String,
    /// Auth's address (`--auth-server`, `auth_server`): tbot uses the proxy when both are set.
    pub auth_server: Option<String>,
    pub token: Option<String>,
    /// `sha256:<hex>` pins of the cluster's CA, for a first connection straight to Auth.
    pub ca_pins: Vec<String>,
    /// Where the bot keeps its own renewable identity.
    pub storage: Storage,
    /// Identity outputs, and the in-memory identities of multiplexers without one.
    pub outputs: Vec<Output>,
    /// ssh-multiplexer services.
    pub multiplexers: Vec<Multiplexer>,
    /// The bot identity's lifetime, and every output's that sets none.
    pub lifetime: Lifetime,
    pub oneshot: bool,
    pub trust: Trust,
    /// The diagnostics address (/metrics, /readyz, /livez).
    pub diag_addr: Option<std::net::SocketAddr>,
    /// Channels per upstream connection.
    pub max_channels: usize,
    /// How multiplexers reach nodes.
    pub transport: TransportKind,
    /// TLS routing and the connection upgrade, when the user decides them (else ping and the
    /// upgrade test do).
    pub route_flags: RouteFlags,
    /// `debug: true` in the file.
    pub debug: bool,
    /// What tbot would warn about (a deprecated key, a suboptimal lifetime): logged at start.
    pub warnings: Vec<String>,
}

impl BotConfig {
    /// A configuration with tbot's defaults and nothing to write yet.
    pub fn empty() -> BotConfig {
        BotConfig {
            proxy_server: String::new(),
            auth_server: None,
            token: None,
            ca_pins: vec![],
            storage: Storage::Dir(PathBuf::from(DEFAULT_STORAGE)),
            outputs: vec![],
            multiplexers: vec![],
            lifetime: Lifetime {
                ttl: DEFAULT_TTL,
                renewal: DEFAULT_RENEWAL,
            },
            oneshot: false,
            trust: Trust::System,
            diag_addr: None,
            max_channels: 100,
            transport: TransportKind::Auto,
            route_flags: RouteFlags::default(),
            debug: false,
            warnings: vec![],
        }
    }

    /// Auth's address when Auth is addressed directly: `--auth-server` and no proxy (with
    /// both, the proxy is used, as tbot's `ConnectionConfig`).
    pub fn auth_direct(&self) -> Option<&str> {
        self.auth_server
            .as_deref()
            .filter(|_| self.proxy_server.is_empty())
    }

    /// How the join through Auth addressed directly trusts Auth, as tbot's
    /// `registerThroughAuth`: pins first, then `--ca-path`. tbot joins without checking when
    /// given neither; idmux refuses unless `--insecure` was given.
    pub fn first_trust(&self) -> Result<FirstTrust> {
        if !self.ca_pins.is_empty() {
            return Ok(FirstTrust::Pins(self.ca_pins.clone()));
        }
        match &self.trust {
            Trust::CaFile(p) => Ok(FirstTrust::CaFile(p.clone())),
            Trust::Insecure => Ok(FirstTrust::Insecure),
            _ => bail!(
                "--auth-server {}: nothing to check Auth's certificate with: give --ca-pin (the \
                 pin `idmux cluster bots add` prints, or `tctl status` shows) or --ca-path; \
                 --insecure joins without checking",
                self.auth_server.as_deref().unwrap_or_default()
            ),
        }
    }

    /// The data dir, when the bot's identity is kept on disk.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        match &self.storage {
            Storage::Dir(d) => Some(d),
            Storage::Memory => None,
        }
    }

    /// An output's lifetime: its own, or the bot's.
    pub fn lifetime_of(&self, o: &Output) -> Lifetime {
        o.lifetime.unwrap_or(self.lifetime)
    }

    /// Give each multiplexer an identity: the identity output in its dir when there is one
    /// (idmux's `--destination-dir` in fdpass mode: the output's ssh_config uses the
    /// multiplexer), else an in-memory identity of its own whose dir gets only ssh_config and
    /// known_hosts, as tbot's ssh-multiplexer keeps it.
    pub fn attach_multiplexers(&mut self) {
        for m in &self.multiplexers {
            if let Some(o) = self.outputs.iter_mut().find(|o| o.dir == m.dir) {
                o.mode = Mode::Fdpass;
                o.fdpass_command = m.proxy_command.clone();
                continue;
            }
            self.outputs.push(Output {
                dir: m.dir.clone(),
                roles: vec![],
                mode: Mode::Fdpass,
                bare_names: false,
                lifetime: m.lifetime,
                kind: OutputKind::Multiplexer,
                name: m.name.clone(),
                fdpass_command: m.proxy_command.clone(),
            });
        }
    }

    /// Check the lifetimes as tbot does, and refuse what Teleport would change: a TTL under
    /// [`MIN_TTL`] or over [`MAX_TTL`] (Auth would silently issue something else).
    pub fn check_lifetimes(&mut self) -> Result<()> {
        let mut checks = vec![("credential_ttl".to_string(), self.lifetime)];
        for (i, o) in self.outputs.iter().enumerate() {
            if let Some(l) = o.lifetime {
                checks.push((format!("output {} ({})", i, o.dir.display()), l));
            }
        }
        for (what, l) in checks {
            if l.ttl < MIN_TTL {
                bail!(
                    "{what}: certificate TTL {} is shorter than Teleport issues (at least 1m, \
                     MinCertDuration); ask for 1m or more",
                    humantime::format_duration(l.ttl)
                );
            }
            if l.ttl > MAX_TTL {
                bail!(
                    "{what}: certificate TTL {} is longer than Teleport issues to a bot (at most \
                     24h, MaxRenewableCertTTL); ask for 24h or less",
                    humantime::format_duration(l.ttl)
                );
            }
            if l.renewal.is_zero() {
                bail!("{what}: the renewal interval must be positive");
            }
            if l.renewal >= l.ttl && !self.oneshot {
                // tbot only warns; a bot whose certificates expire before it renews is locked
                // out at the first renewal, so idmux refuses.
                bail!(
                    "{what}: renewal interval {} must be shorter than the certificate TTL {} \
                     (the certificates would expire before they are renewed)",
                    humantime::format_duration(l.renewal),
                    humantime::format_duration(l.ttl)
                );
            }
        }
        Ok(())
    }
}

/// Where the bot's own renewable identity lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// A data dir (`storage: {type: directory}`, `--data-dir`, `--storage file://…`).
    Dir(PathBuf),
    /// Memory only (`storage: {type: memory}`, `--storage memory://`): a restart joins again,
    /// which a one-time token allows only once.
    Memory,
}

/// How long certificates live and how often they are renewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub ttl: Duration,
    pub renewal: Duration,
}

/// What a destination dir gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// tbot's identity output: key, certificates, identity, CA files, and (with `ssh_config:
    /// on`) ssh_config and known_hosts.
    Identity { ssh_config: bool },
    /// A multiplexer's own identity, kept in memory: the dir gets ssh_config and known_hosts.
    Multiplexer,
}

/// One destination dir the bot writes.
#[derive(Clone, Debug)]
pub struct Output {
    pub dir: PathBuf,
    /// Roles to impersonate; empty = the bot role's impersonate list (`GetRole`), as tbot.
    pub roles: Vec<String>,
    pub mode: Mode,
    /// Route bare one-label names to the cluster (idmux's own; see `SshConfigParams`).
    pub bare_names: bool,
    /// The output's own lifetime (`credential_ttl` and `renewal_interval` on the output).
    pub lifetime: Option<Lifetime>,
    pub kind: OutputKind,
    /// The output's or service's `name`, for logs.
    pub name: Option<String>,
    /// The fdpass ProxyCommand's argv prefix (a multiplexer's `proxy_command`), instead of
    /// `idmux-fdpass`.
    pub fdpass_command: Vec<String>,
}

impl Output {
    /// An identity output in `dir` with defaults.
    pub fn identity(dir: PathBuf, mode: Mode) -> Output {
        Output {
            dir,
            roles: vec![],
            mode,
            bare_names: false,
            lifetime: None,
            kind: OutputKind::Identity { ssh_config: true },
            name: None,
            fdpass_command: vec![],
        }
    }
}

/// One ssh-multiplexer service.
#[derive(Clone, Debug)]
pub struct Multiplexer {
    pub dir: PathBuf,
    pub name: Option<String>,
    pub lifetime: Option<Lifetime>,
    /// tbot's `proxy_command`: the argv prefix written into ssh_config (socket path and target
    /// appended), e.g. `[/usr/local/bin/fdpass-teleport]`. Empty = `idmux-fdpass`.
    pub proxy_command: Vec<String>,
    /// tsh's config file whose `proxy_templates` rewrite targets.
    pub proxy_templates_path: Option<PathBuf>,
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

/// A destination as a URI (`--destination`, `--storage`, `--data-dir`; tbot's
/// `DestinationFromURI`): `file:///path` or a bare path is a directory, `memory://` is memory.
pub fn destination_uri(uri: &str, flag: &str) -> Result<Storage> {
    if let Some(rest) = uri.strip_prefix("file://") {
        if !rest.starts_with('/') {
            bail!(
                "{flag} {uri}: file-backed data storage must be on the local host (file:///path)"
            );
        }
        return Ok(Storage::Dir(PathBuf::from(rest)));
    }
    if let Some(rest) = uri.strip_prefix("memory://") {
        if !rest.is_empty() {
            bail!(
                "{flag} {uri}: memory-backed data storage should not have host or path specified"
            );
        }
        return Ok(Storage::Memory);
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        bail!(
            "{flag} {uri}: unrecognized data storage scheme {scheme:?} (idmux takes file:// and \
             memory://)"
        );
    }
    if uri.is_empty() {
        bail!("{flag}: the path is empty");
    }
    Ok(Storage::Dir(PathBuf::from(uri)))
}

/// A duration as Go prints it (`1h0m0s`, `20m0s`, `30s`), as `tbot configure` writes them.
pub fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

/// The file, key for key as `tbot configure` writes it (field order is tbot's).
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileV2 {
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onboarding: Option<Onboarding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Destination>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<FileService>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<FileService>,
    #[serde(default)]
    pub debug: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_ttl: Option<String>,
    /// tbot's deprecated name for `credential_ttl`.
    #[serde(default, skip_serializing)]
    pub certificate_ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_interval: Option<String>,
    #[serde(default)]
    pub oneshot: bool,
    #[serde(default)]
    pub fips: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diag_addr: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// idmux's own (tbot has none): CA certificates (PEM) the proxy's web certificate must chain
    /// to. tbot's is `onboarding.ca_path`, which idmux also takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_path: Option<PathBuf>,
    /// idmux's own key (tbot has none): the node transport, auto|grpc|ssh.
    #[serde(default, skip_serializing_if = "is_auto")]
    pub transport: TransportKind,
}

fn is_auto(t: &TransportKind) -> bool {
    *t == TransportKind::Auto
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Onboarding {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_pins: Vec<String>,
    #[serde(default)]
    pub join_method: String,
}

#[derive(Deserialize, Serialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlinks: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acls: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<Reader>,
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Reader {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl Destination {
    /// A directory destination with tbot's defaults as `configure` prints them.
    pub fn directory(path: PathBuf) -> Destination {
        Destination {
            kind: "directory".into(),
            path: Some(path),
            symlinks: Some("secure".into()),
            acls: Some("try".into()),
            readers: vec![],
        }
    }

    pub fn memory() -> Destination {
        Destination {
            kind: "memory".into(),
            ..Default::default()
        }
    }
}

/// An entry of `outputs:` or `services:` (tbot merges the two lists).
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileService {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    // identity
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_config: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_reissue: bool,
    // ssh-multiplexer
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_resumption: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_templates_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_server: Option<String>,
    // both
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_interval: Option<String>,
    /// idmux's own key (tbot has none): also route bare one-label host names.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bare_names: bool,
}

/// The line of the first line starting with `key:` (for messages), or 0.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(&format!("{key}:"))
        })
        .map(|n| n + 1)
        .unwrap_or(0)
}

/// Parse a duration value of `key`, naming the key and its line on error. Takes Go's form
/// (`1h0m0s`) and humantime's (`1h 30m`).
fn duration(text: &str, origin: &str, key: &str, v: &Option<String>) -> Result<Option<Duration>> {
    let Some(v) = v else { return Ok(None) };
    humantime::parse_duration(v).map(Some).map_err(|e| {
        anyhow!(
            "{origin}: {key}: bad duration {v:?} at line {}: {e}",
            line_of(text, key)
        )
    })
}

/// A per-output lifetime: both keys or neither (tbot's `CredentialLifetime.Validate`).
fn lifetime(text: &str, origin: &str, what: &str, s: &FileService) -> Result<Option<Lifetime>> {
    let ttl = duration(text, origin, "credential_ttl", &s.credential_ttl)?;
    let renewal = duration(text, origin, "renewal_interval", &s.renewal_interval)?;
    match (ttl, renewal) {
        (None, None) => Ok(None),
        (Some(ttl), Some(renewal)) => Ok(Some(Lifetime { ttl, renewal })),
        _ => bail!(
            "{origin}: {what}: credential_ttl and renewal_interval must both be specified if \
             either is"
        ),
    }
}

/// A directory destination's path, refusing what idmux does not do.
fn dir_of(d: &Option<Destination>, origin: &str, what: &str) -> Result<PathBuf> {
    let Some(d) = d else {
        bail!("{origin}: {what}: destination: must be specified");
    };
    if d.kind != "directory" {
        bail!(
            "{origin}: {what}: destination type {:?} is not supported here (want directory)",
            d.kind
        );
    }
    if d.symlinks.as_deref() == Some("insecure") {
        bail!(
            "{origin}: {what}: symlinks: insecure is not supported: idmux never follows a \
             symlink in a destination (use secure or try-secure)"
        );
    }
    if let Some(s) = &d.symlinks {
        if s != "secure" && s != "try-secure" {
            bail!("{origin}: {what}: invalid symlinks mode: {s:?}");
        }
    }
    if let Some(a) = &d.acls {
        if !["off", "try", "required"].contains(&a.as_str()) {
            bail!("{origin}: {what}: invalid acls mode: {a:?}");
        }
    }
    if !d.readers.is_empty() {
        bail!(
            "{origin}: {what}: readers: ACLs managed by the bot are not supported; run \
             `idmux init --destination-dir DIR --reader-user USER` once instead"
        );
    }
    match &d.path {
        Some(p) if !p.as_os_str().is_empty() => Ok(p.clone()),
        _ => bail!("{origin}: {what}: destination path must not be empty"),
    }
}

/// Parse a tbot YAML config. `origin` names the file in errors.
pub fn parse_yaml(text: &str, origin: &str) -> Result<BotConfig> {
    #[derive(Deserialize)]
    struct VersionOnly {
        version: Option<String>,
    }
    let v: VersionOnly = serde_norway::from_str(text)
        .map_err(|e| anyhow!("{origin}: failed parsing config file version: {e}"))?;
    match v.version.as_deref() {
        Some("v2") => {}
        None | Some("v1") => bail!(
            "{origin}: this is a version 1 tbot config (no `version: v2`), which idmux does not \
             read; convert it with `tbot migrate -c {origin} -o NEW.yaml` (see {MIGRATION_GUIDE}) \
             and start idmux with the new file"
        ),
        Some(other) => bail!("{origin}: unrecognized config version {other:?} (want v2)"),
    }
    let f: FileV2 = serde_norway::from_str(text).map_err(|e| anyhow!("{origin}: {e}"))?;
    from_file(f, text, origin)
}

/// The configuration a parsed file describes.
fn from_file(f: FileV2, text: &str, origin: &str) -> Result<BotConfig> {
    let mut c = BotConfig::empty();
    c.debug = f.debug;
    if f.fips {
        bail!("{origin}: fips: {}", FIPS_REFUSAL);
    }
    if f.join_uri.is_some() {
        bail!("{origin}: join_uri is not supported by idmux; give proxy_server and onboarding");
    }
    c.proxy_server = f.proxy_server.unwrap_or_default();
    c.auth_server = f.auth_server.filter(|a| !a.is_empty());
    let mut ca_path = f.ca_path;
    if let Some(o) = f.onboarding {
        if !o.join_method.is_empty() && o.join_method != "token" {
            bail!(
                "{origin}: onboarding.join_method {:?} is not supported (idmux joins with token)",
                o.join_method
            );
        }
        c.token = o.token;
        c.ca_pins = o.ca_pins;
        if o.ca_path.is_some() {
            ca_path = o.ca_path;
        }
    }
    if f.insecure && !c.ca_pins.is_empty() {
        bail!("{origin}: the option ca-pin is mutually exclusive with --insecure");
    }
    if f.insecure && ca_path.is_some() {
        bail!("{origin}: the option ca-path is mutually exclusive with --insecure");
    }
    c.trust = if f.insecure {
        Trust::Insecure
    } else if let Some(p) = ca_path {
        Trust::CaFile(p)
    } else {
        Trust::System
    };
    if let Some(s) = &f.storage {
        c.storage = match s.kind.as_str() {
            "memory" => Storage::Memory,
            _ => Storage::Dir(dir_of(&f.storage, origin, "storage")?),
        };
    }
    if f.certificate_ttl.is_some() {
        c.warnings.push(format!(
            "{origin}: config option certificate_ttl is deprecated; please use credential_ttl \
             instead"
        ));
    }
    let ttl = match duration(text, origin, "credential_ttl", &f.credential_ttl)? {
        Some(t) => Some(t),
        None => duration(text, origin, "certificate_ttl", &f.certificate_ttl)?,
    };
    c.lifetime.ttl = ttl.unwrap_or(DEFAULT_TTL);
    c.lifetime.renewal =
        duration(text, origin, "renewal_interval", &f.renewal_interval)?.unwrap_or(DEFAULT_RENEWAL);
    c.oneshot = f.oneshot;
    if let Some(a) = f.diag_addr.filter(|a| !a.is_empty()) {
        c.diag_addr = Some(a.parse().map_err(|e| {
            anyhow!(
                "{origin}: diag_addr {a:?} at line {}: want ip:port: {e}",
                line_of(text, "diag_addr")
            )
        })?);
    }
    c.transport = f.transport;
    let mut names: Vec<String> = Vec::new();
    for (i, s) in f.outputs.iter().chain(f.services.iter()).enumerate() {
        let what = format!("service[{i}] ({})", s.kind);
        if let Some(n) = &s.name {
            if names.contains(n) {
                bail!("{origin}: {what}: duplicate name: {n:?}");
            }
            names.push(n.clone());
        }
        let life = lifetime(text, origin, &what, s)?;
        match s.kind.as_str() {
            "identity" => {
                if s.cluster.as_deref().is_some_and(|c| !c.is_empty()) {
                    bail!(
                        "{origin}: {what}: cluster: an identity issued for a leaf cluster is not \
                         supported by idmux; remove it (the output reaches leaf clusters' nodes \
                         through the root cluster)"
                    );
                }
                if s.allow_reissue {
                    bail!("{origin}: {what}: allow_reissue: true is not supported by idmux");
                }
                for k in [
                    &s.enable_resumption.map(|_| ()),
                    &s.relay_server.as_ref().map(|_| ()),
                ] {
                    if k.is_some() {
                        bail!("{origin}: {what}: enable_resumption and relay_server belong to an ssh-multiplexer");
                    }
                }
                if s.proxy_templates_path.is_some() || !s.proxy_command.is_empty() {
                    bail!("{origin}: {what}: proxy_command and proxy_templates_path belong to an ssh-multiplexer");
                }
                let ssh_config = match s.ssh_config.as_deref() {
                    None | Some("on") => true,
                    Some("off") => false,
                    Some(v) => bail!("{origin}: {what}: ssh_config: unrecognized value {v:?}"),
                };
                let dir = dir_of(&s.destination, origin, &what)?;
                c.outputs.push(Output {
                    roles: s.roles.clone(),
                    bare_names: s.bare_names,
                    lifetime: life,
                    kind: OutputKind::Identity { ssh_config },
                    name: s.name.clone(),
                    ..Output::identity(dir, Mode::Stdio)
                });
            }
            "ssh-multiplexer" => {
                if !s.roles.is_empty() || s.cluster.is_some() || s.ssh_config.is_some() {
                    bail!("{origin}: {what}: roles, cluster and ssh_config belong to an identity output");
                }
                if s.relay_server.is_some() {
                    bail!("{origin}: {what}: relay_server is not supported by idmux");
                }
                if s.enable_resumption == Some(true) {
                    c.warnings.push(format!(
                        "{origin}: {what}: enable_resumption: idmux's multiplexer does not resume \
                         sessions; connections run without it"
                    ));
                }
                let dir = dir_of(&s.destination, origin, &what)?;
                c.multiplexers.push(Multiplexer {
                    dir,
                    name: s.name.clone(),
                    lifetime: life,
                    proxy_command: s.proxy_command.clone(),
                    proxy_templates_path: s.proxy_templates_path.clone(),
                });
            }
            other => bail!(
                "{origin}: {what}: service type {other:?} is not supported by idmux (identity and \
                 ssh-multiplexer are)"
            ),
        }
    }
    c.attach_multiplexers();
    Ok(c)
}

/// Why `--fips` / `fips: true` is refused.
pub const FIPS_REFUSAL: &str = "FIPS mode is not available: idmux has no FIPS-validated \
     cryptography build (the cluster's fips-v1 signature suite is a different thing, and works)";

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
    fn auth_addressed_directly_and_how_it_is_trusted() {
        let yaml = "version: v2\nauth_server: auth.example.com:3025\nonboarding:\n  token: t\n  ca_pins: [\"sha256:ab\"]\n";
        let mut c = parse_yaml(yaml, "bot.yaml").unwrap();
        assert_eq!(c.auth_direct(), Some("auth.example.com:3025"));
        assert!(matches!(c.first_trust().unwrap(), FirstTrust::Pins(p) if p == ["sha256:ab"]));
        // Pins first, then --ca-path, then --insecure; with none, one line asking for a pin.
        c.ca_pins.clear();
        c.trust = Trust::CaFile("/ca.pem".into());
        assert!(matches!(c.first_trust().unwrap(), FirstTrust::CaFile(_)));
        c.trust = Trust::Insecure;
        assert!(matches!(c.first_trust().unwrap(), FirstTrust::Insecure));
        c.trust = Trust::System;
        let e = c.first_trust().unwrap_err().to_string();
        assert!(
            e.starts_with("--auth-server auth.example.com:3025: nothing to check Auth's certificate with: give --ca-pin")
                && !e.contains('\n'),
            "{e}"
        );
        // With a proxy too, the proxy is used (tbot's ConnectionConfig).
        c.proxy_server = "proxy.example.com:443".into();
        assert_eq!(c.auth_direct(), None);
    }

    #[test]
    fn parses_tbot_v2() {
        let c = parse_yaml(GOOD, "bot.yaml").unwrap();
        assert_eq!(c.proxy_server, "proxy.example.com:443");
        assert_eq!(c.token.as_deref(), Some("abc"));
        assert_eq!(c.outputs[0].roles, vec!["access".to_string()]);
        assert_eq!(c.lifetime.ttl, Duration::from_secs(1800));
        assert_eq!(c.lifetime.renewal, Duration::from_secs(600));
        assert_eq!(c.transport, TransportKind::Auto);
        assert_eq!(c.storage, Storage::Dir("/var/lib/idmux".into()));
    }

    /// tbot's documented multiplexer config: the service alone, no identity output. It gets
    /// an in-memory identity of its own, in fdpass mode.
    #[test]
    fn multiplexer_alone_gets_its_own_identity() {
        let y = "version: v2
proxy_server: proxy.example.com:443
onboarding:
  join_method: token
  token: /var/lib/teleport/bot-token
storage:
  type: memory
services:
  - type: ssh-multiplexer
    destination:
      type: directory
      path: /opt/machine-id
    proxy_command: [/usr/local/bin/fdpass-teleport]
    credential_ttl: 2h0m0s
    renewal_interval: 30m0s
";
        let c = parse_yaml(y, "b").unwrap();
        assert_eq!(c.storage, Storage::Memory);
        assert_eq!(c.multiplexers.len(), 1);
        assert_eq!(c.outputs.len(), 1);
        let o = &c.outputs[0];
        assert_eq!(o.kind, OutputKind::Multiplexer);
        assert_eq!(o.mode, Mode::Fdpass);
        assert_eq!(o.dir, PathBuf::from("/opt/machine-id"));
        assert_eq!(o.fdpass_command, vec!["/usr/local/bin/fdpass-teleport"]);
        assert_eq!(
            c.lifetime_of(o),
            Lifetime {
                ttl: Duration::from_secs(7200),
                renewal: Duration::from_secs(1800)
            }
        );
    }

    /// An identity output and a multiplexer in different dirs, and a second identity output
    /// with its own lifetime.
    #[test]
    fn several_outputs_and_multiplexers() {
        let y = format!(
            "{GOOD}services:
  - type: ssh-multiplexer
    destination:
      type: directory
      path: /opt/mux
  - type: identity
    name: second
    destination:
      type: directory
      path: /opt/second
    ssh_config: \"off\"
    credential_ttl: 10m
    renewal_interval: 5m
"
        );
        let c = parse_yaml(&y, "b").unwrap();
        let kinds: Vec<_> = c.outputs.iter().map(|o| (o.dir.clone(), o.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (
                    "/opt/machine-id".into(),
                    OutputKind::Identity { ssh_config: true }
                ),
                (
                    "/opt/second".into(),
                    OutputKind::Identity { ssh_config: false }
                ),
                ("/opt/mux".into(), OutputKind::Multiplexer),
            ]
        );
        assert_eq!(c.outputs[1].lifetime.unwrap().ttl, Duration::from_secs(600));
    }

    #[test]
    fn v1_config_says_how_to_migrate() {
        for y in ["proxy_server: p:443\n", "version: v1\nauth_server: p:443\n"] {
            let e = parse_yaml(y, "old.yaml").unwrap_err().to_string();
            assert!(e.contains("tbot migrate -c old.yaml"), "{e}");
            assert_eq!(e.lines().count(), 1);
        }
    }

    #[test]
    fn unsupported_tbot_keys_are_named() {
        let cases = [("fips: true\n", "FIPS"), ("join_uri: x\n", "join_uri")];
        for (add, want) in cases {
            let e = parse_yaml(&format!("{GOOD}{add}"), "b")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let e = parse_yaml(
            &GOOD.replace(
                "    roles: [access]",
                "    roles: [access]\n    cluster: leaf",
            ),
            "b",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("leaf cluster"), "{e}");
        let e = parse_yaml(
            &GOOD.replace("  - type: identity", "  - type: database"),
            "b",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"database\" is not supported"), "{e}");
    }

    #[test]
    fn lifetime_pairs_and_limits() {
        let one = GOOD.replace(
            "    roles: [access]",
            "    roles: [access]\n    credential_ttl: 5m",
        );
        let e = parse_yaml(&one, "b").unwrap_err().to_string();
        assert!(e.contains("must both be specified"), "{e}");
        let mut c = parse_yaml(&GOOD.replace("30m", "30s"), "b").unwrap();
        let e = c.check_lifetimes().unwrap_err().to_string();
        assert!(e.contains("30s") && e.contains("at least 1m"), "{e}");
        let mut c = parse_yaml(&GOOD.replace("30m", "48h"), "b").unwrap();
        let e = c.check_lifetimes().unwrap_err().to_string();
        assert!(e.contains("at most 24h"), "{e}");
        let mut c = parse_yaml(GOOD, "b").unwrap();
        c.check_lifetimes().unwrap();
    }

    #[test]
    fn deprecated_certificate_ttl_is_taken_with_a_warning() {
        let c = parse_yaml(&GOOD.replace("credential_ttl", "certificate_ttl"), "b").unwrap();
        assert_eq!(c.lifetime.ttl, Duration::from_secs(1800));
        assert!(c.warnings[0].contains("deprecated"), "{:?}", c.warnings);
    }

    #[test]
    fn uris() {
        assert_eq!(
            destination_uri("file:///opt/x", "--destination").unwrap(),
            Storage::Dir("/opt/x".into())
        );
        assert_eq!(
            destination_uri("/opt/x", "--destination").unwrap(),
            Storage::Dir("/opt/x".into())
        );
        assert_eq!(
            destination_uri("memory://", "--storage").unwrap(),
            Storage::Memory
        );
        for bad in [
            "file://host/x",
            "memory://x",
            "kubernetes-secret://ns/n",
            "",
        ] {
            let e = destination_uri(bad, "--storage").unwrap_err().to_string();
            assert!(e.starts_with("--storage"), "{e}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_secs(1200)), "20m0s");
        assert_eq!(go_duration(Duration::from_secs(30)), "30s");
        for s in [3600, 1200, 30, 5400] {
            let d = Duration::from_secs(s);
            assert_eq!(humantime::parse_duration(&go_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn transport_key() {
        let c = parse_yaml(&format!("{GOOD}transport: ssh\n"), "b").unwrap();
        assert_eq!(c.transport, TransportKind::Ssh);
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
    }
}
