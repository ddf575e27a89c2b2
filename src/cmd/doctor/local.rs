//! Checks of this machine: the OpenSSH client, the destination dir's files and modes, the
//! identity in it and its certificate's time left.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::UNIX_EPOCH;

use anyhow::{anyhow, bail, Result};
use russh::keys::ssh_key::Certificate;

use idmux_identity::{rfc3339, unix_now, Identity, KeyPair};

use super::parse::*;
use super::{check, Check, Status};

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

pub(super) fn check_openssh(id: Option<&Identity>, fdpass: bool) -> Check {
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

/// Is `dir` a multiplexer's dir that keeps its identity in memory (tbot's ssh-multiplexer,
/// or idmux's service of that type): an fdpass ssh_config with no key files beside it?
pub(super) fn is_multiplexer_dir(dir: &Path, fdpass: bool) -> bool {
    fdpass && mode_of(&dir.join("identity")).is_none() && mode_of(&dir.join("key")).is_none()
}

/// The files an identity output holds (tbot's artifacts and `Describe`), the ssh_config's
/// own when it has one, and a multiplexer dir's.
fn needed_files(mux_dir: bool, has_ssh_config: bool, fdpass: bool) -> Vec<&'static str> {
    use idmux_identity::destination::{IDENTITY_FILES, MUX_SOCKETS, SSH_FILES};
    let mut need: Vec<&str> = if mux_dir {
        vec![]
    } else {
        IDENTITY_FILES.to_vec()
    };
    if has_ssh_config || mux_dir {
        need.extend(SSH_FILES);
    }
    if fdpass {
        need.extend(MUX_SOCKETS);
    }
    need
}

/// Every program the ssh_config's ProxyCommands run exists and may be run (a moved or
/// removed binary fails every ssh with only "Connection closed by UNKNOWN port 65535").
pub(super) fn check_commands(ssh_config: &str) -> Check {
    const N: &str = "commands";
    let progs = super::parse::proxy_command_programs(ssh_config);
    if progs.is_empty() {
        return check(Status::Warn, N, "the ssh_config runs no ProxyCommand");
    }
    let mut bad = Vec::new();
    for p in &progs {
        let path = Path::new(p);
        match std::fs::metadata(path) {
            Err(e) => bad.push(format!("{p}: {e}")),
            Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => {
                bad.push(format!("{p}: not an executable file"))
            }
            Ok(_) if !path.is_absolute() => bad.push(format!("{p}: not an absolute path")),
            Ok(_) => {}
        }
    }
    if bad.is_empty() {
        check(
            Status::Ok,
            N,
            format!("ProxyCommand runs {}", progs.join(", ")),
        )
    } else {
        check(
            Status::Fail,
            N,
            format!(
                "the ssh_config's ProxyCommand cannot run {} (regenerate it with `idmux ssh-config`, or restart the bot)",
                bad.join("; ")
            ),
        )
    }
}

pub(super) fn check_files(dir: &Path, fdpass: bool) -> Check {
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
    let mux_dir = is_multiplexer_dir(dir, fdpass);
    // An identity output written with `ssh_config: off` has neither file; one of them alone
    // is a broken dir.
    let has_ssh_config = mode_of(&dir.join("ssh_config")).is_some()
        || mode_of(&dir.join("known_hosts")).is_some()
        || mode_of(&dir.join("identity")).is_none();
    let need = needed_files(mux_dir, has_ssh_config, fdpass);
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
        let what = if mux_dir {
            "a multiplexer's dir (its identity is in memory, served on agent.sock)"
        } else {
            "key and identity owner-only"
        };
        check(
            Status::Ok,
            N,
            format!("{n} files present; {what}; {} {:04o}", dir.display(), dmode),
        )
    } else {
        check(Status::Fail, N, problems.join("; "))
    }
}

/// The identity of the dir and the `key` + `key-cert.pub` pair.
pub(super) fn check_identity(dir: &Path) -> (Check, Option<Identity>, Option<Certificate>) {
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
        let key = KeyPair::from_pem(&idmux_identity::fsutil::read_string(&dir.join("key"))?)
            .map_err(|e| anyhow!("{}: {e:#}", dir.join("key").display()))?;
        let text = idmux_identity::fsutil::read_string(&dir.join("key-cert.pub"))?;
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

pub(super) fn check_certificate(id: &Identity, cert: &Certificate) -> Check {
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
