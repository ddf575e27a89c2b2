//! One renewal's outputs, as tbot's identity output service makes them
//! (`lib/tbot/service_identity_output.go`, `lib/tbot/identity/generator.go`,
//! `lib/tbot/ssh/ssh.go`):
//! - the CA files from the CA resources: `GetCertAuthorities` of type host, user and db (every
//!   cluster the bot sees, public parts), each trusted TLS certificate in order;
//! - the roles: the output's, or else the bot role's `allow.impersonate.roles` (`GetRole` with
//!   the bot's own user name);
//! - a fresh key per output per renewal, of the suite's type (`BotImpersonatedIdentity`);
//! - the impersonated certificates (`GenerateUserCerts` with the roles);
//! - the clusters: the identity's own, then `ListRemoteClusters` (asked with the output's
//!   identity); known_hosts from `GetCertAuthority{host, cluster}` of each, every trusted key.
//!
//! Pure helpers ([`cluster_host_cas`], [`tls_pems`], [`default_roles`]) turn the answers into
//! what the destination writer needs; the I/O is in [`make_output`].

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};

use idmux_identity::destination::CaPems;
use idmux_identity::{HostCa, KeyPair, KeyType};
use idmux_transport::auth_client::AuthClient;
use idmux_wire::proto::{Timestamp, UserCertsRequest};
use idmux_wire::resources::{CertAuthorityV2, RoleV6, SignatureAlgorithmSuite};
use idmux_wire::services::{
    Empty, GetCertAuthoritiesRequest, GetCertAuthoritiesResponse, GetCertAuthorityRequest,
    GetRoleRequest, ListRemoteClustersRequest, ListRemoteClustersResponse, GET_AUTH_PREFERENCE,
    GET_CERT_AUTHORITIES, GET_CERT_AUTHORITY, GET_ROLE, LIST_REMOTE_CLUSTERS,
};

/// The key type of the cluster's suite for bot and output identities (`HostIdentity`,
/// `BotImpersonatedIdentity`): RSA-2048 under `legacy` or unset, ECDSA P-256 otherwise.
pub(crate) fn key_type_for(suite: SignatureAlgorithmSuite) -> KeyType {
    KeyType::for_suite(suite.name())
}

/// Ask Auth for the cluster's suite (`GetAuthPreference`).
pub(crate) async fn suite(auth: &mut AuthClient) -> Result<SignatureAlgorithmSuite> {
    let pref: idmux_wire::resources::AuthPreferenceV2 = auth
        .unary(GET_AUTH_PREFERENCE, "the auth preference request", Empty {})
        .await?;
    Ok(pref.suite())
}

/// A fresh key of `kind`, made off the async workers (RSA-2048 takes up to seconds).
pub(crate) async fn fresh_key(kind: KeyType) -> Result<KeyPair> {
    tokio::task::spawn_blocking(move || KeyPair::generate(kind))
        .await
        .map_err(|e| anyhow!("key generation stopped: {e}"))?
}

/// The roles an output without configured roles gets: the bot role's impersonate list. An
/// empty list would only be refused by Auth ("at least one role request is required"), so
/// say what to fix instead.
pub(crate) fn default_roles(role: &RoleV6, role_name: &str) -> Result<Vec<String>> {
    let roles = role.impersonate_roles();
    if roles.is_empty() {
        bail!(
            "the bot role {role_name} allows impersonating no roles, so an output without \
             --roles gets none: give the bot roles ('tctl bots update' / 'idmux cluster bots \
             add --roles') or set the output's roles"
        );
    }
    Ok(roles)
}

/// Every trusted TLS certificate (PEM) of the CAs, in order (tbot's `concatCACerts`).
pub fn tls_pems(cas: &[CertAuthorityV2]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for ca in cas {
        for pem in ca.trusted_tls_certs() {
            let pem = std::str::from_utf8(pem).map_err(|_| {
                anyhow!(
                    "the {} CA's TLS certificate is not UTF-8",
                    ca.cluster_name()
                )
            })?;
            out.push(pem.to_string());
        }
    }
    Ok(out)
}

/// The host CA keys of a cluster's host CA resource, one [`HostCa`] per trusted key.
pub fn cluster_host_cas(ca: &CertAuthorityV2, cluster: &str) -> Result<Vec<HostCa>> {
    let keys = ca.trusted_ssh_keys();
    if keys.is_empty() {
        bail!("the host CA of cluster {cluster} has no SSH keys");
    }
    keys.into_iter()
        .map(|k| {
            let line = std::str::from_utf8(k)
                .map_err(|_| anyhow!("the host CA of cluster {cluster}: key is not UTF-8"))?;
            HostCa::parse_entry(line, cluster)
                .with_context(|| format!("the host CA of cluster {cluster}"))
        })
        .collect()
}

/// The CA files' certificates and the host CAs' TLS certificates an output trusts.
pub(crate) async fn ca_pems(auth: &mut AuthClient) -> Result<CaPems> {
    let mut get = async |t: &str| -> Result<Vec<String>> {
        let resp: GetCertAuthoritiesResponse = auth
            .unary(
                GET_CERT_AUTHORITIES,
                "the CA request",
                GetCertAuthoritiesRequest {
                    r#type: t.to_string(),
                    include_key: false,
                },
            )
            .await?;
        tls_pems(&resp.cert_authorities_v2)
    };
    Ok(CaPems {
        host: get("host").await?,
        user: get("user").await?,
        db: get("db").await?,
    })
}

/// The output's roles: configured, or the bot role's impersonate list.
pub(crate) async fn output_roles(
    auth: &mut AuthClient,
    configured: &[String],
    bot_user: &str,
) -> Result<Vec<String>> {
    if !configured.is_empty() {
        return Ok(configured.to_vec());
    }
    let role: RoleV6 = auth
        .unary(
            GET_ROLE,
            "the bot role request",
            GetRoleRequest {
                name: bot_user.to_string(),
            },
        )
        .await?;
    default_roles(&role, bot_user)
}

/// The impersonated certificate request for an output of bot user `user` in `cluster`
/// (exactly tbot's fields).
pub(crate) fn impersonation_request(
    user: &str,
    cluster: &str,
    key: &KeyPair,
    roles: Vec<String>,
    ttl: Duration,
) -> Result<UserCertsRequest> {
    Ok(UserCertsRequest {
        username: user.to_string(),
        expires: Some(Timestamp::from_system_time(SystemTime::now() + ttl)),
        route_to_cluster: cluster.to_string(),
        role_requests: roles,
        use_role_requests: true,
        ssh_public_key: key.ssh_authorized_key()?.into_bytes(),
        tls_public_key: key.tls_public_pem()?.into_bytes(),
        ..Default::default()
    })
}

/// The bot's own renewal request: only the new keys, its user and the expiry (tbot's
/// `botIdentityFromAuth`).
pub(crate) fn renewal_request(
    user: &str,
    key: &KeyPair,
    ttl: Duration,
) -> Result<UserCertsRequest> {
    Ok(UserCertsRequest {
        username: user.to_string(),
        expires: Some(Timestamp::from_system_time(SystemTime::now() + ttl)),
        ssh_public_key: key.ssh_authorized_key()?.into_bytes(),
        tls_public_key: key.tls_public_pem()?.into_bytes(),
        ..Default::default()
    })
}

/// The clusters an identity sees: its own, then the leaf clusters (all pages).
pub(crate) async fn cluster_names(auth: &mut AuthClient, own: &str) -> Result<Vec<String>> {
    let mut out = vec![own.to_string()];
    let mut token = String::new();
    loop {
        let page: ListRemoteClustersResponse = auth
            .unary(
                LIST_REMOTE_CLUSTERS,
                "the leaf cluster list",
                ListRemoteClustersRequest {
                    page_size: 0,
                    page_token: token.clone(),
                },
            )
            .await?;
        for rc in page.remote_clusters {
            let name = rc.metadata.map(|m| m.name).unwrap_or_default();
            if !name.is_empty() && !out.contains(&name) {
                out.push(name);
            }
        }
        if page.next_page_token.is_empty() || page.next_page_token == token {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// One CA of one cluster, public parts (`GetCertAuthority{type, domain}`).
async fn get_ca(auth: &mut AuthClient, kind: &str, cluster: &str) -> Result<CertAuthorityV2> {
    auth.unary(
        GET_CERT_AUTHORITY,
        "the CA request",
        GetCertAuthorityRequest {
            r#type: kind.into(),
            domain: cluster.to_string(),
            include_key: false,
        },
    )
    .await
}

/// The host CA keys of every cluster (`GetCertAuthority{host, cluster}` each).
pub(crate) async fn host_cas(auth: &mut AuthClient, clusters: &[String]) -> Result<Vec<HostCa>> {
    let mut out = Vec::new();
    for c in clusters {
        out.extend(cluster_host_cas(&get_ca(auth, "host", c).await?, c)?);
    }
    Ok(out)
}

/// Where the CAs of `cluster` stand: for the host, user and db CA, the rotation phase and the
/// first trusted key. A change means a rotation step (tbot renews on one at once).
pub(crate) async fn ca_state(auth: &mut AuthClient, cluster: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for t in ["host", "user", "db"] {
        out.push(ca_fingerprint(&get_ca(auth, t, cluster).await?));
    }
    Ok(out)
}

/// A CA's rotation phase and first trusted key (SSH, else TLS), as one comparable string.
pub(crate) fn ca_fingerprint(ca: &CertAuthorityV2) -> String {
    let phase = ca
        .spec
        .as_ref()
        .and_then(|s| s.rotation.as_ref())
        .map(|r| r.phase.as_str())
        .unwrap_or("");
    let first = ca
        .trusted_ssh_keys()
        .first()
        .or(ca.trusted_tls_certs().first())
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let kind = ca.spec.as_ref().map(|s| s.r#type.as_str()).unwrap_or("");
    format!("{kind}:{phase}:{}", first.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key generation never stalls the daemon's one runtime thread (which also relays ssh
    /// bytes): while RSA keys are made, a timer task on the same current_thread runtime keeps
    /// ticking. Keys are made until one took at least 150 ms (RSA-2048's prime search varies);
    /// the longest gap between ticks must stay under a third of that and under 60 ms. Made on
    /// the runtime thread itself, the gap is the whole key's time.
    #[tokio::test(flavor = "current_thread")]
    async fn key_generation_does_not_stall_the_runtime() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let most = Arc::new(AtomicU64::new(0));
        let ticker = {
            let (stop, most) = (stop.clone(), most.clone());
            tokio::spawn(async move {
                let mut last = std::time::Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let gap = last.elapsed().as_micros() as u64;
                    most.fetch_max(gap, Ordering::Relaxed);
                    last = std::time::Instant::now();
                }
            })
        };
        // Let the ticker start.
        tokio::time::sleep(Duration::from_millis(20)).await;
        most.store(0, Ordering::Relaxed);
        let mut longest = Duration::ZERO;
        let mut made = 0;
        while longest < Duration::from_millis(150) && made < 30 {
            let t0 = std::time::Instant::now();
            fresh_key(KeyType::Rsa2048).await.unwrap();
            longest = longest.max(t0.elapsed());
            made += 1;
        }
        stop.store(true, Ordering::Relaxed);
        ticker.await.unwrap();
        let gap = Duration::from_micros(most.load(Ordering::Relaxed));
        eprintln!("{made} RSA-2048 keys, the longest {longest:?}; the timer's longest gap {gap:?}");
        assert!(
            longest >= Duration::from_millis(150),
            "no key took 150 ms ({longest:?}): the test cannot tell"
        );
        assert!(
            gap < Duration::from_millis(60) && gap < longest / 3,
            "the runtime stalled {gap:?} while a key took {longest:?}"
        );
    }
    use idmux_wire::resources::{
        CaKeySet, CertAuthoritySpecV2, ImpersonateConditions, RoleConditions, RoleSpecV6,
        SshKeyPair, TlsKeyPair,
    };

    fn ca(cluster: &str, active: &str, extra: Option<&str>) -> CertAuthorityV2 {
        let set = |k: &str| CaKeySet {
            ssh: vec![SshKeyPair {
                public_key: format!("{k}\n").into_bytes(),
                private_key: vec![],
            }],
            tls: vec![TlsKeyPair {
                cert: format!("PEM of {k}\n").into_bytes(),
                key: vec![],
            }],
        };
        CertAuthorityV2 {
            spec: Some(CertAuthoritySpecV2 {
                r#type: "host".into(),
                cluster_name: cluster.into(),
                active_keys: Some(set(active)),
                additional_trusted_keys: extra.map(set),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn key_line() -> String {
        let k = KeyPair::generate(KeyType::Ed25519).unwrap();
        HostCa {
            cluster: String::new(),
            key: k.ssh_public().unwrap(),
        }
        .bare_line()
        .unwrap()
    }

    #[test]
    #[allow(non_snake_case)]
    fn rotation_keys_are_all_trusted_active_first() {
        let (k1, k2) = (key_line(), key_line());
        let (K1, K2) = (k1.as_str(), k2.as_str());
        let c = ca("root.test", K1, Some(K2));
        let cas = cluster_host_cas(&c, "root.test").unwrap();
        assert_eq!(cas.len(), 2);
        assert_eq!(cas[0].bare_line().unwrap(), K1);
        assert_eq!(cas[1].bare_line().unwrap(), K2);
        assert!(cas.iter().all(|h| h.cluster == "root.test"));
        let pems = tls_pems(&[c, ca("leaf.test", K2, None)]).unwrap();
        assert_eq!(
            pems,
            [
                format!("PEM of {K1}\n"),
                format!("PEM of {K2}\n"),
                format!("PEM of {K2}\n")
            ]
        );
    }

    #[test]
    fn a_ca_without_keys_is_an_error_naming_the_cluster() {
        let mut c = ca("root.test", &key_line(), None);
        c.spec.as_mut().unwrap().active_keys = None;
        let e = cluster_host_cas(&c, "root.test").unwrap_err().to_string();
        assert!(e.contains("root.test"), "{e}");
    }

    #[test]
    fn default_roles_come_from_the_impersonate_list() {
        let mut role = RoleV6 {
            spec: Some(RoleSpecV6 {
                allow: Some(RoleConditions {
                    logins: vec![],
                    impersonate: Some(ImpersonateConditions {
                        roles: vec!["access".into(), "deploy".into()],
                        ..Default::default()
                    }),
                }),
                deny: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            default_roles(&role, "bot-ci").unwrap(),
            ["access".to_string(), "deploy".to_string()]
        );
        role.spec = None;
        let e = default_roles(&role, "bot-ci").unwrap_err().to_string();
        assert!(e.contains("bot role bot-ci"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }

    #[test]
    fn requests_carry_exactly_tbots_fields() {
        let key = KeyPair::generate(KeyType::EcdsaP256).unwrap();
        let ttl = Duration::from_secs(3600);
        let r = renewal_request("bot-ci", &key, ttl).unwrap();
        let exp = r.expires.unwrap();
        assert_eq!(
            r,
            UserCertsRequest {
                username: "bot-ci".into(),
                expires: Some(exp),
                ssh_public_key: key.ssh_authorized_key().unwrap().into_bytes(),
                tls_public_key: key.tls_public_pem().unwrap().into_bytes(),
                ..Default::default()
            },
            "a renewal: no roles, no route, no usage"
        );
        let o =
            impersonation_request("bot-ci", "unit.test", &key, vec!["access".into()], ttl).unwrap();
        assert_eq!(
            o,
            UserCertsRequest {
                username: "bot-ci".into(),
                expires: o.expires,
                route_to_cluster: "unit.test".into(),
                role_requests: vec!["access".into()],
                use_role_requests: true,
                ssh_public_key: key.ssh_authorized_key().unwrap().into_bytes(),
                tls_public_key: key.tls_public_pem().unwrap().into_bytes(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_rotation_step_changes_the_fingerprint() {
        let (k1, k2) = (key_line(), key_line());
        let mut c = ca("root.test", &k1, None);
        let standby = ca_fingerprint(&c);
        c.spec.as_mut().unwrap().rotation = Some(idmux_wire::resources::Rotation {
            phase: "init".into(),
            ..Default::default()
        });
        let init = ca_fingerprint(&c);
        assert_ne!(standby, init);
        // A whole rotation between two checks still shows: the active key changed.
        let done = ca_fingerprint(&ca("root.test", &k2, None));
        assert_ne!(standby, done);
        assert_eq!(standby, ca_fingerprint(&ca("root.test", &k1, None)));
    }

    #[test]
    fn suite_key_types() {
        use SignatureAlgorithmSuite as S;
        assert_eq!(key_type_for(S::Unspecified), KeyType::Rsa2048);
        assert_eq!(key_type_for(S::Legacy), KeyType::Rsa2048);
        for s in [S::BalancedV1, S::FipsV1, S::HsmV1] {
            assert_eq!(key_type_for(s), KeyType::EcdsaP256);
        }
    }
}
