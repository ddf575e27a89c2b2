//! A cluster's certificate authorities and the certificates they issue.
//!
//! Per cluster there are four CAs, as in Teleport: `user`, `host`, `db` and `openssh`. Each has
//! an SSH key (Ed25519, as Teleport's `balanced-v1` suite) and an X.509 CA cert on an ECDSA
//! P-256 key, stored in one folder (private keys 0600, the folder 0700). The dev cluster and the
//! tests use it to issue SSH user and host certificates (PROTOCOL.md section 6) and X.509
//! client and server certificates with Teleport's subject encoding.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use der::asn1::{Ia5String, OctetString};
use der::{Decode, EncodePem};
use russh::keys::ssh_key::{
    certificate::{Builder as SshCertBuilder, CertType},
    Certificate, PublicKey,
};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use idmux_identity::fsutil::{self, PRIVATE, PUBLIC};
use idmux_identity::keys::{KeyPair, KeyType};
use idmux_identity::tlsid::TlsIdentity;
use idmux_identity::x509::parse_cert_pem;
pub use idmux_wire::resources::SignatureAlgorithmSuite as Suite;

/// The kinds of certificate authority a cluster has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaKind {
    User,
    Host,
    Db,
    OpenSsh,
}

impl CaKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            CaKind::User => "user",
            CaKind::Host => "host",
            CaKind::Db => "db",
            CaKind::OpenSsh => "openssh",
        }
    }
}

/// The keys of one CA generation: an SSH signing key and an X.509 CA certificate with its key.
pub struct KeySet {
    pub ssh_key: KeyPair,
    pub tls_key: KeyPair,
    pub tls_cert_pem: String,
    pub tls_cert: x509_cert::Certificate,
}

impl KeySet {
    pub(crate) fn create(cluster: &str, ssh: KeyType, tls: KeyType) -> Result<KeySet> {
        let ssh_key = KeyPair::generate(ssh)?;
        let tls_key = KeyPair::generate(tls)?;
        let subject = Name::from_str(&format!("CN={cluster},O={cluster}"))?;
        let spki = spki_of(&tls_key)?;
        let now = SystemTime::now();
        let validity = validity(
            now - Duration::from_secs(60),
            now + Duration::from_secs(10 * 365 * 86400),
        )?;
        let cert = sign_cert(
            &tls_key,
            CertPlan {
                profile: Profile::Root,
                validity,
                subject,
                spki,
                eku: false,
                sans: vec![],
            },
        )?;
        let tls_cert_pem = cert.to_pem(der::pem::LineEnding::LF)?;
        Ok(KeySet {
            ssh_key,
            tls_key,
            tls_cert_pem,
            tls_cert: cert,
        })
    }

    fn paths(dir: &Path, kind: CaKind, slot: &str) -> [PathBuf; 4] {
        let n = kind.name();
        [
            dir.join(format!("{n}_ca{slot}_ssh.key")),
            dir.join(format!("{n}_ca{slot}_ssh.pub")),
            dir.join(format!("{n}_ca{slot}_tls.key")),
            dir.join(format!("{n}_ca{slot}_tls.crt")),
        ]
    }

    fn save(&self, dir: &Path, kind: CaKind, slot: &str) -> Result<()> {
        let [ssh_key, ssh_pub, tls_key, tls_crt] = Self::paths(dir, kind, slot);
        fsutil::write_atomic(&ssh_key, self.ssh_key.to_pem()?.as_bytes(), PRIVATE)?;
        fsutil::write_atomic(
            &ssh_pub,
            self.ssh_key.ssh_authorized_key()?.as_bytes(),
            PUBLIC,
        )?;
        fsutil::write_atomic(&tls_key, self.tls_key.to_pem()?.as_bytes(), PRIVATE)?;
        fsutil::write_atomic(&tls_crt, self.tls_cert_pem.as_bytes(), PUBLIC)?;
        Ok(())
    }

    fn remove(dir: &Path, kind: CaKind, slot: &str) -> Result<()> {
        for p in Self::paths(dir, kind, slot) {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    bail!("{}: cannot remove: {e}", p.display())
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn load(dir: &Path, kind: CaKind, slot: &str) -> Result<Option<KeySet>> {
        let [ssh_key, _, tls_key, tls_crt] = Self::paths(dir, kind, slot);
        if !ssh_key.exists() && !slot.is_empty() {
            return Ok(None);
        }
        let read_key = |p: &Path| -> Result<KeyPair> {
            KeyPair::from_pem(&fsutil::read_string(p)?).with_context(|| p.display().to_string())
        };
        let ssh_key = read_key(&ssh_key)?;
        let tls_key = read_key(&tls_key)?;
        if tls_key.key_type() == KeyType::Ed25519 {
            bail!(
                "{}: a TLS CA key must be ECDSA P-256 or RSA",
                tls_key_path(dir, kind, slot).display()
            );
        }
        let tls_cert_pem = fsutil::read_string(&tls_crt)?;
        let tls_cert =
            parse_cert_pem(&tls_cert_pem).with_context(|| tls_crt.display().to_string())?;
        Ok(Some(KeySet {
            ssh_key,
            tls_key,
            tls_cert_pem,
            tls_cert,
        }))
    }
}

fn tls_key_path(dir: &Path, kind: CaKind, slot: &str) -> PathBuf {
    KeySet::paths(dir, kind, slot)[2].clone()
}

/// What goes into an X.509 certificate besides its issuer's key.
struct CertPlan {
    profile: Profile,
    validity: Validity,
    subject: Name,
    spki: SubjectPublicKeyInfoOwned,
    /// Leaf certificates: server and client auth.
    eku: bool,
    sans: Vec<GeneralName>,
}

/// Sign a certificate with a CA key of either TLS type: ECDSA P-256 with SHA-256, or RSA
/// PKCS#1 v1.5 with SHA-256 (the `legacy` suite's RSA-2048 CAs).
fn sign_cert(key: &KeyPair, plan: CertPlan) -> Result<x509_cert::Certificate> {
    match key {
        KeyPair::EcdsaP256(k) => {
            build_cert::<_, p256::ecdsa::DerSignature>(&p256::ecdsa::SigningKey::from(k), plan)
        }
        KeyPair::Rsa(k) => build_cert::<_, rsa::pkcs1v15::Signature>(
            &rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new((**k).clone()),
            plan,
        ),
        KeyPair::Ed25519(_) => bail!("a TLS CA key must be ECDSA P-256 or RSA"),
    }
}

fn build_cert<S, Sig>(signer: &S, plan: CertPlan) -> Result<x509_cert::Certificate>
where
    S: rsa::signature::Keypair
        + spki::DynSignatureAlgorithmIdentifier
        + rsa::signature::Signer<Sig>,
    S::VerifyingKey: spki::EncodePublicKey,
    Sig: spki::SignatureBitStringEncoding,
{
    let mut builder = CertificateBuilder::new(
        plan.profile,
        random_serial()?,
        plan.validity,
        plan.subject,
        plan.spki,
        signer,
    )?;
    if plan.eku {
        builder.add_extension(&ExtendedKeyUsage(vec![
            const_oid::db::rfc5280::ID_KP_SERVER_AUTH,
            const_oid::db::rfc5280::ID_KP_CLIENT_AUTH,
        ]))?;
    }
    if !plan.sans.is_empty() {
        builder.add_extension(&SubjectAltName(plan.sans))?;
    }
    Ok(builder.build::<Sig>()?)
}

/// One certificate authority: the active keys (what it signs with) and the additional trusted
/// keys (during a rotation: the next keys in `init`, the previous keys from `update_clients`
/// until `standby`). Reads of the active keys go through `Deref` (`ca.tls_cert_pem`).
pub struct Authority {
    pub kind: CaKind,
    pub active: KeySet,
    pub additional: Option<KeySet>,
    /// The rotation phase: `standby` (no rotation), `init`, `update_clients`, `update_servers`.
    pub phase: String,
}

impl std::ops::Deref for Authority {
    type Target = KeySet;
    fn deref(&self) -> &KeySet {
        &self.active
    }
}

/// The CA key types of a signature algorithm suite (`lib/cryptosuites/suites.go`): SSH CA and
/// TLS CA. Database CAs are RSA-2048 in every suite.
pub fn ca_key_types(suite: Suite, kind: CaKind) -> (KeyType, KeyType) {
    let tls_db = KeyType::Rsa2048;
    let (ssh, tls) = match suite {
        Suite::Legacy | Suite::Unspecified => (KeyType::Rsa2048, KeyType::Rsa2048),
        Suite::BalancedV1 => (KeyType::Ed25519, KeyType::EcdsaP256),
        Suite::FipsV1 | Suite::HsmV1 => (KeyType::EcdsaP256, KeyType::EcdsaP256),
    };
    match kind {
        CaKind::Db => (ssh, tls_db),
        _ => (ssh, tls),
    }
}

impl Authority {
    fn create(kind: CaKind, cluster: &str, suite: Suite) -> Result<Authority> {
        let (ssh, tls) = ca_key_types(suite, kind);
        Ok(Authority {
            kind,
            active: KeySet::create(cluster, ssh, tls)?,
            additional: None,
            phase: "standby".into(),
        })
    }

    fn phase_path(dir: &Path, kind: CaKind) -> PathBuf {
        dir.join(format!("{}_ca_rotation", kind.name()))
    }

    fn save(&self, dir: &Path) -> Result<()> {
        // The additional keys are written before the active ones change, and removed after.
        if let Some(a) = &self.additional {
            a.save(dir, self.kind, "_additional")?;
        }
        self.active.save(dir, self.kind, "")?;
        if self.additional.is_none() {
            KeySet::remove(dir, self.kind, "_additional")?;
        }
        fsutil::write_atomic(
            &Self::phase_path(dir, self.kind),
            format!("{}\n", self.phase).as_bytes(),
            PUBLIC,
        )
    }

    fn load(dir: &Path, kind: CaKind) -> Result<Authority> {
        let active = KeySet::load(dir, kind, "")?
            .ok_or_else(|| anyhow::anyhow!("{}: no {} CA", dir.display(), kind.name()))?;
        let additional = KeySet::load(dir, kind, "_additional")?;
        let phase = match std::fs::read_to_string(Self::phase_path(dir, kind)) {
            Ok(s) => s.trim().to_string(),
            Err(_) => "standby".into(),
        };
        Ok(Authority {
            kind,
            active,
            additional,
            phase,
        })
    }

    /// The trusted key sets: active, then additional trusted.
    pub fn trusted(&self) -> impl Iterator<Item = &KeySet> {
        std::iter::once(&self.active).chain(self.additional.as_ref())
    }

    /// The trusted SSH public keys as authorized_keys lines (no newline), active first.
    pub fn trusted_ssh_lines(&self) -> Result<Vec<String>> {
        self.trusted().map(|k| k.ssh_public_line()).collect()
    }

    /// The trusted TLS CA certificates (PEM), active first.
    pub fn trusted_tls_pems(&self) -> Vec<String> {
        self.trusted().map(|k| k.tls_cert_pem.clone()).collect()
    }
}

impl KeySet {
    /// The SSH public key.
    pub fn ssh_public(&self) -> Result<PublicKey> {
        self.ssh_key.ssh_public()
    }

    /// The SSH public key as an authorized_keys line without newline or comment.
    pub fn ssh_public_line(&self) -> Result<String> {
        let mut k = self.ssh_public()?;
        k.set_comment("");
        Ok(k.to_openssh()?)
    }

    /// Sign an SSH certificate.
    pub fn sign_ssh(&self, req: &SshCertRequest) -> Result<Certificate> {
        let mut nonce = vec![0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let mut b = SshCertBuilder::new(
            nonce,
            req.public_key.key_data().clone(),
            unix(req.valid_after),
            unix(req.valid_before),
        )?;
        b.serial(rand::random())?;
        b.cert_type(req.cert_type)?;
        b.key_id(req.key_id.clone())?;
        for p in &req.principals {
            b.valid_principal(p.clone())?;
        }
        for (k, v) in &req.critical_options {
            b.critical_option(k.clone(), v.clone())?;
        }
        for (k, v) in &req.extensions {
            b.extension(k.clone(), v.clone())?;
        }
        Ok(b.sign(&self.ssh_key.to_ssh()?)?)
    }

    /// Issue an X.509 leaf certificate for `subject_key` (a DER SubjectPublicKeyInfo).
    pub(crate) fn issue_tls(&self, req: &TlsCertRequest) -> Result<String> {
        let mut sans = Vec::new();
        for d in &req.dns_names {
            sans.push(GeneralName::DnsName(Ia5String::new(d)?));
        }
        for ip in &req.ips {
            let bytes = match ip {
                IpAddr::V4(v) => v.octets().to_vec(),
                IpAddr::V6(v) => v.octets().to_vec(),
            };
            sans.push(GeneralName::IpAddress(OctetString::new(bytes)?));
        }
        let cert = sign_cert(
            &self.tls_key,
            CertPlan {
                profile: Profile::Leaf {
                    issuer: self.tls_cert.tbs_certificate.subject.clone(),
                    enable_key_agreement: false,
                    enable_key_encipherment: true,
                },
                validity: validity(req.not_before, req.not_after)?,
                subject: req.subject.clone(),
                spki: SubjectPublicKeyInfoOwned::from_der(&req.subject_key_spki)?,
                eku: true,
                sans,
            },
        )?;
        Ok(cert.to_pem(der::pem::LineEnding::LF)?)
    }
}

/// What goes into an SSH certificate.
pub struct SshCertRequest {
    pub public_key: PublicKey,
    pub cert_type: CertType,
    pub key_id: String,
    pub principals: Vec<String>,
    pub valid_after: SystemTime,
    pub valid_before: SystemTime,
    pub critical_options: BTreeMap<String, String>,
    pub extensions: BTreeMap<String, String>,
}

/// What goes into an X.509 leaf certificate.
pub(crate) struct TlsCertRequest {
    pub subject_key_spki: Vec<u8>,
    pub subject: Name,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// The four CAs of one cluster, and its signature algorithm suite (the auth preference: CA
/// key types at creation and rotation, and what bots generate).
pub struct ClusterCas {
    pub cluster: String,
    pub suite: Suite,
    pub user: Authority,
    pub host: Authority,
    pub db: Authority,
    pub openssh: Authority,
}

/// Fields of an SSH user certificate for a Teleport user (PROTOCOL.md section 6).
pub struct UserCertFields<'a> {
    pub username: &'a str,
    pub logins: &'a [String],
    pub roles: &'a [String],
    pub traits: &'a BTreeMap<String, Vec<String>>,
    pub route_to_cluster: &'a str,
    pub renewable: bool,
    pub generation: u64,
    pub bot_name: &'a str,
    pub bot_instance_id: &'a str,
    pub impersonator: &'a str,
    pub disallow_reissue: bool,
    pub ttl: Duration,
}

impl ClusterCas {
    /// Create a `balanced-v1` cluster's CAs in `dir` (0700), or fail if they exist.
    pub fn create(dir: &Path, cluster: &str) -> Result<ClusterCas> {
        Self::create_with_suite(dir, cluster, Suite::BalancedV1)
    }

    /// Create a cluster's CAs in `dir` (0700) with the key types of `suite`, or fail if they
    /// exist.
    pub fn create_with_suite(dir: &Path, cluster: &str, suite: Suite) -> Result<ClusterCas> {
        if dir.join("cluster_name").exists() {
            bail!(
                "{}: a certificate authority already exists here",
                dir.display()
            );
        }
        fsutil::ensure_private_dir(dir)?;
        let cas = ClusterCas {
            cluster: cluster.to_string(),
            suite,
            user: Authority::create(CaKind::User, cluster, suite)?,
            host: Authority::create(CaKind::Host, cluster, suite)?,
            db: Authority::create(CaKind::Db, cluster, suite)?,
            openssh: Authority::create(CaKind::OpenSsh, cluster, suite)?,
        };
        for a in cas.all() {
            a.save(dir)?;
        }
        cas.save_suite(dir)?;
        // Written last: its presence marks a complete CA folder.
        fsutil::write_atomic(
            &dir.join("cluster_name"),
            format!("{cluster}\n").as_bytes(),
            PUBLIC,
        )?;
        Ok(cas)
    }

    /// Load the CAs from `dir`.
    pub fn load(dir: &Path) -> Result<ClusterCas> {
        let cluster = fsutil::read_string(&dir.join("cluster_name"))?
            .trim()
            .to_string();
        // CA folders from before suites were balanced-v1.
        let suite = match std::fs::read_to_string(dir.join("suite")) {
            Ok(s) => Suite::from_name(s.trim()).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: unknown suite {:?}",
                    dir.join("suite").display(),
                    s.trim()
                )
            })?,
            Err(_) => Suite::BalancedV1,
        };
        Ok(ClusterCas {
            suite,
            user: Authority::load(dir, CaKind::User)?,
            host: Authority::load(dir, CaKind::Host)?,
            db: Authority::load(dir, CaKind::Db)?,
            openssh: Authority::load(dir, CaKind::OpenSsh)?,
            cluster,
        })
    }

    fn save_suite(&self, dir: &Path) -> Result<()> {
        fsutil::write_atomic(
            &dir.join("suite"),
            format!("{}\n", self.suite.name()).as_bytes(),
            PUBLIC,
        )
    }

    /// Save the CA (after a rotation step).
    pub(crate) fn save_authority(&self, dir: &Path, kind: CaKind) -> Result<()> {
        self.get(kind).save(dir)
    }

    /// The host CA keys servers present certificates from: the active keys, except in
    /// `update_clients`, where clients already sign with the new keys but servers still serve
    /// the old ones until `update_servers` (`lib/auth/rotate.go`).
    pub fn serving_host_keys(&self) -> &KeySet {
        match (&self.host.additional, self.host.phase.as_str()) {
            (Some(old), "update_clients") => old,
            _ => &self.host.active,
        }
    }

    /// The CA of a kind.
    pub fn get(&self, kind: CaKind) -> &Authority {
        match kind {
            CaKind::User => &self.user,
            CaKind::Host => &self.host,
            CaKind::Db => &self.db,
            CaKind::OpenSsh => &self.openssh,
        }
    }

    pub(crate) fn get_mut(&mut self, kind: CaKind) -> &mut Authority {
        match kind {
            CaKind::User => &mut self.user,
            CaKind::Host => &mut self.host,
            CaKind::Db => &mut self.db,
            CaKind::OpenSsh => &mut self.openssh,
        }
    }

    /// Load the CAs from `dir`, creating them on first use with `suite` (default
    /// balanced-v1). A suite given for an existing cluster changes its auth preference only:
    /// the CAs keep their keys until rotated, as in Teleport.
    pub(crate) fn load_or_create(
        dir: &Path,
        cluster: &str,
        suite: Option<Suite>,
    ) -> Result<ClusterCas> {
        if dir.join("cluster_name").exists() {
            let mut cas = Self::load(dir)?;
            if let Some(s) = suite.filter(|s| *s != cas.suite) {
                cas.suite = s;
                cas.save_suite(dir)?;
            }
            if cas.cluster != cluster {
                bail!(
                    "{}: holds the CAs of cluster {:?}, not {cluster:?}",
                    dir.display(),
                    cas.cluster
                );
            }
            Ok(cas)
        } else {
            Self::create_with_suite(dir, cluster, suite.unwrap_or(Suite::BalancedV1))
        }
    }

    pub(crate) fn all(&self) -> [&Authority; 4] {
        [&self.user, &self.host, &self.db, &self.openssh]
    }

    /// Issue an SSH user certificate with Teleport's fields and extensions.
    pub fn issue_ssh_user(&self, key: &PublicKey, f: &UserCertFields) -> Result<Certificate> {
        let now = SystemTime::now();
        let mut principals: Vec<String> = f.logins.to_vec();
        principals.push("-teleport-internal-join".to_string());
        let mut ext = BTreeMap::new();
        for p in [
            "permit-X11-forwarding",
            "permit-agent-forwarding",
            "permit-port-forwarding",
            "permit-pty",
        ] {
            ext.insert(p.to_string(), String::new());
        }
        ext.insert(
            "teleport-roles".into(),
            serde_json::json!({"roles": f.roles}).to_string(),
        );
        ext.insert("teleport-traits".into(), serde_json::to_string(f.traits)?);
        ext.insert(
            "teleport-route-to-cluster".into(),
            f.route_to_cluster.to_string(),
        );
        if f.renewable {
            ext.insert("renewable".into(), String::new());
        }
        if f.generation > 0 {
            ext.insert("generation".into(), f.generation.to_string());
        }
        if !f.bot_name.is_empty() {
            ext.insert("bot-name@goteleport.com".into(), f.bot_name.to_string());
        }
        if !f.bot_instance_id.is_empty() {
            ext.insert(
                "bot-instance-id@goteleport.com".into(),
                f.bot_instance_id.to_string(),
            );
        }
        if !f.impersonator.is_empty() {
            ext.insert("impersonator".into(), f.impersonator.to_string());
        }
        if f.disallow_reissue {
            ext.insert("disallow-reissue".into(), String::new());
        }
        self.user.sign_ssh(&SshCertRequest {
            public_key: key.clone(),
            cert_type: CertType::User,
            key_id: f.username.to_string(),
            principals,
            valid_after: now - Duration::from_secs(60),
            valid_before: now + f.ttl,
            critical_options: BTreeMap::new(),
            extensions: ext,
        })
    }

    /// Issue an X.509 client certificate for the same identity.
    pub(crate) fn issue_tls_user(
        &self,
        spki: &[u8],
        id: &TlsIdentity,
        ttl: Duration,
    ) -> Result<String> {
        let now = SystemTime::now();
        self.user.issue_tls(&TlsCertRequest {
            subject_key_spki: spki.to_vec(),
            subject: id.to_name()?,
            not_before: now - Duration::from_secs(60),
            not_after: now + ttl,
            dns_names: vec![],
            ips: vec![],
        })
    }

    /// Issue an SSH host certificate with Teleport's principals and extensions.
    pub fn issue_ssh_host(
        &self,
        key: &PublicKey,
        host_id: &str,
        node_name: &str,
        role: &str,
        additional: &[String],
        ttl: Duration,
    ) -> Result<Certificate> {
        let c = &self.cluster;
        let mut principals = Vec::new();
        for p in [
            format!("{host_id}.{c}"),
            host_id.to_string(),
            format!("{node_name}.{c}"),
            node_name.to_string(),
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
        ]
        .into_iter()
        .chain(additional.iter().cloned())
        {
            if !principals.contains(&p) {
                principals.push(p);
            }
        }
        let mut ext = BTreeMap::new();
        ext.insert("x-teleport-role".to_string(), role.to_string());
        ext.insert("x-teleport-authority".to_string(), c.clone());
        let now = SystemTime::now();
        self.serving_host_keys().sign_ssh(&SshCertRequest {
            public_key: key.clone(),
            cert_type: CertType::Host,
            key_id: String::new(),
            principals,
            valid_after: now - Duration::from_secs(60),
            valid_before: now + ttl,
            critical_options: BTreeMap::new(),
            extensions: ext,
        })
    }

    /// Issue an X.509 server certificate signed by the host CA.
    pub fn issue_tls_server(
        &self,
        spki: &[u8],
        common_name: &str,
        dns: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<String> {
        let now = SystemTime::now();
        let id = TlsIdentity {
            username: common_name.to_string(),
            teleport_cluster: self.cluster.clone(),
            ..Default::default()
        };
        self.serving_host_keys().issue_tls(&TlsCertRequest {
            subject_key_spki: spki.to_vec(),
            subject: id.to_name()?,
            not_before: now - Duration::from_secs(60),
            not_after: now + ttl,
            dns_names: dns.to_vec(),
            ips: ips.to_vec(),
        })
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn validity(not_before: SystemTime, not_after: SystemTime) -> Result<Validity> {
    Ok(Validity {
        not_before: Time::try_from(not_before)?,
        not_after: Time::try_from(not_after)?,
    })
}

fn random_serial() -> Result<SerialNumber> {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    b[0] &= 0x7f;
    b[0] |= 0x01;
    Ok(SerialNumber::new(&b)?)
}

fn spki_of(k: &KeyPair) -> Result<SubjectPublicKeyInfoOwned> {
    Ok(SubjectPublicKeyInfoOwned::from_der(&k.spki_der()?)?)
}

impl ClusterCas {
    /// Issue the SSH user cert and the X.509 client cert of one identity for a public key
    /// (given as SSH key and DER SubjectPublicKeyInfo of the same key).
    pub(crate) fn issue_user_certs(
        &self,
        ssh_pub: &PublicKey,
        spki: &[u8],
        f: &UserCertFields,
    ) -> Result<(Certificate, String)> {
        let ssh_cert = self.issue_ssh_user(ssh_pub, f)?;
        let mut traits = f.traits.clone();
        traits
            .entry("logins".into())
            .or_insert_with(|| f.logins.to_vec());
        let id = TlsIdentity {
            username: f.username.to_string(),
            groups: f.roles.to_vec(),
            principals: f.logins.to_vec(),
            route_to_cluster: f.route_to_cluster.to_string(),
            traits,
            teleport_cluster: self.cluster.clone(),
            renewable: f.renewable,
            generation: f.generation,
            impersonator: f.impersonator.to_string(),
            disallow_reissue: f.disallow_reissue,
            bot_name: f.bot_name.to_string(),
            bot_instance_id: f.bot_instance_id.to_string(),
            ..Default::default()
        };
        let tls_cert_pem = self.issue_tls_user(spki, &id, f.ttl)?;
        Ok((ssh_cert, tls_cert_pem))
    }

    /// Issue a complete identity (SSH user cert + X.509 client cert + the CAs to trust) for
    /// `key`, as Teleport's join and renewal return it.
    pub fn issue_identity(
        &self,
        key: &KeyPair,
        f: &UserCertFields,
    ) -> Result<idmux_identity::Identity> {
        let (ssh_cert, tls_cert_pem) =
            self.issue_user_certs(&key.ssh_public()?, &key.spki_der()?, f)?;
        Ok(idmux_identity::Identity {
            key: key.clone(),
            ssh_cert,
            tls_cert_pem,
            host_cas: self
                .host
                .trusted()
                .map(|k| {
                    Ok(idmux_identity::HostCa {
                        cluster: self.cluster.clone(),
                        key: k.ssh_public()?,
                    })
                })
                .collect::<Result<_>>()?,
            tls_cas: self.host.trusted_tls_pems(),
        })
    }
}
