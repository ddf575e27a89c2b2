//! The requests and answers of the Teleport gRPC methods a bot calls besides
//! `GenerateUserCerts` ([`crate::proto`]), with their method paths and Teleport's field numbers:
//! - `proto.AuthService` (`api/proto/teleport/legacy/client/proto/authservice.proto`):
//!   `GetRole`, `GetClusterCACert`, `GetAuthPreference`, `Ping`;
//! - `teleport.trust.v1.TrustService` (`api/proto/teleport/trust/v1/trust_service.proto`):
//!   `GetCertAuthority`, `GetCertAuthorities`;
//! - `teleport.presence.v1.PresenceService` (`api/proto/teleport/presence/v1/service.proto`):
//!   `ListRemoteClusters`;
//! - `teleport.machineid.v1.BotInstanceService`
//!   (`api/proto/teleport/machineid/v1/bot_instance_service.proto`, `bot_instance.proto`):
//!   `SubmitHeartbeat`.
//!
//! Field numbers are on the wire forever: never renumber a field here.

use crate::proto::Timestamp;
use crate::resources::{CertAuthorityV2, RemoteClusterV3};

pub const GET_ROLE: &str = "/proto.AuthService/GetRole";
pub const GET_CLUSTER_CA_CERT: &str = "/proto.AuthService/GetClusterCACert";
pub const GET_AUTH_PREFERENCE: &str = "/proto.AuthService/GetAuthPreference";
pub const PING: &str = "/proto.AuthService/Ping";
pub const GET_CERT_AUTHORITY: &str = "/teleport.trust.v1.TrustService/GetCertAuthority";
pub const GET_CERT_AUTHORITIES: &str = "/teleport.trust.v1.TrustService/GetCertAuthorities";
pub const LIST_REMOTE_CLUSTERS: &str = "/teleport.presence.v1.PresenceService/ListRemoteClusters";
pub const SUBMIT_HEARTBEAT: &str = "/teleport.machineid.v1.BotInstanceService/SubmitHeartbeat";

/// `google.protobuf.Empty`: the request of `GetClusterCACert` and `GetAuthPreference`, the
/// answer of `SubmitHeartbeat`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Empty {}

/// `proto.GetRoleRequest { string Name = 1; }`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GetRoleRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `proto.GetClusterCACertResponse { bytes TLSCA = 1; }`: the PEM of the cluster's host CA TLS
/// certificates (`lib/auth` `GetClusterCACert`), which tbot adds to an impersonated identity's
/// CA list (whose own holds only the user CA).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GetClusterCaCertResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub tls_ca: Vec<u8>,
}

/// `proto.PingRequest {}`: Auth's `Ping` takes no parameters.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct PingRequest {}

/// `proto.PingResponse { string ClusterName = 1; string ServerVersion = 2; Features
/// ServerFeatures = 3; string ProxyPublicAddr = 4; bool IsBoring = 5; string RemoteAddr = 7;
/// bool LoadAllCAs = 8; }` (6 reserved): what a client of Auth addressed directly learns the
/// proxy's public address from (tbot's proxy ping with an auth address). `ServerFeatures` is
/// not read or sent here.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PingResponse {
    #[prost(string, tag = "1")]
    pub cluster_name: String,
    #[prost(string, tag = "2")]
    pub server_version: String,
    #[prost(string, tag = "4")]
    pub proxy_public_addr: String,
    #[prost(bool, tag = "5")]
    pub is_boring: bool,
    #[prost(string, tag = "7")]
    pub remote_addr: String,
    #[prost(bool, tag = "8")]
    pub load_all_cas: bool,
}

/// `teleport.trust.v1.GetCertAuthorityRequest { type = 1; domain = 2; include_key = 3; }`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GetCertAuthorityRequest {
    #[prost(string, tag = "1")]
    pub r#type: String,
    /// The cluster name.
    #[prost(string, tag = "2")]
    pub domain: String,
    #[prost(bool, tag = "3")]
    pub include_key: bool,
}

/// `teleport.trust.v1.GetCertAuthoritiesRequest { type = 1; include_key = 2; }`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GetCertAuthoritiesRequest {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(bool, tag = "2")]
    pub include_key: bool,
}

/// `teleport.trust.v1.GetCertAuthoritiesResponse { repeated CertAuthorityV2 cert_authorities_v2 = 1; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetCertAuthoritiesResponse {
    #[prost(message, repeated, tag = "1")]
    pub cert_authorities_v2: Vec<CertAuthorityV2>,
}

/// `teleport.presence.v1.ListRemoteClustersRequest { int32 page_size = 1; string page_token = 2; }`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ListRemoteClustersRequest {
    #[prost(int32, tag = "1")]
    pub page_size: i32,
    #[prost(string, tag = "2")]
    pub page_token: String,
}

/// `teleport.presence.v1.ListRemoteClustersResponse { repeated RemoteClusterV3 remote_clusters = 1; string next_page_token = 2; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListRemoteClustersResponse {
    #[prost(message, repeated, tag = "1")]
    pub remote_clusters: Vec<RemoteClusterV3>,
    #[prost(string, tag = "2")]
    pub next_page_token: String,
}

/// `google.protobuf.Duration`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `teleport.machineid.v1.BotInstanceStatusHeartbeat`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BotInstanceStatusHeartbeat {
    /// Ignored by the server (it stamps its own time).
    #[prost(message, optional, tag = "1")]
    pub recorded_at: Option<Timestamp>,
    #[prost(bool, tag = "2")]
    pub is_startup: bool,
    #[prost(string, tag = "3")]
    pub version: String,
    #[prost(string, tag = "4")]
    pub hostname: String,
    #[prost(message, optional, tag = "5")]
    pub uptime: Option<ProtoDuration>,
    #[prost(string, tag = "6")]
    pub join_method: String,
    #[prost(bool, tag = "7")]
    pub one_shot: bool,
    /// Go's GOARCH (`amd64`, `arm64`).
    #[prost(string, tag = "8")]
    pub architecture: String,
    /// Go's GOOS (`linux`).
    #[prost(string, tag = "9")]
    pub os: String,
}

/// `teleport.machineid.v1.SubmitHeartbeatRequest { BotInstanceStatusHeartbeat heartbeat = 1; }`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SubmitHeartbeatRequest {
    #[prost(message, optional, tag = "1")]
    pub heartbeat: Option<BotInstanceStatusHeartbeat>,
}

#[cfg(test)]
mod tests {
    //! Byte vectors written by hand from Teleport's field numbers (key byte =
    //! `field << 3 | wire type`), not produced by our encoder.
    use super::*;
    use crate::resources::{CertAuthoritySpecV2, Metadata, RemoteClusterStatusV3};
    use prost::Message;

    #[test]
    fn empty_is_zero_bytes() {
        assert!(Empty {}.encode_to_vec().is_empty());
        // Field 1 (varint, 0x08): not declared, skipped.
        assert_eq!(Empty::decode(&[0x08, 1][..]).unwrap(), Empty {});
    }

    #[test]
    fn ping_response() {
        // PingResponse.ClusterName=1 (0x0a), ServerVersion=2 (0x12), ServerFeatures=3 (0x1a,
        // a message, skipped), ProxyPublicAddr=4 (0x22), IsBoring=5 (0x28), RemoteAddr=7
        // (0x3a), LoadAllCAs=8 (0x40).
        let b = [
            &[0x0a, 3][..],
            b"dev",
            &[0x12, 2],
            b"18",
            &[0x1a, 2, 0x08, 1],
            &[0x22, 14],
            b"127.0.0.1:3080",
            &[0x28, 1],
            &[0x3a, 3],
            b"1.2",
            &[0x40, 1],
        ]
        .concat();
        let want = PingResponse {
            cluster_name: "dev".into(),
            server_version: "18".into(),
            proxy_public_addr: "127.0.0.1:3080".into(),
            is_boring: true,
            remote_addr: "1.2".into(),
            load_all_cas: true,
        };
        assert_eq!(PingResponse::decode(&b[..]).unwrap(), want);
        // Encoding leaves out ServerFeatures (not modelled) and nothing else.
        let without_features = [&b[..9], &b[13..]].concat();
        assert_eq!(want.encode_to_vec(), without_features);
        assert!(PingRequest {}.encode_to_vec().is_empty());
    }

    #[test]
    fn get_role_request() {
        // GetRoleRequest.Name=1.
        let req = GetRoleRequest {
            name: "bot-ci".into(),
        };
        assert_eq!(req.encode_to_vec(), [&[0x0a, 6][..], b"bot-ci"].concat());
    }

    #[test]
    fn get_cluster_ca_cert_response() {
        // GetClusterCACertResponse.TLSCA=1 (bytes); field 2 (varint, 0x10) is skipped.
        let b = [&[0x0a, 3][..], b"PEM", &[0x10, 1]].concat();
        assert_eq!(
            GetClusterCaCertResponse::decode(&b[..]).unwrap(),
            GetClusterCaCertResponse {
                tls_ca: b"PEM".to_vec()
            }
        );
    }

    #[test]
    fn get_cert_authority_request() {
        // GetCertAuthorityRequest.type=1, domain=2; include_key=3 false is left out.
        let mut req = GetCertAuthorityRequest {
            r#type: "host".into(),
            domain: "example.com".into(),
            include_key: false,
        };
        let want = [&[0x0a, 4][..], b"host", &[0x12, 11], b"example.com"].concat();
        assert_eq!(req.encode_to_vec(), want);
        // GetCertAuthorityRequest.include_key=3 (varint, 0x18).
        req.include_key = true;
        assert_eq!(req.encode_to_vec(), [&want[..], &[0x18, 1]].concat());
    }

    #[test]
    fn get_cert_authorities_request() {
        // GetCertAuthoritiesRequest.type=1, include_key=2 (varint, 0x10).
        let req = GetCertAuthoritiesRequest {
            r#type: "user".into(),
            include_key: true,
        };
        assert_eq!(
            req.encode_to_vec(),
            [&[0x0a, 4][..], b"user", &[0x10, 1]].concat()
        );
    }

    #[test]
    fn get_cert_authorities_response() {
        let b = [
            // GetCertAuthoritiesResponse.cert_authorities_v2=1 -> CertAuthorityV2.Spec=5 ->
            // CertAuthoritySpecV2.Type=1, ClusterName=2 (twice, in order).
            &[0x0a, 11, 0x2a, 9, 0x0a, 4][..],
            b"host",
            &[0x12, 1, b'a'],
            &[0x0a, 11, 0x2a, 9, 0x0a, 4],
            b"host",
            &[0x12, 1, b'b'],
            // Field 2 (varint, 0x10): not declared, skipped.
            &[0x10, 1],
        ]
        .concat();
        let resp = GetCertAuthoritiesResponse::decode(&b[..]).unwrap();
        let ca = |cluster: &str| CertAuthorityV2 {
            spec: Some(CertAuthoritySpecV2 {
                r#type: "host".into(),
                cluster_name: cluster.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(resp.cert_authorities_v2, [ca("a"), ca("b")]);
    }

    #[test]
    fn list_remote_clusters_request() {
        // ListRemoteClustersRequest.page_size=1 (int32 varint): 100 is one byte.
        let first = ListRemoteClustersRequest {
            page_size: 100,
            page_token: String::new(),
        };
        assert_eq!(first.encode_to_vec(), [0x08, 100]);
        // page_size=1: 1000 is the two-byte varint 0xe8 0x07; page_token=2.
        let next = ListRemoteClustersRequest {
            page_size: 1000,
            page_token: "t".into(),
        };
        assert_eq!(next.encode_to_vec(), [0x08, 0xe8, 0x07, 0x12, 1, b't']);
    }

    #[test]
    fn list_remote_clusters_response() {
        let b = [
            // ListRemoteClustersResponse.remote_clusters=1 -> RemoteClusterV3.Metadata=4 ->
            // Name=1; RemoteClusterV3.Status=5 -> RemoteClusterStatusV3.Connection=1.
            &[0x0a, 19, 0x22, 7, 0x0a, 5][..],
            b"leaf1",
            &[0x2a, 8, 0x0a, 6],
            b"online",
            &[0x0a, 20, 0x22, 7, 0x0a, 5],
            b"leaf2",
            &[0x2a, 9, 0x0a, 7],
            b"offline",
            // Field 3 (varint, 0x18): not declared, skipped.
            &[0x18, 1],
            // ListRemoteClustersResponse.next_page_token=2.
            &[0x12, 4],
            b"next",
        ]
        .concat();
        let resp = ListRemoteClustersResponse::decode(&b[..]).unwrap();
        let rc = |name: &str, connection: &str| RemoteClusterV3 {
            metadata: Some(Metadata {
                name: name.into(),
                ..Default::default()
            }),
            status: Some(RemoteClusterStatusV3 {
                connection: connection.into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            resp,
            ListRemoteClustersResponse {
                remote_clusters: vec![rc("leaf1", "online"), rc("leaf2", "offline")],
                next_page_token: "next".into(),
            }
        );
    }

    #[test]
    fn proto_duration() {
        // Duration.seconds=1, nanos=2.
        let d = ProtoDuration {
            seconds: 1,
            nanos: 2,
        };
        assert_eq!(d.encode_to_vec(), [0x08, 1, 0x10, 2]);
    }

    #[test]
    fn submit_heartbeat_request() {
        let req = SubmitHeartbeatRequest {
            heartbeat: Some(BotInstanceStatusHeartbeat {
                recorded_at: Some(Timestamp {
                    seconds: 1,
                    nanos: 2,
                }),
                is_startup: true,
                version: "17.0.0".into(),
                hostname: "host".into(),
                uptime: Some(ProtoDuration {
                    seconds: 1,
                    nanos: 2,
                }),
                join_method: "github".into(),
                one_shot: true,
                architecture: "amd64".into(),
                os: "linux".into(),
            }),
        };
        let want = [
            // SubmitHeartbeatRequest.heartbeat=1 -> BotInstanceStatusHeartbeat.recorded_at=1 ->
            // Timestamp.seconds=1, nanos=2.
            &[0x0a, 52, 0x0a, 4, 0x08, 1, 0x10, 2][..],
            // ... is_startup=2 (varint, 0x10), version=3 (0x1a), hostname=4 (0x22).
            &[0x10, 1, 0x1a, 6],
            b"17.0.0",
            &[0x22, 4],
            b"host",
            // ... uptime=5 (0x2a) -> Duration.seconds=1, nanos=2.
            &[0x2a, 4, 0x08, 1, 0x10, 2],
            // ... join_method=6 (0x32), one_shot=7 (varint, 0x38), architecture=8 (0x42),
            // os=9 (0x4a).
            &[0x32, 6],
            b"github",
            &[0x38, 1, 0x42, 5],
            b"amd64",
            &[0x4a, 5],
            b"linux",
        ]
        .concat();
        assert_eq!(req.encode_to_vec(), want);
        // Field 99 (varint, two-byte key 0x98 0x06): not declared, skipped.
        let with_unknown = [&want[..], &[0x98, 0x06, 1]].concat();
        assert_eq!(
            SubmitHeartbeatRequest::decode(&with_unknown[..]).unwrap(),
            req
        );
    }
}
