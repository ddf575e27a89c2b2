//! The identity a bot holds, and the files tbot keeps it in (PROTOCOL.md section 7).
//!
//! - `identity` (tsh identity file), in order: private key PEM; SSH cert line; TLS cert PEM;
//!   `@cert-authority <cluster>,*.<cluster> <alg> <b64> type=host` lines; TLS CA PEM blocks.
//!   Parsed as Teleport parses it: PEM blocks in order (first = key, second = TLS cert, rest =
//!   CAs), the SSH cert by its `-cert-v01@openssh.com` type, CA lines by `@cert-authority`.
//! - Destination dir: `key`, `key.pub`, `key-cert.pub`, `tlscert`, `identity`,
//!   `teleport-{host,user,database}-ca.crt`.
//! - Data dir: `key`, `key.pub`, `key-cert.pub`, `tlscert`, `sshcacerts` and `tlscacerts`
//!   (entries joined with `$`), `tokenhash` (hex sha256 of the join token).
//!
//! Parsing is pure (text in, value or error out); the error names the part at fault and the
//! caller adds the file name. Each dir's files are written as one set ([`crate::fsutil::FileSet`]).

use std::path::Path;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context, Result};
use russh::keys::ssh_key::{Certificate, PublicKey};
use sha2::Digest;

use crate::fsutil::{self, FileSet, PRIVATE, PUBLIC};
use crate::keys::{ssh_key_data_from_spki, KeyPair};
use crate::tlsid::TlsIdentity;
use crate::x509 as ca;

/// A host CA key trusted for a cluster (one `@cert-authority` line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCa {
    pub cluster: String,
    pub key: PublicKey,
}

impl HostCa {
    /// The line as the identity file and Teleport's `ssh_ca_certs` carry it.
    pub fn authorized_hosts_line(&self) -> Result<String> {
        let c = &self.cluster;
        Ok(format!(
            "@cert-authority {c},*.{c} {} type=host",
            key_text(&self.key)?
        ))
    }

    /// Parse one entry of `proto.Certs.ssh_ca_certs` or a data dir's `sshcacerts`: a bare
    /// authorized_keys public key (what Teleport sends; it names no cluster, so the key is
    /// taken as `cluster`'s) or an `@cert-authority` line (what idmux wrote before).
    pub fn parse_entry(entry: &str, cluster: &str) -> Result<HostCa> {
        let t = entry.trim();
        if t.starts_with("@cert-authority") {
            return HostCa::parse_line(t);
        }
        check_cluster_name(cluster)?;
        let mut key = PublicKey::from_openssh(t)
            .map_err(|e| anyhow!("not an SSH public key or @cert-authority line: {e}"))?;
        // The trusted key is its algorithm and data; a comment is no part of it and is not
        // written back (found by the fuzz target `data_dir`: the same CA read twice compared
        // unequal).
        key.set_comment("");
        Ok(HostCa {
            cluster: cluster.to_string(),
            key,
        })
    }

    /// The bare public key as an authorized_keys line (no comment, no newline), as Teleport
    /// sends CA keys and tbot stores them in `sshcacerts`.
    pub fn bare_line(&self) -> Result<String> {
        key_text(&self.key)
    }

    /// Parse an `@cert-authority <patterns> <alg> <b64> [comment]` line. The cluster is the
    /// first pattern that is not a wildcard.
    pub fn parse_line(line: &str) -> Result<HostCa> {
        let mut f = line.split_whitespace();
        if f.next() != Some("@cert-authority") {
            bail!("not an @cert-authority line");
        }
        let patterns = f
            .next()
            .ok_or_else(|| anyhow!("@cert-authority line has no host patterns"))?;
        let alg = f
            .next()
            .ok_or_else(|| anyhow!("@cert-authority line has no key"))?;
        let b64 = f
            .next()
            .ok_or_else(|| anyhow!("@cert-authority line has no key data"))?;
        let key = PublicKey::from_openssh(&format!("{alg} {b64}"))
            .map_err(|e| anyhow!("@cert-authority line has a bad key: {e}"))?;
        let cluster = patterns
            .split(',')
            .rev()
            .find(|p| !p.contains('*') && !p.starts_with('!'))
            .unwrap_or("")
            .to_string();
        Ok(HostCa { cluster, key })
    }
}

/// A cluster name that can stand in a known_hosts host pattern (`@cert-authority c,*.c`):
/// not empty, no whitespace or control character, none of `*?,!|[]`. A name from a
/// certificate that is anything else (found by the fuzz targets `grpc_certs` and `web_json`:
/// `seed*test`, a name holding a backspace) would widen the hosts the CA is trusted for, or
/// write a line that does not read back.
pub fn check_cluster_name(name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("the cluster name is empty");
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "*?,!|[]".contains(*c))
    {
        bail!("cluster name {name:?} has {c:?}, which a known_hosts host pattern cannot hold");
    }
    Ok(())
}

/// `alg b64` of a public key, without comment.
pub(crate) fn key_text(k: &PublicKey) -> Result<String> {
    let mut k = k.clone();
    k.set_comment("");
    Ok(k.to_openssh()?)
}

/// A complete identity: key, SSH and TLS certificates, and the CAs to trust.
#[derive(Clone, Debug)]
pub struct Identity {
    pub key: KeyPair,
    pub ssh_cert: Certificate,
    pub tls_cert_pem: String,
    /// Trusted SSH CA keys. An output's: the host CAs of every cluster (the CA resources),
    /// which its identity file and known_hosts list. The bot's own: the keys Auth sent with its
    /// certificates (user CA then host CA, bare keys, taken as its own cluster's), which
    /// check the proxy's host certificate.
    pub host_cas: Vec<HostCa>,
    /// Trusted TLS CA certs (PEM blocks): in destination dirs the host CAs, which the proxy
    /// and auth certificates chain to; in the data dir what Auth sent (user CA, host CA).
    pub tls_cas: Vec<String>,
}

impl Identity {
    /// Check that the parts belong together: the SSH and TLS certs are for this key.
    pub fn check_consistent(&self) -> Result<()> {
        if !self.key.matches_ssh(self.ssh_cert.public_key()) {
            bail!("the private key does not match the SSH certificate");
        }
        let cert = ca::parse_cert_pem(&self.tls_cert_pem)
            .map_err(|e| anyhow!("bad TLS certificate: {e}"))?;
        let spki = der::Encode::to_der(&cert.tbs_certificate.subject_public_key_info)?;
        let tls_key = ssh_key_data_from_spki(&spki).map_err(|e| anyhow!("TLS certificate: {e}"))?;
        if !self.key.matches_ssh(&tls_key) {
            bail!("the private key does not match the TLS certificate");
        }
        Ok(())
    }

    /// The Teleport identity in the TLS certificate.
    pub fn tls_identity(&self) -> Result<TlsIdentity> {
        let cert = ca::parse_cert_pem(&self.tls_cert_pem)?;
        TlsIdentity::from_name(&cert.tbs_certificate.subject)
    }

    /// The cluster that issued this identity (TLS issuer O, as tbot reads it).
    pub fn cluster_name(&self) -> Result<String> {
        let cert = ca::parse_cert_pem(&self.tls_cert_pem)?;
        if let Some(c) = ca::issuer_cluster(&cert) {
            return Ok(c);
        }
        let id = TlsIdentity::from_name(&cert.tbs_certificate.subject)?;
        if !id.teleport_cluster.is_empty() {
            return Ok(id.teleport_cluster);
        }
        bail!("the TLS certificate names no cluster")
    }

    /// The cluster named by a flag, else the identity's own (the error names `file`).
    pub fn cluster_or(&self, flag: Option<String>, file: &Path) -> Result<String> {
        match flag {
            Some(c) => Ok(c),
            None => self.cluster_name().with_context(|| {
                format!(
                    "{}: cannot tell the cluster; pass --cluster",
                    file.display()
                )
            }),
        }
    }

    /// When the identity stops being valid (the earlier of the two certificates).
    pub fn expires(&self) -> Result<SystemTime> {
        let cert = ca::parse_cert_pem(&self.tls_cert_pem)?;
        let tls = cert.tbs_certificate.validity.not_after.to_system_time();
        let ssh = self.ssh_cert.valid_before_time().unwrap_or(tls);
        Ok(tls.min(ssh))
    }

    /// Render the tsh `identity` file.
    pub fn to_identity_file(&self) -> Result<String> {
        let mut out = String::new();
        let mut push = |s: &str| {
            out.push_str(s);
            if !s.ends_with('\n') {
                out.push('\n');
            }
        };
        push(&self.key.to_pem()?);
        push(&self.ssh_cert.to_openssh()?);
        push(&self.tls_cert_pem);
        for ca in &self.host_cas {
            push(&ca.authorized_hosts_line()?);
        }
        for c in &self.tls_cas {
            push(c);
        }
        Ok(out)
    }

    /// Parse a tsh `identity` file.
    pub fn parse_identity_file(text: &str) -> Result<Identity> {
        let mut pems: Vec<String> = Vec::new();
        let mut ssh_cert_line = None;
        let mut host_cas = Vec::new();
        let mut cur: Option<(String, String)> = None; // (label, text)
        for (n, line) in text.lines().enumerate() {
            let lineno = n + 1;
            if let Some((label, buf)) = cur.as_mut() {
                buf.push_str(line);
                buf.push('\n');
                if line.trim() == format!("-----END {label}-----") {
                    pems.push(cur.take().unwrap().1);
                } else if line.starts_with("-----") {
                    bail!("line {lineno}: PEM block {label:?} is not closed");
                }
                continue;
            }
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            if let Some(label) = t
                .strip_prefix("-----BEGIN ")
                .and_then(|l| l.strip_suffix("-----"))
            {
                cur = Some((label.to_string(), format!("{t}\n")));
            } else if t.starts_with("@cert-authority") {
                host_cas.push(HostCa::parse_line(t).with_context(|| format!("line {lineno}"))?);
            } else if t
                .split_whitespace()
                .next()
                .is_some_and(|w| w.ends_with("-cert-v01@openssh.com"))
            {
                if ssh_cert_line.is_some() {
                    bail!("line {lineno}: a second SSH certificate");
                }
                ssh_cert_line = Some(t.to_string());
            } else {
                bail!("line {lineno}: unexpected content (not PEM, an SSH certificate or @cert-authority)");
            }
        }
        if let Some((label, _)) = cur {
            bail!("truncated: PEM block {label:?} has no END line");
        }
        let mut pems = pems.into_iter();
        let key_pem = pems
            .next()
            .ok_or_else(|| anyhow!("truncated: no private key"))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| anyhow!("private key: {e}"))?;
        let ssh_line = ssh_cert_line.ok_or_else(|| anyhow!("truncated: no SSH certificate"))?;
        let ssh_cert =
            Certificate::from_openssh(&ssh_line).map_err(|e| anyhow!("SSH certificate: {e}"))?;
        let tls_cert_pem = pems
            .next()
            .ok_or_else(|| anyhow!("truncated: no TLS certificate"))?;
        if !tls_cert_pem.starts_with("-----BEGIN CERTIFICATE-----") {
            bail!("TLS certificate: expected a CERTIFICATE PEM block as the second block");
        }
        ca::parse_cert_pem(&tls_cert_pem).map_err(|e| anyhow!("TLS certificate: {e}"))?;
        let tls_cas: Vec<String> = pems.collect();
        for (i, c) in tls_cas.iter().enumerate() {
            ca::parse_cert_pem(c).map_err(|e| anyhow!("TLS CA certificate {}: {e}", i + 1))?;
        }
        let id = Identity {
            key,
            ssh_cert,
            tls_cert_pem,
            host_cas,
            tls_cas,
        };
        id.check_consistent()?;
        Ok(id)
    }

    /// Read and parse `path` as an identity file; errors name the file.
    pub(crate) fn read_identity_file(path: &Path) -> Result<Identity> {
        let text = fsutil::read_string(path)?;
        Identity::parse_identity_file(&text).map_err(|e| anyhow!("{}: {e:#}", path.display()))
    }

    /// Load the identity of a destination dir (its `identity` file).
    pub fn load_destination(dir: &Path) -> Result<Identity> {
        Identity::read_identity_file(&dir.join("identity"))
    }

    /// Write the identity artifacts of a destination dir as one set: `identity`, `key`,
    /// `key.pub`, `key-cert.pub` and `tlscert`.
    pub fn write_destination_files(&self, dir: &Path) -> Result<()> {
        fsutil::ensure_private_dir(dir)?;
        let mut set = FileSet::new(dir);
        self.add_destination_files(&mut set)?;
        set.commit().map(|_| ())
    }

    /// Add the identity artifacts of a destination dir to `set` (see
    /// [`Identity::write_destination_files`]).
    pub fn add_destination_files(&self, set: &mut FileSet) -> Result<()> {
        self.check_consistent()?;
        self.add_key_and_certs(set)?;
        set.add("identity", self.to_identity_file()?, PRIVATE);
        Ok(())
    }

    /// `key`, `key-cert.pub`, `tlscert` and `key.pub` (shared by both dir kinds), the key and
    /// its certificates first: they are renamed into place back to back, so a reader that opens
    /// `key` and then `key-cert.pub` sees a pair from two writes only if its two opens straddle
    /// those two renames (microseconds; the identity file and the agent socket have no window).
    fn add_key_and_certs(&self, set: &mut FileSet) -> Result<()> {
        set.add("key", self.key.to_pem()?, PRIVATE)
            .add(
                "key-cert.pub",
                format!("{}\n", self.ssh_cert.to_openssh()?),
                PUBLIC,
            )
            .add("tlscert", self.tls_cert_pem.as_bytes(), PUBLIC)
            .add("key.pub", self.key.ssh_authorized_key()?, PUBLIC);
        Ok(())
    }

    /// Write the identity as a bot's data dir holds it, as one set (tbot's file names; see
    /// [`fsutil::FileSet`]): a crash at any point leaves the old identity or the new one,
    /// whole, once the next start has run [`fsutil::recover`]. Returns when the new identity
    /// became durable.
    pub fn write_data_dir(&self, dir: &Path, token: Option<&str>) -> Result<std::time::Instant> {
        self.check_consistent()?;
        fsutil::ensure_private_dir(dir)?;
        let mut set = FileSet::new(dir);
        self.add_key_and_certs(&mut set)?;
        // As tbot: the bare keys Auth sent, each with its newline, joined with `$`.
        let ssh_cas: Vec<String> = self
            .host_cas
            .iter()
            .map(|c| Ok(format!("{}\n", c.bare_line()?)))
            .collect::<Result<_>>()?;
        set.add("sshcacerts", ssh_cas.join("$"), PUBLIC).add(
            "tlscacerts",
            self.tls_cas.join("$"),
            PUBLIC,
        );
        if let Some(t) = token {
            set.add("tokenhash", token_hash(t), PRIVATE);
        }
        set.commit()
    }

    /// Read a bot's data dir: its five files, then [`Identity::parse_data_dir`].
    pub fn read_data_dir(dir: &Path) -> Result<Identity> {
        let read = |name: &str| fsutil::read_string(&dir.join(name));
        let files = DataDirFiles {
            key: read("key")?,
            key_cert: read("key-cert.pub")?,
            tlscert: read("tlscert")?,
            sshcacerts: read("sshcacerts")?,
            tlscacerts: read("tlscacerts")?,
        };
        Identity::parse_data_dir(dir, &files)
    }

    /// The identity in a bot data dir's files, pure (no I/O: `dir` only names the files in
    /// errors). Each error names the file at fault.
    pub fn parse_data_dir(dir: &Path, files: &DataDirFiles) -> Result<Identity> {
        let at = |name: &str, e: anyhow::Error| anyhow!("{}: {e:#}", dir.join(name).display());
        let key = KeyPair::from_pem(&files.key).map_err(|e| at("key", e))?;
        // One line: what follows a line break would be taken into the certificate's comment
        // and written back as lines no reader takes (found by the fuzz target `data_dir`).
        if files.key_cert.trim().contains(['\n', '\r']) {
            return Err(at("key-cert.pub", anyhow!("more than one line")));
        }
        let ssh_cert = Certificate::from_openssh(files.key_cert.trim())
            .map_err(|e| at("key-cert.pub", e.into()))?;
        let tls_cert_pem = files.tlscert.clone();
        let cert = ca::parse_one_cert_pem(&tls_cert_pem).map_err(|e| at("tlscert", e))?;
        let cluster = ca::issuer_cluster(&cert).unwrap_or_default();
        let host_cas = split_dollar(&files.sshcacerts)
            .map(|e| HostCa::parse_entry(e, &cluster))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| at("sshcacerts", e))?;
        let tls_cas: Vec<String> = split_dollar(&files.tlscacerts)
            .map(|s| format!("{}\n", s.trim_end()))
            .collect();
        for c in &tls_cas {
            ca::parse_one_cert_pem(c).map_err(|e| at("tlscacerts", e))?;
        }
        let id = Identity {
            key,
            ssh_cert,
            tls_cert_pem,
            host_cas,
            tls_cas,
        };
        id.check_consistent()
            .map_err(|e| anyhow!("{}: {e:#}", dir.display()))?;
        Ok(id)
    }
}

/// The texts of a bot data dir's files, as [`Identity::parse_data_dir`] reads them.
#[derive(Clone, Debug, Default)]
pub struct DataDirFiles {
    /// `key`: the private key, PEM.
    pub key: String,
    /// `key-cert.pub`: the SSH certificate.
    pub key_cert: String,
    /// `tlscert`: the TLS certificate, PEM.
    pub tlscert: String,
    /// `sshcacerts`: host CA entries, `$`-separated.
    pub sshcacerts: String,
    /// `tlscacerts`: CA certificates, PEM, `$`-separated.
    pub tlscacerts: String,
}

fn split_dollar(s: &str) -> impl Iterator<Item = &str> {
    s.split('$').map(str::trim).filter(|p| !p.is_empty())
}

/// hex(sha256(token)), as tbot's `tokenhash`.
pub fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Write the three TLS CA files of a destination dir.
pub fn write_ca_files(dir: &Path, host: &[String], user: &[String], db: &[String]) -> Result<()> {
    let mut set = FileSet::new(dir);
    add_ca_files(&mut set, host, user, db);
    set.commit().map(|_| ())
}

/// Add the three TLS CA files of a destination dir to `set`.
pub fn add_ca_files(set: &mut FileSet, host: &[String], user: &[String], db: &[String]) {
    for (name, certs) in [
        ("teleport-host-ca.crt", host),
        ("teleport-user-ca.crt", user),
        ("teleport-database-ca.crt", db),
    ] {
        let mut s = String::new();
        for c in certs {
            s.push_str(c.trim_end());
            s.push('\n');
        }
        set.add(name, s, PUBLIC);
    }
}

/// Split concatenated PEM certificates into blocks.
pub fn split_pem_certs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            cur.clear();
        }
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END ") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

#[cfg(test)]
mod read_tests {
    use super::*;

    /// A host CA entry's comment is dropped, as `parse_line` drops it, so an entry reads the
    /// same whether it came with a comment or not, and reads back as it was written.
    #[test]
    fn a_host_ca_entry_comment_is_no_part_of_the_key() {
        let bare =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILMa0ahsJldgGX0ZhZHCjXLXIi9cFQn6YakzhAAHBXoG";
        let with = format!("{bare} KEYQwpjc7a");
        let a = HostCa::parse_entry(&with, "seed.test").unwrap();
        assert_eq!(a, HostCa::parse_entry(bare, "seed.test").unwrap());
        let back = HostCa::parse_line(&a.authorized_hosts_line().unwrap()).unwrap();
        assert_eq!(back, a);
    }

    /// A data dir whose `key-cert.pub` runs over more than one line (the input the fuzz
    /// target `data_dir` found: the rest became the certificate's comment, written back as
    /// lines no reader takes) is refused, naming the file.
    #[test]
    fn a_certificate_that_would_not_read_back_is_refused() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/regressions/data_dir/tlscert-not-read-back"
        );
        let text = String::from_utf8(std::fs::read(path).unwrap()).unwrap();
        let p: Vec<String> = text.split('\0').map(str::to_string).collect();
        let get = |i: usize| p.get(i).cloned().unwrap_or_default();
        let files = DataDirFiles {
            key: get(0),
            key_cert: get(1),
            tlscert: get(2),
            sshcacerts: get(3),
            tlscacerts: get(4),
        };
        let e = format!(
            "{:#}",
            Identity::parse_data_dir(Path::new("/data"), &files).expect_err("refused")
        );
        assert_eq!(e, "/data/key-cert.pub: more than one line");
    }
}
