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

/// Above this, the shell ssh starts each ProxyCommand with is reported: dash starts in about
/// 1 ms and bash without start-up files in 2-3 ms on a 2-core machine; a `~/.bashrc` that runs
/// pyenv's init took 90-140 ms.
pub(super) const SLOW_SHELL: std::time::Duration = std::time::Duration::from_millis(25);
/// How long one run of the shell may take before the check gives up on it.
const SHELL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The shell ssh runs every ProxyCommand with: `$SHELL -c "exec ..."`, `/bin/sh` when `SHELL`
/// is unset or empty (OpenSSH's `sshconnect.c`).
pub(super) fn proxy_command_shell() -> String {
    std::env::var("SHELL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/sh".to_string())
}

/// Time `shell -c 'exit 0'` as ssh starts a ProxyCommand: stdin a socket with `ProxyUseFdpass`
/// (bash then reads `~/.bashrc`, taking itself for a shell started by rshd), a pipe otherwise.
/// The median of three runs is what every connection pays before its ProxyCommand starts;
/// above `slow` (doctor gives [`SLOW_SHELL`]) it is reported.
pub(super) fn check_shell(shell: &str, fdpass: bool, slow: std::time::Duration) -> Check {
    const N: &str = "shell";
    let stdin_is = if fdpass {
        "stdin a socket, as ssh's ProxyUseFdpass gives it"
    } else {
        "stdin a pipe, as ssh gives a ProxyCommand"
    };
    let mut times = Vec::new();
    for _ in 0..3 {
        match time_shell(shell, fdpass) {
            Ok(t) => times.push(t),
            Err(e) => {
                return check(
                    Status::Warn,
                    N,
                    format!("{shell} -c 'exit 0' ({stdin_is}): {e}"),
                )
            }
        }
    }
    times.sort();
    let median = times[1];
    let ms = median.as_secs_f64() * 1000.0;
    if median <= slow {
        return check(
            Status::Ok,
            N,
            format!("`{shell} -c` starts each ProxyCommand in {ms:.0} ms ({stdin_is})"),
        );
    }
    check(
        Status::Warn,
        N,
        format!(
            "`{shell} -c` takes {ms:.0} ms before each ProxyCommand starts ({stdin_is}), which \
             every connection pays: the shell's start-up files run (bash reads ~/.bashrc when \
             stdin is a socket); make ~/.bashrc return early when not interactive, or run ssh \
             with SHELL=/bin/sh (README: The ProxyCommand's shell)"
        ),
    )
}

/// One run of `shell -c 'exit 0'` with its stdin as ssh would set it, spawn to exit.
fn time_shell(shell: &str, socket: bool) -> Result<std::time::Duration> {
    use std::process::{Command, Stdio};
    let (stdin, _peer): (Stdio, Option<std::os::unix::net::UnixStream>) = if socket {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        (Stdio::from(std::os::fd::OwnedFd::from(a)), Some(b))
    } else {
        (Stdio::piped(), None)
    };
    let t0 = std::time::Instant::now();
    let mut child = Command::new(shell)
        .args(["-c", "exit 0"])
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow!("cannot run it: {e}"))?;
    loop {
        if let Some(st) = child.try_wait()? {
            let took = t0.elapsed();
            if !st.success() {
                bail!("exited with {st}");
            }
            return Ok(took);
        }
        if t0.elapsed() > SHELL_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not exit within {}s", SHELL_DEADLINE.as_secs());
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
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

/// What the dir shows of its last write: `journal` is the committed set's file names when a
/// `.idmux-set` journal stayed in place (Err: it could not be read or parsed), `temps` the
/// temp files that stayed. Both are looked at twice, a moment apart, by [`check_writes`]: a
/// running bot's write leaves them for milliseconds only.
fn writes_verdict(
    dir: &Path,
    journal: Option<Result<Vec<String>, String>>,
    temps: &[String],
) -> Check {
    const N: &str = "writes";
    use idmux_identity::fsutil::JOURNAL;
    let j = dir.join(JOURNAL);
    let mut problems = Vec::new();
    let mut status = Status::Ok;
    match journal {
        None => {}
        Some(Ok(names)) => {
            status = Status::Warn;
            problems.push(format!(
                "{}: a set of {} file(s) ({}) was committed but not all put in place (its writer \
                 stopped mid-write), so the files here may be half from that write; the bot \
                 finishes the set from this journal when it starts",
                j.display(),
                names.len(),
                names.join(", ")
            ));
        }
        Some(Err(e)) => {
            status = Status::Fail;
            problems.push(format!(
                "{}: {e}; the bot refuses to start until a human looks (it was not written \
                 this way by idmux, or was damaged after)",
                j.display()
            ));
        }
    }
    if !temps.is_empty() {
        status = status.max(Status::Warn);
        problems.push(format!(
            "{} temp file(s) left by a writer that was stopped ({}); the bot removes them when \
             it starts",
            temps.len(),
            temps.join(", ")
        ));
    }
    if problems.is_empty() {
        check(
            Status::Ok,
            N,
            "no write left half done (no journal, no temp files)",
        )
    } else {
        check(status, N, problems.join("; "))
    }
}

/// The journal and temp files [`idmux_identity::fsutil`] leaves behind when its writer is
/// killed mid-write. Present in a healthy dir for milliseconds while a bot writes, so what
/// is found is looked at again after `settle`; only what stayed (the same inode and change
/// time) is reported. The wait is the runtime's timer, so doctor's other work is not held.
pub(super) async fn check_writes(dir: &Path, settle: std::time::Duration) -> Check {
    use idmux_identity::fsutil::{is_temp_name, parse_journal, JOURNAL};
    let look = || -> Vec<(String, u64, i64, i64)> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut found: Vec<(String, u64, i64, i64)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                if name != JOURNAL && !is_temp_name(&name) {
                    return None;
                }
                let m = e.metadata().ok()?;
                Some((name, m.ino(), m.ctime(), m.ctime_nsec()))
            })
            .collect();
        found.sort();
        found
    };
    let first = look();
    let stayed = if first.is_empty() {
        first
    } else {
        tokio::time::sleep(settle).await;
        let second = look();
        first.into_iter().filter(|f| second.contains(f)).collect()
    };
    let journal = stayed.iter().any(|f| f.0 == JOURNAL).then(|| {
        std::fs::read(dir.join(JOURNAL))
            .map_err(|e| format!("cannot read it ({e})"))
            .and_then(|b| {
                parse_journal(&b).map_err(|e| format!("not a journal idmux wrote: {e:#}"))
            })
            .map(|files| files.into_iter().map(|f| f.0).collect())
    });
    let temps: Vec<String> = stayed
        .into_iter()
        .map(|f| f.0)
        .filter(|n| n != JOURNAL)
        .collect();
    writes_verdict(dir, journal, &temps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use idmux_identity::fsutil::{encode_journal, JOURNAL};
    use std::time::Duration;

    /// Between a shell that starts at once and one that sleeps [`SLEEP`] first, with a wide
    /// margin either side: the tests run on loaded 2-core machines, where doctor's own 25 ms
    /// can be missed by a plain `/bin/sh`.
    const SLOW: Duration = Duration::from_millis(150);
    const SLEEP: &str = "0.3";

    /// A shell that is slow only when its stdin is a socket, as bash with a heavy ~/.bashrc.
    fn slow_on_a_socket(dir: &Path) -> String {
        let p = dir.join("slowsh");
        std::fs::write(
            &p,
            format!("#!/bin/sh\n[ -S /dev/stdin ] && sleep {SLEEP}\nexec /bin/sh \"$@\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        wait_runnable(&p);
        p.to_string_lossy().into_owned()
    }

    /// Wait until a script just written can be run. A child forked by another test's thread
    /// while the script was open for writing holds that descriptor until it execs, and until
    /// then running the script fails with ETXTBSY ("Text file busy").
    fn wait_runnable(p: &Path) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let run = std::process::Command::new(p)
                .args(["-c", "exit 0"])
                .stdin(std::process::Stdio::null())
                .status();
            match run {
                Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => {
                    assert!(std::time::Instant::now() < deadline, "{}: {e}", p.display());
                    std::thread::sleep(Duration::from_millis(1));
                }
                r => return assert!(r.unwrap().success(), "{}", p.display()),
            }
        }
    }

    /// The race [`wait_runnable`] closes, provoked: three threads spawn processes while
    /// scripts are written and run at once. Without the wait, about 1 run in 100 failed here.
    #[test]
    fn a_script_just_written_runs_while_other_threads_spawn() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let spawners: Vec<_> = (0..3)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = std::process::Command::new("/bin/true").status();
                    }
                })
            })
            .collect();
        let failed: Vec<String> = (0..200)
            .filter_map(|_| {
                let t = tempfile::tempdir().unwrap();
                let sh = slow_on_a_socket(t.path());
                let c = check_shell(&sh, false, SLOW);
                (c.status != Status::Ok).then(|| c.to_string())
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        for s in spawners {
            s.join().unwrap();
        }
        assert!(failed.is_empty(), "{} of 200: {}", failed.len(), failed[0]);
    }

    #[test]
    fn a_shell_slow_with_a_socket_on_stdin_is_reported_for_fdpass_only() {
        let t = tempfile::tempdir().unwrap();
        let sh = slow_on_a_socket(t.path());
        let c = check_shell(&sh, true, SLOW);
        assert_eq!(c.status, Status::Warn, "{c}");
        assert!(
            c.detail.contains(&sh) && c.detail.contains("SHELL=/bin/sh"),
            "{c}"
        );
        let ms: f64 = c
            .detail
            .split(" takes ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(ms >= 290.0, "{c}");
        // The same shell with a pipe on stdin (the stdio ProxyCommand) starts at once.
        let c = check_shell(&sh, false, SLOW);
        assert_eq!(c.status, Status::Ok, "{c}");
    }

    #[test]
    fn a_plain_shell_passes_and_a_missing_one_is_named() {
        let c = check_shell("/bin/sh", true, SLOW);
        assert_eq!(c.status, Status::Ok, "{c}");
        assert!(
            c.detail
                .starts_with("`/bin/sh -c` starts each ProxyCommand in "),
            "{c}"
        );
        let c = check_shell("/nonexistent/sh", true, SLOW);
        assert_eq!(c.status, Status::Warn, "{c}");
        assert!(
            c.detail.starts_with("/nonexistent/sh -c 'exit 0'")
                && c.detail.contains("cannot run it"),
            "{c}"
        );
    }

    #[tokio::test]
    async fn a_clean_dir_has_no_write_left() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("key"), b"k").unwrap();
        let c = check_writes(t.path(), Duration::from_millis(10)).await;
        assert_eq!(c.status, Status::Ok, "{c}");
    }

    #[tokio::test]
    async fn a_journal_and_temp_files_that_stay_are_reported() {
        let t = tempfile::tempdir().unwrap();
        let set = vec![
            ("key".to_string(), b"k".to_vec(), 0o600),
            ("key-cert.pub".to_string(), b"c".to_vec(), 0o644),
        ];
        std::fs::write(t.path().join(JOURNAL), encode_journal(&set)).unwrap();
        std::fs::write(t.path().join(".key.tmp-123-abcd"), b"k").unwrap();
        let c = check_writes(t.path(), Duration::from_millis(10)).await;
        assert_eq!(c.status, Status::Warn, "{c}");
        assert!(
            c.detail.contains("a set of 2 file(s) (key, key-cert.pub)"),
            "{c}"
        );
        assert!(
            c.detail.contains("1 temp file(s)") && c.detail.contains(".key.tmp-123-abcd"),
            "{c}"
        );
    }

    #[tokio::test]
    async fn a_damaged_journal_fails() {
        let t = tempfile::tempdir().unwrap();
        let mut j = encode_journal(&[("key".to_string(), b"k".to_vec(), 0o600)]);
        j.truncate(j.len() - 1);
        std::fs::write(t.path().join(JOURNAL), j).unwrap();
        let c = check_writes(t.path(), Duration::from_millis(10)).await;
        assert_eq!(c.status, Status::Fail, "{c}");
        assert!(c.detail.contains("not a journal idmux wrote"), "{c}");
    }

    #[tokio::test]
    async fn what_a_writer_removes_in_the_meantime_is_not_reported() {
        let t = tempfile::tempdir().unwrap();
        let tmp = t.path().join(".key.tmp-1-ffff");
        std::fs::write(&tmp, b"k").unwrap();
        let remover = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::remove_file(tmp).unwrap();
        });
        let c = check_writes(t.path(), Duration::from_millis(1000)).await;
        remover.join().unwrap();
        assert_eq!(c.status, Status::Ok, "{c}");
    }
}
