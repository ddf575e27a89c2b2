//! The dev cluster's auth logic: the bot join (RegisterUsingToken), bot identities and
//! role-impersonated output identities.
//!
//! A `token` join is single use and yields a renewable identity: user `bot-NAME`, role
//! `bot-NAME`, generation 1, a new bot instance id, no node logins. Output identities carry the
//! bot's roles (impersonated), the logins those roles grant, `impersonator` and
//! `disallow-reissue`, as Teleport issues them.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use idmux_wire::web::{b64d, b64e, CertsJson, RegisterUsingTokenRequest};

use crate::ca::{ClusterCas, UserCertFields};
use crate::state::{Bot, State};
use idmux_identity::Identity;

/// Renewable certificates are capped at 24h, as in Teleport.
pub(crate) const MAX_RENEWABLE_TTL: Duration = Duration::from_secs(24 * 3600);
/// `apidefaults.MinCertDuration`: the shortest certificate Teleport signs.
pub(crate) const MIN_CERT_TTL: Duration = Duration::from_secs(60);
/// Default TTL of join certificates.
pub(crate) const DEFAULT_JOIN_TTL: Duration = Duration::from_secs(3600);

/// An issued identity without its private key (the client keeps the key).
pub(crate) struct IssuedCerts {
    pub ssh_cert: russh::keys::ssh_key::Certificate,
    pub tls_cert_pem: String,
}

/// Issue certificates for a public key (SSH public key + TLS SPKI of the same key).
pub(crate) fn issue_for(
    cas: &ClusterCas,
    ssh_pub: &russh::keys::ssh_key::PublicKey,
    spki: &[u8],
    f: &UserCertFields,
) -> Result<IssuedCerts> {
    let (ssh_cert, tls_cert_pem) = cas.issue_user_certs(ssh_pub, spki, f)?;
    Ok(IssuedCerts {
        ssh_cert,
        tls_cert_pem,
    })
}

/// Parse the public keys of a join request and check they are one key.
fn request_keys(
    req: &RegisterUsingTokenRequest,
) -> Result<(russh::keys::ssh_key::PublicKey, Vec<u8>)> {
    public_keys(
        &b64d(&req.public_ssh_key, "public_ssh_key")?,
        &b64d(&req.public_tls_key, "public_tls_key")?,
    )
}

/// Parse an SSH public key (authorized_keys line) and a TLS public key (PEM, `PUBLIC KEY` or
/// `RSA PUBLIC KEY`) and check they are one key. Returns the SSH key and the DER SPKI.
pub(crate) fn public_keys(
    ssh_line: &[u8],
    tls_pem: &[u8],
) -> Result<(russh::keys::ssh_key::PublicKey, Vec<u8>)> {
    let ssh_line =
        std::str::from_utf8(ssh_line).map_err(|_| anyhow!("public_ssh_key: not UTF-8"))?;
    let ssh_pub = russh::keys::ssh_key::PublicKey::from_openssh(ssh_line.trim())
        .map_err(|e| anyhow!("public_ssh_key: {e}"))?;
    let tls_pem = std::str::from_utf8(tls_pem).map_err(|_| anyhow!("public_tls_key: not UTF-8"))?;
    let spki = public_pem_to_spki(tls_pem)?;
    check_one_key(&ssh_pub, &spki)?;
    Ok((ssh_pub, spki))
}

/// The TLS public key (DER SPKI) and the SSH public key of a request must be one key.
pub(crate) fn check_one_key(ssh_pub: &russh::keys::ssh_key::PublicKey, spki: &[u8]) -> Result<()> {
    let tls_key = idmux_identity::keys::ssh_key_data_from_spki(spki)
        .map_err(|e| anyhow!("public_tls_key: {e}"))?;
    if &tls_key != ssh_pub.key_data() {
        bail!("public_tls_key and public_ssh_key are different keys");
    }
    Ok(())
}

/// DER SPKI of a PEM public key (`PUBLIC KEY` PKIX, or `RSA PUBLIC KEY` PKCS#1).
pub(crate) fn public_pem_to_spki(pem: &str) -> Result<Vec<u8>> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::EncodePublicKey;
    let (label, doc) = der::Document::from_pem(pem).map_err(|e| anyhow!("public_tls_key: {e}"))?;
    match label {
        "PUBLIC KEY" => Ok(doc.as_bytes().to_vec()),
        "RSA PUBLIC KEY" => {
            let k = rsa::RsaPublicKey::from_pkcs1_der(doc.as_bytes())
                .map_err(|e| anyhow!("public_tls_key: {e}"))?;
            Ok(k.to_public_key_der()?.as_bytes().to_vec())
        }
        other => bail!("public_tls_key: unsupported PEM type {other:?}"),
    }
}

/// The TTL a request asks for, capped.
fn requested_ttl(expires: Option<&str>, default: Duration, cap: Duration) -> Result<Duration> {
    let Some(e) = expires.filter(|e| !e.is_empty()) else {
        return Ok(default);
    };
    let t = humantime::parse_rfc3339_weak(e).map_err(|err| anyhow!("expires {e:?}: {err}"))?;
    let ttl = t
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::from_secs(60));
    Ok(ttl.min(cap))
}

/// `POST /webapi/host/credentials` for role `Bot` with a `token` join token.
pub(crate) fn register_bot(
    dir: &std::path::Path,
    cas: &ClusterCas,
    req: &RegisterUsingTokenRequest,
) -> Result<CertsJson> {
    if req.role != "Bot" {
        bail!("this dev cluster joins bots only (role {:?})", req.role);
    }
    let (ssh_pub, spki) = request_keys(req)?;
    let ttl = requested_ttl(req.expires.as_deref(), DEFAULT_JOIN_TTL, MAX_RENEWABLE_TTL)?;
    let issued = join_bot(dir, cas, &req.token, &ssh_pub, &spki, ttl)?;
    certs_json(cas, issued)
}

/// The token join itself, whichever service carries it: take the single-use token, start a
/// new bot instance at generation 1, issue the renewable identity.
pub(crate) fn join_bot(
    dir: &std::path::Path,
    cas: &ClusterCas,
    token: &str,
    ssh_pub: &russh::keys::ssh_key::PublicKey,
    spki: &[u8],
    ttl: Duration,
) -> Result<IssuedCerts> {
    // As every user certificate Teleport signs (`sshca.UserCertificateRequest`
    // `CheckAndSetDefaults`): a TTL under a minute becomes a minute.
    let ttl = ttl.max(MIN_CERT_TTL);
    let (name, bot) = State::modify(dir, |st| {
        let t = st
            .take_token(token)
            .map_err(|_| anyhow!("token expired or not found (a token joins once)"))?;
        let bot = st
            .bots
            .get_mut(&t.bot)
            .ok_or_else(|| anyhow!("bot {:?} of this token no longer exists", t.bot))?;
        bot.generation = 1;
        bot.locked = None;
        bot.instance_id = uuid::Uuid::new_v4().to_string();
        bot.heartbeats.clear();
        Ok((t.bot.clone(), bot.clone()))
    })?;
    let issued = issue_bot_identity(cas, &name, &bot, ssh_pub, spki, ttl)?;
    tracing::info!(bot = name, "bot joined");
    Ok(issued)
}

/// Issue the bot's own renewable identity (user and role `bot-NAME`, a nologin principal,
/// `renewable`, the bot's current generation and instance id), as the join and renewals do.
pub(crate) fn issue_bot_identity(
    cas: &ClusterCas,
    name: &str,
    bot: &Bot,
    ssh_pub: &russh::keys::ssh_key::PublicKey,
    spki: &[u8],
    ttl: Duration,
) -> Result<IssuedCerts> {
    let user = format!("bot-{name}");
    let roles = vec![user.clone()];
    let nologin = vec![format!("-teleport-nologin-{}", uuid::Uuid::new_v4())];
    let traits = [("logins".to_string(), bot.logins.clone())].into();
    let f = UserCertFields {
        username: &user,
        logins: &nologin,
        roles: &roles,
        traits: &traits,
        route_to_cluster: &cas.cluster,
        renewable: true,
        generation: bot.generation,
        bot_name: name,
        bot_instance_id: &bot.instance_id,
        impersonator: "",
        disallow_reissue: false,
        ttl,
    };
    issue_for(cas, ssh_pub, spki, &f)
}

/// The CA lists of a `proto.Certs` answer, as Teleport fills them (`lib/auth`
/// `generateUserCert`): the user CA's trusted TLS certificates (PEM) and SSH keys (bare
/// authorized_keys lines, `services.GetSSHCheckingKeys`), then, for a bot's own identity (a
/// join or a renewal with a generation counter, `includeHostCA`), the host CA's. Returns
/// `(tls_ca_certs, ssh_ca_certs)`.
pub(crate) fn certs_ca_lists(
    cas: &ClusterCas,
    include_host_ca: bool,
) -> Result<(Vec<String>, Vec<String>)> {
    let mut tls = cas.user.trusted_tls_pems();
    let mut ssh: Vec<String> = cas
        .user
        .trusted_ssh_lines()?
        .into_iter()
        .map(|l| format!("{l}\n"))
        .collect();
    if include_host_ca {
        tls.extend(cas.host.trusted_tls_pems());
        ssh.extend(
            cas.host
                .trusted_ssh_lines()?
                .into_iter()
                .map(|l| format!("{l}\n")),
        );
    }
    Ok((tls, ssh))
}

fn certs_json(cas: &ClusterCas, c: IssuedCerts) -> Result<CertsJson> {
    let (tls_cas, ssh_cas) = certs_ca_lists(cas, true)?;
    Ok(CertsJson {
        ssh: b64e(format!("{}\n", c.ssh_cert.to_openssh()?).as_bytes()),
        tls: b64e(c.tls_cert_pem.as_bytes()),
        tls_ca_certs: tls_cas.iter().map(|c| b64e(c.as_bytes())).collect(),
        ssh_ca_certs: ssh_cas.iter().map(|c| b64e(c.as_bytes())).collect(),
    })
}

/// What a role-impersonated output identity of a bot carries (owned; see [`OutputPlan::fields`]).
pub(crate) struct OutputPlan {
    pub user: String,
    pub bot_name: String,
    pub roles: Vec<String>,
    pub logins: Vec<String>,
    pub traits: BTreeMap<String, Vec<String>>,
    pub instance_id: String,
}

impl OutputPlan {
    /// Plan the output identity of `bot_name` impersonating `roles` (`None` = all its roles).
    /// Fails if the bot does not exist, is locked, or may not impersonate a role.
    pub fn new(st: &State, bot_name: &str, roles: Option<&[String]>) -> Result<OutputPlan> {
        let bot = st
            .bots
            .get(bot_name)
            .ok_or_else(|| anyhow!("no bot named {bot_name:?} (see 'idmux cluster bots ls')"))?;
        if let Some(reason) = &bot.locked {
            bail!("bot {bot_name:?} is locked: {reason}");
        }
        let roles: Vec<String> = match roles {
            Some(r) => {
                for x in r {
                    if !bot.roles.contains(x) {
                        bail!("bot {bot_name:?} may not impersonate role {x:?}");
                    }
                }
                r.to_vec()
            }
            None => bot.roles.clone(),
        };
        let mut logins = Vec::new();
        for r in &roles {
            let role = st
                .roles
                .get(r)
                .ok_or_else(|| anyhow!("role {r:?} does not exist"))?;
            for l in role.expand_logins(&bot.logins) {
                if !logins.contains(&l) {
                    logins.push(l);
                }
            }
        }
        Ok(OutputPlan {
            user: format!("bot-{bot_name}"),
            bot_name: bot_name.to_string(),
            roles,
            logins,
            traits: [("logins".to_string(), bot.logins.clone())].into(),
            instance_id: bot.instance_id.clone(),
        })
    }

    /// The certificate fields: impersonated by the bot's user, not renewable, not reissuable.
    pub(crate) fn fields<'a>(&'a self, cluster: &'a str, ttl: Duration) -> UserCertFields<'a> {
        UserCertFields {
            username: &self.user,
            logins: &self.logins,
            roles: &self.roles,
            traits: &self.traits,
            route_to_cluster: cluster,
            renewable: false,
            generation: 0,
            bot_name: &self.bot_name,
            bot_instance_id: &self.instance_id,
            impersonator: &self.user,
            disallow_reissue: true,
            ttl,
        }
    }
}

/// The fields of a role-impersonated output identity for a bot (what tbot's outputs get).
pub fn output_identity(
    dir: &std::path::Path,
    cas: &ClusterCas,
    bot_name: &str,
    key: &idmux_identity::KeyPair,
    roles: Option<&[String]>,
    ttl: Duration,
) -> Result<Identity> {
    let plan = OutputPlan::new(&State::load(dir)?, bot_name, roles)?;
    cas.issue_identity(key, &plan.fields(&cas.cluster, ttl))
}

/// A new join token: 16 random bytes in hex, as tctl makes them.
pub(crate) fn new_token() -> String {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}
