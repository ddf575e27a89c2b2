//! Teleport's resources as its gRPC services send them (`types.*` in
//! `api/proto/teleport/legacy/types/types.proto`), hand-written with Teleport's field numbers:
//! the bot role (`RoleV6`, down to `allow.impersonate.roles`), certificate authorities
//! (`CertAuthorityV2` with active and additional trusted keys), remote (leaf) clusters
//! (`RemoteClusterV3`) and the cluster's auth preference (`AuthPreferenceV2`, for the signature
//! algorithm suite).
//!
//! Every resource has the same head: Kind=1, SubKind=2, Version=3, Metadata=4, Spec=5 (Status=6
//! where there is one). Only the fields idmux reads or writes are declared; decoders skip the
//! others. Field numbers are on the wire forever: never renumber a field here.

/// `types.Metadata`: Name=1, Namespace=2, Description=3, Labels=5, Expires=6, Revision=8.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Metadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(string, tag = "3")]
    pub description: String,
}

impl Metadata {
    /// Metadata naming a resource in the default namespace.
    pub fn named(name: &str) -> Metadata {
        Metadata {
            name: name.to_string(),
            namespace: "default".to_string(),
            description: String::new(),
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Roles: RoleV6 -> Spec (5) -> Allow (2) -> Impersonate (14) -> Roles (2).

/// `types.RoleV6`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RoleV6 {
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(string, tag = "2")]
    pub sub_kind: String,
    #[prost(string, tag = "3")]
    pub version: String,
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<Metadata>,
    #[prost(message, optional, tag = "5")]
    pub spec: Option<RoleSpecV6>,
}

/// `types.RoleSpecV6`: Options=1, Allow=2, Deny=3.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RoleSpecV6 {
    #[prost(message, optional, tag = "2")]
    pub allow: Option<RoleConditions>,
    #[prost(message, optional, tag = "3")]
    pub deny: Option<RoleConditions>,
}

/// `types.RoleConditions`: Logins=1, ..., Impersonate=14.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RoleConditions {
    #[prost(string, repeated, tag = "1")]
    pub logins: Vec<String>,
    #[prost(message, optional, tag = "14")]
    pub impersonate: Option<ImpersonateConditions>,
}

/// `types.ImpersonateConditions`: Users=1, Roles=2, Where=3.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ImpersonateConditions {
    #[prost(string, repeated, tag = "1")]
    pub users: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub roles: Vec<String>,
    #[prost(string, tag = "3")]
    pub r#where: String,
}

impl RoleV6 {
    /// `allow.impersonate.roles` (what tbot's outputs default to), empty when unset.
    pub fn impersonate_roles(&self) -> Vec<String> {
        self.spec
            .as_ref()
            .and_then(|s| s.allow.as_ref())
            .and_then(|a| a.impersonate.as_ref())
            .map(|i| i.roles.clone())
            .unwrap_or_default()
    }
}

// ----------------------------------------------------------------------------------------------
// Certificate authorities.

/// `types.CertAuthorityV2`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CertAuthorityV2 {
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(string, tag = "2")]
    pub sub_kind: String,
    #[prost(string, tag = "3")]
    pub version: String,
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<Metadata>,
    #[prost(message, optional, tag = "5")]
    pub spec: Option<CertAuthoritySpecV2>,
}

/// `types.CertAuthoritySpecV2`: Type=1, ClusterName=2, Roles=5, RoleMap=6, Rotation=8,
/// SigningAlg=9, ActiveKeys=11, AdditionalTrustedKeys=12 (3, 4, 7, 10 reserved).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CertAuthoritySpecV2 {
    /// `host`, `user`, `db`, `openssh`, ...
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(string, tag = "2")]
    pub cluster_name: String,
    #[prost(message, optional, tag = "8")]
    pub rotation: Option<Rotation>,
    #[prost(message, optional, tag = "11")]
    pub active_keys: Option<CaKeySet>,
    #[prost(message, optional, tag = "12")]
    pub additional_trusted_keys: Option<CaKeySet>,
}

/// `types.Rotation`: State=1, Phase=2, Mode=3, CurrentID=4, Started=5, GracePeriod=6,
/// LastRotated=7, Schedule=8. Only what `tctl status` shows is declared.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Rotation {
    /// `standby` or `in_progress`.
    #[prost(string, tag = "1")]
    pub state: String,
    /// `standby`, `init`, `update_clients`, `update_servers`, `rollback`.
    #[prost(string, tag = "2")]
    pub phase: String,
    /// `manual` or `auto`.
    #[prost(string, tag = "3")]
    pub mode: String,
    #[prost(string, tag = "4")]
    pub current_id: String,
}

/// `types.CAKeySet`: SSH=1, TLS=2, JWT=3.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CaKeySet {
    #[prost(message, repeated, tag = "1")]
    pub ssh: Vec<SshKeyPair>,
    #[prost(message, repeated, tag = "2")]
    pub tls: Vec<TlsKeyPair>,
}

/// `types.SSHKeyPair`: PublicKey=1 (an authorized_keys line), PrivateKey=2, PrivateKeyType=3.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SshKeyPair {
    #[prost(bytes = "vec", tag = "1")]
    pub public_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub private_key: Vec<u8>,
}

/// `types.TLSKeyPair`: Cert=1 (PEM), Key=2, KeyType=3.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TlsKeyPair {
    #[prost(bytes = "vec", tag = "1")]
    pub cert: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
}

impl CertAuthorityV2 {
    fn key_sets(&self) -> impl Iterator<Item = &CaKeySet> {
        let spec = self.spec.as_ref();
        spec.and_then(|s| s.active_keys.as_ref())
            .into_iter()
            .chain(spec.and_then(|s| s.additional_trusted_keys.as_ref()))
    }

    /// The trusted SSH public keys, active first, then additional trusted (a rotation has
    /// both), as `services.GetSSHCheckingKeys` lists them.
    pub fn trusted_ssh_keys(&self) -> Vec<&[u8]> {
        self.key_sets()
            .flat_map(|k| k.ssh.iter().map(|p| p.public_key.as_slice()))
            .collect()
    }

    /// The trusted TLS certificates (PEM), active first, as `services.GetTLSCerts` lists them.
    pub fn trusted_tls_certs(&self) -> Vec<&[u8]> {
        self.key_sets()
            .flat_map(|k| k.tls.iter().map(|p| p.cert.as_slice()))
            .collect()
    }

    /// The cluster this CA belongs to.
    pub fn cluster_name(&self) -> &str {
        self.spec
            .as_ref()
            .map(|s| s.cluster_name.as_str())
            .unwrap_or("")
    }
}

// ----------------------------------------------------------------------------------------------
// Remote clusters and the auth preference.

/// `types.RemoteClusterV3`: Kind=1, SubKind=2, Version=3, Metadata=4, Status=5.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RemoteClusterV3 {
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(string, tag = "2")]
    pub sub_kind: String,
    #[prost(string, tag = "3")]
    pub version: String,
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<Metadata>,
    #[prost(message, optional, tag = "5")]
    pub status: Option<RemoteClusterStatusV3>,
}

/// `types.RemoteClusterStatusV3`: Connection=1 (`online`/`offline`), LastHeartbeat=2.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RemoteClusterStatusV3 {
    #[prost(string, tag = "1")]
    pub connection: String,
}

/// `types.AuthPreferenceV2`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuthPreferenceV2 {
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(string, tag = "2")]
    pub sub_kind: String,
    #[prost(string, tag = "3")]
    pub version: String,
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<Metadata>,
    #[prost(message, optional, tag = "5")]
    pub spec: Option<AuthPreferenceSpecV2>,
}

/// `types.AuthPreferenceSpecV2`: Type=1, SecondFactor=2, ..., SignatureAlgorithmSuite=20.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuthPreferenceSpecV2 {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(enumeration = "SignatureAlgorithmSuite", tag = "20")]
    pub signature_algorithm_suite: i32,
}

/// `types.SignatureAlgorithmSuite`. Unspecified is treated as legacy (`lib/cryptosuites`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SignatureAlgorithmSuite {
    Unspecified = 0,
    Legacy = 1,
    BalancedV1 = 2,
    FipsV1 = 3,
    HsmV1 = 4,
}

impl SignatureAlgorithmSuite {
    /// The name ping and the config use (`legacy`, `balanced-v1`, ...); empty when unspecified.
    pub fn name(self) -> &'static str {
        match self {
            SignatureAlgorithmSuite::Unspecified => "",
            SignatureAlgorithmSuite::Legacy => "legacy",
            SignatureAlgorithmSuite::BalancedV1 => "balanced-v1",
            SignatureAlgorithmSuite::FipsV1 => "fips-v1",
            SignatureAlgorithmSuite::HsmV1 => "hsm-v1",
        }
    }

    /// Parse a suite name.
    pub fn from_name(s: &str) -> Option<SignatureAlgorithmSuite> {
        [
            SignatureAlgorithmSuite::Legacy,
            SignatureAlgorithmSuite::BalancedV1,
            SignatureAlgorithmSuite::FipsV1,
            SignatureAlgorithmSuite::HsmV1,
        ]
        .into_iter()
        .find(|x| x.name() == s)
    }
}

impl AuthPreferenceV2 {
    /// The cluster's suite (unknown numbers count as unspecified).
    pub fn suite(&self) -> SignatureAlgorithmSuite {
        self.spec
            .as_ref()
            .and_then(|s| SignatureAlgorithmSuite::try_from(s.signature_algorithm_suite).ok())
            .unwrap_or(SignatureAlgorithmSuite::Unspecified)
    }
}

#[cfg(test)]
mod tests {
    //! Byte vectors written by hand from Teleport's field numbers (key byte =
    //! `field << 3 | wire type`), not produced by our encoder.
    use super::*;
    use prost::Message;

    fn md(name: &str) -> Option<Metadata> {
        Some(Metadata {
            name: name.into(),
            ..Default::default()
        })
    }

    #[test]
    fn metadata_on_the_wire() {
        // Metadata.Name=1 (0x0a), Namespace=2 (0x12); empty Description=3 is left out.
        assert_eq!(
            Metadata::named("bot").encode_to_vec(),
            [&[0x0a, 3][..], b"bot", &[0x12, 7], b"default"].concat()
        );
        // Description=3 (0x1a); Revision=8 (0x42) and field 15 (varint, 0x78) are skipped.
        let b = [
            &[0x0a, 1, b'n', 0x1a, 1, b'd', 0x42, 2][..],
            b"r1",
            &[0x78, 1],
        ]
        .concat();
        assert_eq!(
            Metadata::decode(&b[..]).unwrap(),
            Metadata {
                name: "n".into(),
                namespace: String::new(),
                description: "d".into(),
            }
        );
    }

    #[test]
    fn role_v6_encode() {
        let role = RoleV6 {
            kind: "role".into(),
            sub_kind: String::new(),
            version: "v7".into(),
            metadata: Some(Metadata::named("bot-ci")),
            spec: Some(RoleSpecV6 {
                allow: Some(RoleConditions {
                    logins: vec!["root".into()],
                    impersonate: Some(ImpersonateConditions {
                        users: vec![],
                        roles: vec!["access".into(), "editor".into()],
                        r#where: String::new(),
                    }),
                }),
                deny: None,
            }),
        };
        let want = [
            // RoleV6.Kind=1, Version=3.
            &[0x0a, 4][..],
            b"role",
            &[0x1a, 2],
            b"v7",
            // RoleV6.Metadata=4 -> Name=1, Namespace=2.
            &[0x22, 17, 0x0a, 6],
            b"bot-ci",
            &[0x12, 7],
            b"default",
            // RoleV6.Spec=5 -> RoleSpecV6.Allow=2 -> RoleConditions.Logins=1.
            &[0x2a, 26, 0x12, 24, 0x0a, 4],
            b"root",
            // RoleV6.Spec=5 -> RoleSpecV6.Allow=2 -> RoleConditions.Impersonate=14 ->
            // ImpersonateConditions.Roles=2 (twice).
            &[0x72, 16, 0x12, 6],
            b"access",
            &[0x12, 6],
            b"editor",
        ]
        .concat();
        assert_eq!(role.encode_to_vec(), want);
        let back = RoleV6::decode(&want[..]).unwrap();
        assert_eq!(back.impersonate_roles(), ["access", "editor"]);
        assert_eq!(back, role);
    }

    #[test]
    fn role_v6_decode_skips_unknown_fields() {
        let b = [
            &[0x0a, 4][..],
            b"role",
            // RoleV6.Spec=5 -> RoleSpecV6.Options=1 (not declared: skipped), holding field 1 = 1.
            &[0x2a, 11, 0x0a, 2, 0x08, 1],
            // RoleV6.Spec=5 -> RoleSpecV6.Allow=2 -> RoleConditions.Impersonate=14 ->
            // ImpersonateConditions.Roles=2.
            &[0x12, 5, 0x72, 3, 0x12, 1, b'a'],
            // Field 9 (varint, 0x48): not in RoleV6, skipped.
            &[0x48, 1],
        ]
        .concat();
        let role = RoleV6::decode(&b[..]).unwrap();
        assert_eq!(role.kind, "role");
        assert_eq!(role.impersonate_roles(), ["a"]);
        // RoleV6 with only Kind=1: no spec, no roles.
        let bare = RoleV6::decode(&[&[0x0a, 4][..], b"role"].concat()[..]).unwrap();
        assert!(bare.spec.is_none());
        assert!(bare.impersonate_roles().is_empty());
        // RoleV6.Spec=5 -> RoleSpecV6.Allow=2 -> RoleConditions.Logins=1, no Impersonate=14.
        let no_imp = RoleV6::decode(&[0x2a, 5, 0x12, 3, 0x0a, 1, b'u'][..]).unwrap();
        assert!(no_imp.impersonate_roles().is_empty());
    }

    #[test]
    fn cert_authority_spec_encode() {
        let spec = CertAuthoritySpecV2 {
            r#type: "user".into(),
            cluster_name: "c".into(),
            rotation: Some(Rotation {
                state: "in_progress".into(),
                phase: "init".into(),
                mode: "auto".into(),
                current_id: "id".into(),
            }),
            active_keys: Some(CaKeySet {
                ssh: vec![SshKeyPair {
                    public_key: b"P".to_vec(),
                    private_key: b"S".to_vec(),
                }],
                tls: vec![],
            }),
            additional_trusted_keys: Some(CaKeySet {
                ssh: vec![],
                tls: vec![TlsKeyPair {
                    cert: b"C".to_vec(),
                    key: vec![],
                }],
            }),
        };
        let want = [
            // CertAuthoritySpecV2.Type=1, ClusterName=2.
            &[0x0a, 4][..],
            b"user",
            &[0x12, 1, b'c'],
            // CertAuthoritySpecV2.Rotation=8 (0x42) -> State=1, Phase=2, Mode=3, CurrentID=4.
            &[0x42, 29, 0x0a, 11],
            b"in_progress",
            &[0x12, 4],
            b"init",
            &[0x1a, 4],
            b"auto",
            &[0x22, 2],
            b"id",
            // CertAuthoritySpecV2.ActiveKeys=11 (0x5a) -> CAKeySet.SSH=1 ->
            // SSHKeyPair.PublicKey=1, PrivateKey=2.
            &[0x5a, 8, 0x0a, 6, 0x0a, 1, b'P', 0x12, 1, b'S'],
            // CertAuthoritySpecV2.AdditionalTrustedKeys=12 (0x62) -> CAKeySet.TLS=2 ->
            // TLSKeyPair.Cert=1.
            &[0x62, 5, 0x12, 3, 0x0a, 1, b'C'],
        ]
        .concat();
        assert_eq!(spec.encode_to_vec(), want);
        assert_eq!(CertAuthoritySpecV2::decode(&want[..]).unwrap(), spec);
    }

    #[test]
    fn cert_authority_decode_active_then_additional() {
        let b = [
            // CertAuthorityV2.Kind=1, Version=3, Metadata=4 -> Name=1.
            &[0x0a, 14][..],
            b"cert_authority",
            &[0x1a, 2],
            b"v2",
            &[0x22, 13, 0x0a, 11],
            b"example.com",
            // CertAuthorityV2.Spec=5 -> CertAuthoritySpecV2.Type=1, ClusterName=2.
            &[0x2a, 65, 0x0a, 4],
            b"host",
            &[0x12, 11],
            b"example.com",
            // CertAuthoritySpecV2.SigningAlg=9 (varint, 0x48): not declared, skipped.
            &[0x48, 1],
            // CertAuthoritySpecV2.ActiveKeys=11 (0x5a) -> CAKeySet.SSH=1 -> PublicKey=1.
            &[0x5a, 22, 0x0a, 4, 0x0a, 2],
            b"A1",
            // ... -> CAKeySet.TLS=2 -> TLSKeyPair.Cert=1, Key=2.
            &[0x12, 8, 0x0a, 2],
            b"T1",
            &[0x12, 2],
            b"K1",
            // ... -> CAKeySet.JWT=3: not declared, skipped.
            &[0x1a, 4, 0x0a, 2],
            b"J1",
            // CertAuthoritySpecV2.AdditionalTrustedKeys=12 (0x62) -> CAKeySet.SSH=1 (twice) ->
            // PublicKey=1.
            &[0x62, 18, 0x0a, 4, 0x0a, 2],
            b"A2",
            &[0x0a, 4, 0x0a, 2],
            b"A3",
            // ... -> CAKeySet.TLS=2 -> TLSKeyPair.Cert=1.
            &[0x12, 4, 0x0a, 2],
            b"T2",
        ]
        .concat();
        let ca = CertAuthorityV2::decode(&b[..]).unwrap();
        let pk = |k: &[u8]| SshKeyPair {
            public_key: k.to_vec(),
            private_key: vec![],
        };
        assert_eq!(
            ca,
            CertAuthorityV2 {
                kind: "cert_authority".into(),
                sub_kind: String::new(),
                version: "v2".into(),
                metadata: md("example.com"),
                spec: Some(CertAuthoritySpecV2 {
                    r#type: "host".into(),
                    cluster_name: "example.com".into(),
                    rotation: None,
                    active_keys: Some(CaKeySet {
                        ssh: vec![pk(b"A1")],
                        tls: vec![TlsKeyPair {
                            cert: b"T1".to_vec(),
                            key: b"K1".to_vec(),
                        }],
                    }),
                    additional_trusted_keys: Some(CaKeySet {
                        ssh: vec![pk(b"A2"), pk(b"A3")],
                        tls: vec![TlsKeyPair {
                            cert: b"T2".to_vec(),
                            key: vec![],
                        }],
                    }),
                }),
            }
        );
        assert_eq!(ca.trusted_ssh_keys(), [b"A1", b"A2", b"A3"]);
        assert_eq!(ca.trusted_tls_certs(), [b"T1", b"T2"]);
        assert_eq!(ca.cluster_name(), "example.com");
        // No spec: nothing trusted, no cluster name.
        let empty = CertAuthorityV2::default();
        assert!(empty.trusted_ssh_keys().is_empty());
        assert!(empty.trusted_tls_certs().is_empty());
        assert_eq!(empty.cluster_name(), "");
    }

    #[test]
    fn remote_cluster_on_the_wire() {
        let rc = RemoteClusterV3 {
            kind: "remote_cluster".into(),
            sub_kind: String::new(),
            version: "v3".into(),
            metadata: md("leaf"),
            status: Some(RemoteClusterStatusV3 {
                connection: "online".into(),
            }),
        };
        let want = [
            // RemoteClusterV3.Kind=1, Version=3, Metadata=4 -> Name=1.
            &[0x0a, 14][..],
            b"remote_cluster",
            &[0x1a, 2],
            b"v3",
            &[0x22, 6, 0x0a, 4],
            b"leaf",
            // RemoteClusterV3.Status=5 -> RemoteClusterStatusV3.Connection=1.
            &[0x2a, 8, 0x0a, 6],
            b"online",
        ]
        .concat();
        assert_eq!(rc.encode_to_vec(), want);
        // RemoteClusterV3.Status=5 -> Connection=1, LastHeartbeat=2 (not declared, skipped).
        let b = [&[0x2a, 13, 0x0a, 7][..], b"offline", &[0x12, 2, 0x08, 1]].concat();
        assert_eq!(
            RemoteClusterV3::decode(&b[..])
                .unwrap()
                .status
                .unwrap()
                .connection,
            "offline"
        );
    }

    /// AuthPreferenceV2 with Version=3 and Spec=5 -> AuthPreferenceSpecV2.Type=1,
    /// SecondFactor=2 (not declared, skipped), signature_algorithm_suite=20 (0xa0 0x01) = `suite`.
    fn auth_pref(suite: u8) -> Vec<u8> {
        [
            &[0x1a, 2][..],
            b"v2",
            &[0x2a, 14, 0x0a, 5],
            b"local",
            &[0x12, 2],
            b"on",
            &[0xa0, 0x01, suite],
        ]
        .concat()
    }

    #[test]
    fn auth_preference_suite() {
        let legacy = AuthPreferenceV2::decode(&auth_pref(1)[..]).unwrap();
        assert_eq!(legacy.version, "v2");
        assert_eq!(
            legacy.spec,
            Some(AuthPreferenceSpecV2 {
                r#type: "local".into(),
                signature_algorithm_suite: 1,
            })
        );
        assert_eq!(legacy.suite(), SignatureAlgorithmSuite::Legacy);
        let balanced = AuthPreferenceV2::decode(&auth_pref(2)[..]).unwrap();
        assert_eq!(balanced.suite(), SignatureAlgorithmSuite::BalancedV1);
        // A suite number we do not know counts as unspecified.
        let unknown = AuthPreferenceV2::decode(&auth_pref(9)[..]).unwrap();
        assert_eq!(unknown.suite(), SignatureAlgorithmSuite::Unspecified);
        // No Spec=5 at all.
        assert_eq!(
            AuthPreferenceV2::default().suite(),
            SignatureAlgorithmSuite::Unspecified
        );
        // AuthPreferenceSpecV2.signature_algorithm_suite=20 (varint): fips-v1 = 3.
        let fips = AuthPreferenceSpecV2 {
            r#type: String::new(),
            signature_algorithm_suite: SignatureAlgorithmSuite::FipsV1 as i32,
        };
        assert_eq!(fips.encode_to_vec(), [0xa0, 0x01, 3]);
    }

    #[test]
    fn suite_names() {
        use SignatureAlgorithmSuite::*;
        for (suite, name) in [
            (Legacy, "legacy"),
            (BalancedV1, "balanced-v1"),
            (FipsV1, "fips-v1"),
            (HsmV1, "hsm-v1"),
        ] {
            assert_eq!(suite.name(), name);
            assert_eq!(SignatureAlgorithmSuite::from_name(name), Some(suite));
        }
        assert_eq!(Unspecified.name(), "");
        assert_eq!(SignatureAlgorithmSuite::from_name(""), None);
        assert_eq!(SignatureAlgorithmSuite::from_name("Legacy"), None);
    }
}
