//! The Auth methods a bot calls besides `GenerateUserCerts`, answered as Teleport does:
//! `GetRole`, `GetClusterCACert`, `GetAuthPreference` (`proto.AuthService`), `GetCertAuthority`
//! and `GetCertAuthorities` (`teleport.trust.v1.TrustService`), `ListRemoteClusters`
//! (`teleport.presence.v1.PresenceService`) and `SubmitHeartbeat`
//! (`teleport.machineid.v1.BotInstanceService`).
//!
//! Plain functions over the state and the CAs, so every answer and refusal is tested without a
//! network. Permissions follow Teleport's: a user reads the roles it holds
//! (`ServerWithRoles.GetRole`'s current-user exception) and nothing else; every user reads CAs
//! without their private keys and the auth preference (`services.DefaultImplicitRules`); keys
//! are never served (`include_key` needs `read` on `cert_authority`, which no bot role has).

use std::time::SystemTime;

use tonic::Status;

use crate::ca::{Authority, CaKind, ClusterCas};
use crate::state::{Heartbeat, State};
use idmux_identity::TlsIdentity;
use idmux_wire::resources::{
    AuthPreferenceSpecV2, AuthPreferenceV2, CaKeySet, CertAuthoritySpecV2, CertAuthorityV2,
    ImpersonateConditions, Metadata, RemoteClusterStatusV3, RemoteClusterV3, RoleConditions,
    RoleSpecV6, RoleV6, Rotation, SshKeyPair, TlsKeyPair,
};
use idmux_wire::services::{
    GetCertAuthoritiesRequest, GetCertAuthoritiesResponse, GetCertAuthorityRequest,
    GetClusterCaCertResponse, ListRemoteClustersRequest, ListRemoteClustersResponse,
    SubmitHeartbeatRequest,
};

/// The CA types Teleport knows (`api/types` `CertAuthTypes`); only some exist here.
const KNOWN_CA_TYPES: [&str; 12] = [
    "host",
    "user",
    "db",
    "db_client",
    "openssh",
    "jwt",
    "saml_idp",
    "oidc_idp",
    "spiffe",
    "okta",
    "awsra",
    "bound_keypair",
];

fn denied(msg: String) -> Status {
    Status::permission_denied(msg)
}

/// Teleport's RBAC refusal (`lib/services` `RoleSet.CheckAccess`).
fn no_access(verb: &str, resource: &str) -> Status {
    denied(format!(
        "access denied to perform action {verb:?} on {resource:?}"
    ))
}

fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

/// `/proto.AuthService/GetRole`: the role as RoleV6. A caller reads only roles it holds.
/// A bot's role `bot-NAME` allows impersonating the bot's roles; other roles carry their logins.
pub fn get_role(st: &State, caller: &TlsIdentity, name: &str) -> Result<RoleV6, Status> {
    if !caller.groups.iter().any(|g| g == name) {
        return Err(no_access("read", "role"));
    }
    let not_found = || Status::not_found(format!("role {name} is not found"));
    let allow = if let Some(bot) = name.strip_prefix("bot-") {
        let bot = st.bots.get(bot).ok_or_else(not_found)?;
        RoleConditions {
            logins: vec![],
            impersonate: Some(ImpersonateConditions {
                users: vec![],
                roles: bot.roles.clone(),
                r#where: String::new(),
            }),
        }
    } else {
        let role = st.roles.get(name).ok_or_else(not_found)?;
        RoleConditions {
            logins: role.logins.clone(),
            impersonate: None,
        }
    };
    Ok(RoleV6 {
        kind: "role".into(),
        sub_kind: String::new(),
        version: "v7".into(),
        metadata: Some(Metadata::named(name)),
        spec: Some(RoleSpecV6 {
            allow: Some(allow),
            deny: Some(RoleConditions::default()),
        }),
    })
}

fn ca_kind(t: &str) -> Result<Option<CaKind>, Status> {
    let kind = match t {
        "host" => CaKind::Host,
        "user" => CaKind::User,
        "db" => CaKind::Db,
        "openssh" => CaKind::OpenSsh,
        other if KNOWN_CA_TYPES.contains(&other) => return Ok(None),
        other => {
            return Err(Status::invalid_argument(format!(
                "{other:?} authority type is not supported"
            )))
        }
    };
    Ok(Some(kind))
}

/// A CA as `CertAuthorityV2`, public parts only: the active keys and the additional trusted
/// ones (a rotation), each SSH key as an authorized_keys line with its newline.
pub fn cert_authority(cluster: &str, ca: &Authority) -> Result<CertAuthorityV2, Status> {
    // The halves each type has in Teleport: the db CA signs TLS only, the openssh CA SSH only.
    let (has_ssh, has_tls) = match ca.kind {
        CaKind::Db => (false, true),
        CaKind::OpenSsh => (true, false),
        CaKind::User | CaKind::Host => (true, true),
    };
    let set = |k: &crate::ca::KeySet| -> Result<CaKeySet, Status> {
        let mut out = CaKeySet::default();
        if has_ssh {
            out.ssh.push(SshKeyPair {
                public_key: format!("{}\n", k.ssh_public_line().map_err(internal)?).into_bytes(),
                private_key: vec![],
            });
        }
        if has_tls {
            out.tls.push(TlsKeyPair {
                cert: k.tls_cert_pem.clone().into_bytes(),
                key: vec![],
            });
        }
        Ok(out)
    };
    let rotating = ca.phase != "standby";
    Ok(CertAuthorityV2 {
        kind: "cert_authority".into(),
        sub_kind: ca.kind.name().into(),
        version: "v2".into(),
        metadata: Some(Metadata::named(cluster)),
        spec: Some(CertAuthoritySpecV2 {
            r#type: ca.kind.name().into(),
            cluster_name: cluster.into(),
            rotation: Some(Rotation {
                state: if rotating { "in_progress" } else { "standby" }.into(),
                phase: ca.phase.clone(),
                mode: if rotating { "manual" } else { "" }.into(),
                current_id: String::new(),
            }),
            active_keys: Some(set(&ca.active)?),
            additional_trusted_keys: Some(match &ca.additional {
                Some(k) => set(k)?,
                None => CaKeySet::default(),
            }),
        }),
    })
}

/// Every cluster's CAs the caller can see: this cluster's, then each leaf cluster's.
pub type Clusters<'a> = &'a [&'a ClusterCas];

fn check_no_keys(include_key: bool) -> Result<(), Status> {
    if include_key {
        return Err(no_access("read", "cert_authority"));
    }
    Ok(())
}

/// `/teleport.trust.v1.TrustService/GetCertAuthority`.
pub fn get_cert_authority(
    clusters: Clusters,
    req: &GetCertAuthorityRequest,
) -> Result<CertAuthorityV2, Status> {
    let kind = ca_kind(&req.r#type)?;
    check_no_keys(req.include_key)?;
    let not_found = || {
        Status::not_found(format!(
            "key \"/authorities/{}/{}\" is not found",
            req.r#type, req.domain
        ))
    };
    let kind = kind.ok_or_else(not_found)?;
    let cas = clusters
        .iter()
        .find(|c| c.cluster == req.domain)
        .ok_or_else(not_found)?;
    cert_authority(&cas.cluster, cas.get(kind))
}

/// `/teleport.trust.v1.TrustService/GetCertAuthorities`: the CAs of a type of every cluster.
pub fn get_cert_authorities(
    clusters: Clusters,
    req: &GetCertAuthoritiesRequest,
) -> Result<GetCertAuthoritiesResponse, Status> {
    let kind = ca_kind(&req.r#type)?;
    check_no_keys(req.include_key)?;
    let mut out = Vec::new();
    if let Some(kind) = kind {
        for c in clusters {
            out.push(cert_authority(&c.cluster, c.get(kind))?);
        }
    }
    Ok(GetCertAuthoritiesResponse {
        cert_authorities_v2: out,
    })
}

/// `/proto.AuthService/GetClusterCACert`: the PEM of this cluster's host CA TLS certificates
/// (every trusted one), which Auth's own certificate chains to.
pub fn get_cluster_ca_cert(cas: &ClusterCas) -> GetClusterCaCertResponse {
    GetClusterCaCertResponse {
        tls_ca: cas.host.trusted_tls_pems().concat().into_bytes(),
    }
}

/// `/proto.AuthService/GetAuthPreference`: the suite; an unspecified suite is left unset.
pub fn get_auth_preference(cas: &ClusterCas) -> AuthPreferenceV2 {
    AuthPreferenceV2 {
        kind: "cluster_auth_preference".into(),
        sub_kind: String::new(),
        version: "v2".into(),
        metadata: Some(Metadata::named("cluster-auth-preference")),
        spec: Some(AuthPreferenceSpecV2 {
            r#type: "local".into(),
            signature_algorithm_suite: cas.suite as i32,
        }),
    }
}

/// `/teleport.presence.v1.PresenceService/ListRemoteClusters`: the leaf clusters, one page.
pub fn list_remote_clusters(
    leaves: &[String],
    req: &ListRemoteClustersRequest,
) -> Result<ListRemoteClustersResponse, Status> {
    if req.page_size < 0 {
        return Err(Status::invalid_argument("page_size must not be negative"));
    }
    let start = if req.page_token.is_empty() {
        0
    } else {
        leaves
            .iter()
            .position(|l| *l == req.page_token)
            .ok_or_else(|| Status::invalid_argument("invalid page token"))?
    };
    let size = match req.page_size {
        0 => 1000,
        n => n as usize,
    };
    let page: Vec<_> = leaves.iter().skip(start).take(size).collect();
    let next = leaves.get(start + page.len()).cloned().unwrap_or_default();
    Ok(ListRemoteClustersResponse {
        remote_clusters: page
            .into_iter()
            .map(|name| RemoteClusterV3 {
                kind: "remote_cluster".into(),
                sub_kind: String::new(),
                version: "v3".into(),
                metadata: Some(Metadata::named(name)),
                status: Some(RemoteClusterStatusV3 {
                    connection: "online".into(),
                }),
            })
            .collect(),
        next_page_token: next,
    })
}

/// `/teleport.machineid.v1.BotInstanceService/SubmitHeartbeat`: recorded on the caller's bot
/// instance (the server's clock, not `recorded_at`). Only a bot instance may submit.
pub fn submit_heartbeat(
    dir: &std::path::Path,
    caller: &TlsIdentity,
    req: &SubmitHeartbeatRequest,
    now: SystemTime,
) -> Result<(), Status> {
    if caller.bot_name.is_empty() || caller.bot_instance_id.is_empty() {
        return Err(denied(
            "identity did not contain bot name or instance id".into(),
        ));
    }
    let hb = req
        .heartbeat
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("heartbeat: must be non-nil"))?;
    let record = Heartbeat {
        at: humantime::format_rfc3339_seconds(now).to_string(),
        is_startup: hb.is_startup,
        one_shot: hb.one_shot,
        version: hb.version.clone(),
        hostname: hb.hostname.clone(),
        join_method: hb.join_method.clone(),
        os: hb.os.clone(),
        architecture: hb.architecture.clone(),
        uptime_secs: hb.uptime.map(|u| u.seconds.max(0) as u64).unwrap_or(0),
    };
    let name = caller.bot_name.clone();
    let instance = caller.bot_instance_id.clone();
    State::modify(dir, |st| {
        let Some(bot) = st.bots.get_mut(&name) else {
            return Ok(Err(Status::not_found(format!(
                "bot_instance {name}/{instance} is not found"
            ))));
        };
        if bot.instance_id != instance {
            return Ok(Err(Status::not_found(format!(
                "bot_instance {name}/{instance} is not found"
            ))));
        }
        bot.heartbeats.push(record);
        // Teleport keeps the first heartbeat and the latest ten.
        if bot.heartbeats.len() > 11 {
            bot.heartbeats.remove(1);
        }
        Ok(Ok(()))
    })
    .map_err(internal)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Bot;
    use tonic::Code;

    fn state() -> State {
        let mut st = State::default();
        st.roles
            .insert("access".into(), crate::state::Role::access());
        st.bots.insert(
            "ci".into(),
            Bot {
                roles: vec!["access".into()],
                logins: vec!["root".into()],
                generation: 1,
                locked: None,
                instance_id: "inst-1".into(),
                heartbeats: vec![],
            },
        );
        st
    }

    fn holder(roles: &[&str]) -> TlsIdentity {
        TlsIdentity {
            username: "bot-ci".into(),
            groups: roles.iter().map(|r| r.to_string()).collect(),
            bot_name: "ci".into(),
            bot_instance_id: "inst-1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_bot_reads_its_own_role_and_nothing_else() {
        let st = state();
        let role = get_role(&st, &holder(&["bot-ci"]), "bot-ci").unwrap();
        assert_eq!(role.impersonate_roles(), ["access".to_string()]);
        assert_eq!(role.metadata.unwrap().name, "bot-ci");
        let err = get_role(&st, &holder(&["bot-ci"]), "access").unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(
            err.message(),
            r#"access denied to perform action "read" on "role""#
        );
        // An output identity holds `access` and reads it.
        let access = get_role(&st, &holder(&["access"]), "access").unwrap();
        assert!(access.impersonate_roles().is_empty());
        let err = get_role(&st, &holder(&["bot-gone"]), "bot-gone").unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), "role bot-gone is not found");
    }

    #[test]
    fn cert_authorities_public_parts_with_teleport_refusals() {
        let d = tempfile::tempdir().unwrap();
        let cas = ClusterCas::create(&d.path().join("ca"), "root.test").unwrap();
        let req = |t: &str, domain: &str, include_key: bool| GetCertAuthorityRequest {
            r#type: t.into(),
            domain: domain.into(),
            include_key,
        };
        let ca = get_cert_authority(&[&cas], &req("host", "root.test", false)).unwrap();
        assert_eq!(ca.kind, "cert_authority");
        assert_eq!(ca.cluster_name(), "root.test");
        let keys = ca.trusted_ssh_keys();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            std::str::from_utf8(keys[0]).unwrap(),
            format!("{}\n", cas.host.ssh_public_line().unwrap())
        );
        assert_eq!(ca.trusted_tls_certs(), [cas.host.tls_cert_pem.as_bytes()]);
        // No private key ever leaves.
        let spec = ca.spec.unwrap();
        let active = spec.active_keys.unwrap();
        assert!(active.ssh[0].private_key.is_empty() && active.tls[0].key.is_empty());

        let err = get_cert_authority(&[&cas], &req("nope", "root.test", false)).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.message(), r#""nope" authority type is not supported"#);
        let err = get_cert_authority(&[&cas], &req("host", "other.test", false)).unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(
            err.message(),
            r#"key "/authorities/host/other.test" is not found"#
        );
        let err = get_cert_authority(&[&cas], &req("host", "root.test", true)).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        // A known type this cluster does not have: not found, not "unsupported".
        let err = get_cert_authority(&[&cas], &req("spiffe", "root.test", false)).unwrap_err();
        assert_eq!(err.code(), Code::NotFound);

        let all = get_cert_authorities(
            &[&cas],
            &GetCertAuthoritiesRequest {
                r#type: "db".into(),
                include_key: false,
            },
        )
        .unwrap();
        assert_eq!(all.cert_authorities_v2.len(), 1);
        assert_eq!(
            all.cert_authorities_v2[0].trusted_tls_certs(),
            [cas.db.tls_cert_pem.as_bytes()]
        );
        // The db CA has no SSH half.
        assert!(all.cert_authorities_v2[0].trusted_ssh_keys().is_empty());
        assert_eq!(
            get_cluster_ca_cert(&cas).tls_ca,
            cas.host.tls_cert_pem.as_bytes()
        );
        assert_eq!(
            get_auth_preference(&cas).suite(),
            idmux_wire::resources::SignatureAlgorithmSuite::BalancedV1
        );
    }

    #[test]
    fn remote_clusters_page() {
        let leaves: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let first = list_remote_clusters(
            &leaves,
            &ListRemoteClustersRequest {
                page_size: 2,
                page_token: String::new(),
            },
        )
        .unwrap();
        let names: Vec<_> = first
            .remote_clusters
            .iter()
            .map(|c| c.metadata.as_ref().unwrap().name.clone())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(first.next_page_token, "c");
        let rest = list_remote_clusters(
            &leaves,
            &ListRemoteClustersRequest {
                page_size: 2,
                page_token: "c".into(),
            },
        )
        .unwrap();
        assert_eq!(rest.remote_clusters.len(), 1);
        assert!(rest.next_page_token.is_empty());
        assert!(
            list_remote_clusters(&[], &ListRemoteClustersRequest::default())
                .unwrap()
                .remote_clusters
                .is_empty()
        );
    }

    #[test]
    fn heartbeats_are_recorded_on_the_instance() {
        let d = tempfile::tempdir().unwrap();
        State::modify(d.path(), |s| {
            *s = state();
            Ok(())
        })
        .unwrap();
        let beat = |startup: bool| SubmitHeartbeatRequest {
            heartbeat: Some(idmux_wire::services::BotInstanceStatusHeartbeat {
                is_startup: startup,
                hostname: "ci-runner".into(),
                version: "0.1.0".into(),
                ..Default::default()
            }),
        };
        let now = SystemTime::now();
        for i in 0..15 {
            submit_heartbeat(d.path(), &holder(&["bot-ci"]), &beat(i == 0), now).unwrap();
        }
        let st = State::load(d.path()).unwrap();
        let hb = &st.bots["ci"].heartbeats;
        assert_eq!(hb.len(), 11, "the first and the latest ten");
        assert!(hb[0].is_startup && !hb[1].is_startup);
        assert_eq!(hb[10].hostname, "ci-runner");
        // Not a bot instance, or an instance that was replaced: refused, nothing recorded.
        let mut human = holder(&["access"]);
        human.bot_instance_id.clear();
        let err = submit_heartbeat(d.path(), &human, &beat(false), now).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let mut old = holder(&["bot-ci"]);
        old.bot_instance_id = "inst-0".into();
        let err = submit_heartbeat(d.path(), &old, &beat(false), now).unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = submit_heartbeat(
            d.path(),
            &holder(&["bot-ci"]),
            &SubmitHeartbeatRequest { heartbeat: None },
            now,
        )
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
}
