//! A dev cluster node: a real OpenSSH `sshd` on a loopback port.
//!
//! Each node gets its own folder with an Ed25519 host key, a host cert from the cluster's host
//! CA (Teleport's principals), the cluster's user and openssh CA keys in `TrustedUserCAKeys`,
//! and an sshd_config rendered from `ssh/sshd_config.tmpl`. The sshd runs in the foreground as
//! our child and dies with us (SIGTERM on drop, and PDEATHSIG if we are killed).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use russh::keys::ssh_key::LineEnding;

use crate::ca::ClusterCas;
use idmux_identity::fsutil::{self, PRIVATE, PUBLIC};
use idmux_identity::keys::{KeyPair, KeyType};

const SSHD_TMPL: &str = include_str!("../../ssh/sshd_config.tmpl");

/// Where sshd is looked for (Debian's package puts it in /usr/sbin).
pub(crate) fn sshd_path() -> Result<PathBuf> {
    for p in ["/usr/sbin/sshd", "/usr/local/sbin/sshd"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("sshd not found in /usr/sbin or /usr/local/sbin: run scripts/install-deps.sh (installs openssh-server)")
}

/// A running sshd node.
pub struct SshdNode {
    pub name: String,
    pub host_id: String,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    child: Child,
}

/// A free loopback TCP port (bound and released; sshd binds it right after).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl SshdNode {
    /// Prepare `dir` for a node (host key, host cert, trusted CAs, sshd_config) and start sshd.
    pub fn start(cas: &ClusterCas, dir: &Path, name: &str, host_id: &str) -> Result<SshdNode> {
        Self::start_for(cas, cas, dir, name, host_id)
    }

    /// Start a node whose host certificate comes from `host`'s CA and which trusts the user
    /// certificates of `users` (a leaf cluster's node trusts the root's users: the dev
    /// cluster's simpler model of a trusted cluster).
    pub fn start_for(
        host: &ClusterCas,
        users: &ClusterCas,
        dir: &Path,
        name: &str,
        host_id: &str,
    ) -> Result<SshdNode> {
        fsutil::ensure_private_dir(dir)?;
        if let Changed::HostCert(signer) = write_credentials(host, users, dir, name, host_id)? {
            confirm_host_cert(dir, &signer)?;
        }
        let sshd = sshd_path()?;
        // Privilege separation needs /run/sshd when sshd runs as root.
        if nix::unistd::geteuid().is_root() {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            let conf = SSHD_TMPL
                .replace("{{name}}", name)
                .replace("{{listen}}", &addr.to_string())
                .replace("{{dir}}", &dir.display().to_string());
            let conf_path = dir.join("sshd_config");
            fsutil::write_atomic(&conf_path, conf.as_bytes(), PUBLIC)?;
            let log = std::fs::File::create(dir.join("sshd.log"))?;
            let mut cmd = Command::new(&sshd);
            cmd.arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            // SAFETY: the closure runs in the child between fork and exec and only makes the
            // prctl(PR_SET_PDEATHSIG) syscall, which is async-signal-safe and touches no memory
            // shared with the parent.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                        .map_err(std::io::Error::from)
                });
            }
            let mut child = cmd
                .spawn()
                .with_context(|| format!("cannot start {}", sshd.display()))?;
            match wait_listening(&addr, &mut child) {
                Ok(()) => {
                    return Ok(SshdNode {
                        name: name.to_string(),
                        host_id: host_id.to_string(),
                        addr,
                        dir: dir.to_path_buf(),
                        child,
                    })
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = Some(e);
                }
            }
        }
        let log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
        bail!(
            "node {name}: sshd did not start: {:#}; its log says: {}",
            last_err.unwrap(),
            log.lines().last().unwrap_or("(empty)")
        )
    }

    /// Follow a CA change: write the host certificate (from the CA's serving keys) and the
    /// trusted user CA keys (every trusted key, a rotation has two) again, and when either
    /// changed, make sshd reload them (SIGHUP: it re-executes itself) and wait until it listens
    /// again. Sessions in progress are sshd's children and go on.
    pub fn refresh(&mut self, host: &ClusterCas, users: &ClusterCas) -> Result<bool> {
        let signer = match write_credentials(host, users, &self.dir, &self.name, &self.host_id)? {
            Changed::Nothing => return Ok(false),
            Changed::Trust => return Ok(true),
            Changed::HostCert(signer) => signer,
        };
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)
            .with_context(|| format!("node {}: cannot signal sshd", self.name))?;
        // sshd closes its listener and re-executes itself: wait for the old listener to go
        // (probing every 10 ms for at most 200 ms: a re-exec between two probes is missed),
        // then for the new one.
        let gone = Instant::now() + Duration::from_millis(200);
        while Instant::now() < gone
            && TcpStream::connect_timeout(&self.addr, Duration::from_millis(50)).is_ok()
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        wait_listening(&self.addr, &mut self.child)
            .with_context(|| format!("node {}: sshd did not come back after reload", self.name))?;
        confirm_host_cert(&self.dir, &signer)?;
        Ok(true)
    }

    /// Stop sshd and wait for it.
    pub(crate) fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(2));
    }
}

impl Drop for SshdNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM a child, give it `grace` to exit, then SIGKILL it; always reaps it. A child
/// already reaped is left alone: its pid may belong to another process by now.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// What [`write_credentials`] changed.
#[derive(Debug, PartialEq, Eq)]
enum Changed {
    Nothing,
    /// Only the trusted user CA keys: sshd reads `TrustedUserCAKeys` at every authentication.
    Trust,
    /// The host certificate, from another CA key: sshd reads it only when it starts.
    HostCert(String),
}

/// Write a node's host key (kept), host certificate and trusted user CA keys (every trusted
/// key of `users`' user and openssh CAs). The host certificate is issued again when the key
/// serving it (`host`'s) is not the one `host_cert.signer` names; the caller writes that
/// stamp once sshd has loaded the certificate ([`confirm_host_cert`]).
fn write_credentials(
    cas: &ClusterCas,
    users: &ClusterCas,
    dir: &Path,
    name: &str,
    host_id: &str,
) -> Result<Changed> {
    let key_path = dir.join("ssh_host_key");
    let key = if key_path.exists() {
        KeyPair::from_pem(&fsutil::read_string(&key_path)?)
            .with_context(|| key_path.display().to_string())?
    } else {
        let k = KeyPair::generate(KeyType::Ed25519)?;
        // sshd reads OpenSSH-format host keys most reliably.
        let pem = k.to_ssh()?.to_openssh(LineEnding::LF)?;
        fsutil::write_atomic(&key_path, pem.as_bytes(), PRIVATE)?;
        k
    };
    let mut trusted = String::new();
    for line in users
        .user
        .trusted_ssh_lines()?
        .into_iter()
        .chain(users.openssh.trusted_ssh_lines()?)
    {
        trusted.push_str(&line);
        trusted.push('\n');
    }
    let mut changed = Changed::Nothing;
    let trust_path = dir.join("trusted_user_ca.pub");
    if std::fs::read_to_string(&trust_path).ok().as_deref() != Some(trusted.as_str()) {
        fsutil::write_atomic(&trust_path, trusted.as_bytes(), PUBLIC)?;
        changed = Changed::Trust;
    }
    let signer = cas.serving_host_keys().ssh_public_line()?;
    let cert_path = dir.join("ssh_host_key-cert.pub");
    let stamp = std::fs::read_to_string(dir.join("host_cert.signer")).ok();
    if stamp.as_deref() != Some(signer.as_str()) || !cert_path.exists() {
        let cert = cas.issue_ssh_host(
            &key.ssh_public()?,
            host_id,
            name,
            "Node",
            &[],
            Duration::from_secs(365 * 86400),
        )?;
        fsutil::write_atomic(
            &cert_path,
            format!("{}\n", cert.to_openssh()?).as_bytes(),
            PUBLIC,
        )?;
        changed = Changed::HostCert(signer);
    }
    Ok(changed)
}

/// Record that sshd serves a host certificate from `signer`.
fn confirm_host_cert(dir: &Path, signer: &str) -> Result<()> {
    fsutil::write_atomic(&dir.join("host_cert.signer"), signer.as_bytes(), PUBLIC)
}

fn wait_listening(addr: &SocketAddr, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("sshd exited with {status}");
        }
        if TcpStream::connect_timeout(addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("sshd did not listen on {addr} within 5s")
}
