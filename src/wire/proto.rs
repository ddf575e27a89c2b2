//! Teleport protobuf messages used by idmux, hand-written with Teleport's field numbers (no
//! protoc, no codegen).
//!
//! Sources (repository gravitational/teleport): `UserCertsRequest` in
//! `api/proto/teleport/legacy/client/proto/authservice.proto`, `Certs` in
//! `api/proto/teleport/legacy/client/proto/certs.proto`, the `teleport.transport.v1` messages
//! in `api/proto/teleport/transport/v1/transport_service.proto`, `google.protobuf.Timestamp`
//! from the protobuf well-known types. Only the fields idmux reads or writes are declared; protobuf
//! decoders skip the others, so a real Teleport auth server and idmux understand each other.
//! Field numbers are on the wire forever: never renumber a field here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The gRPC method that issues user (and bot) certificates.
pub const GENERATE_USER_CERTS: &str = "/proto.AuthService/GenerateUserCerts";

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// The timestamp of a point in time (before 1970 counts as 1970).
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos() as i32,
        }
    }

    /// The point in time, or `None` when unset: Go's zero `time.Time` (what Teleport sends for
    /// a non-nullable timestamp left empty) and anything at or before 1970.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let secs = u64::try_from(self.seconds).ok().filter(|s| *s > 0)?;
        let nanos = u32::try_from(self.nanos).unwrap_or(0).min(999_999_999);
        UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    }
}

/// `UserCertsRequest.CertUsage`: what the certificates may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub(crate) enum CertUsage {
    /// SSH and TLS certificates for a whole session (what bots ask for).
    All = 0,
    /// An SSH certificate for one node.
    Ssh = 1,
}

/// `proto.UserCertsRequest`: the parameters of `GenerateUserCerts`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct UserCertsRequest {
    /// Deprecated single public key (authorized_keys format); superseded by 22 and 23.
    #[prost(bytes = "vec", tag = "1")]
    pub public_key: Vec<u8>,
    /// The user the certificates are for (a bot renewing: its own `bot-NAME`).
    #[prost(string, tag = "2")]
    pub username: String,
    /// The requested expiry (the server caps it).
    #[prost(message, optional, tag = "3")]
    pub expires: Option<Timestamp>,
    /// The cluster the certificates route to (empty = the issuing cluster).
    #[prost(string, tag = "5")]
    pub route_to_cluster: String,
    /// A [`CertUsage`].
    #[prost(enumeration = "CertUsage", tag = "10")]
    pub usage: i32,
    /// Roles to impersonate (with `use_role_requests`; empty = all the user may impersonate).
    #[prost(string, repeated, tag = "12")]
    pub role_requests: Vec<String>,
    /// Role impersonation even when `role_requests` is empty.
    #[prost(bool, tag = "14")]
    pub use_role_requests: bool,
    /// The SSH public key to sign, as an authorized_keys line.
    #[prost(bytes = "vec", tag = "22")]
    pub ssh_public_key: Vec<u8>,
    /// The TLS public key to sign, PEM (`PUBLIC KEY`, or `RSA PUBLIC KEY` for RSA).
    #[prost(bytes = "vec", tag = "23")]
    pub tls_public_key: Vec<u8>,
}

/// `proto.Certs`: the answer of `GenerateUserCerts`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Certs {
    /// The SSH certificate, an authorized_keys style line.
    #[prost(bytes = "vec", tag = "1")]
    pub ssh: Vec<u8>,
    /// The X.509 client certificate, PEM.
    #[prost(bytes = "vec", tag = "2")]
    pub tls: Vec<u8>,
    /// The TLS CA certificates to trust (PEM each): the host CA.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub tls_ca_certs: Vec<Vec<u8>>,
    /// The SSH host CA keys, `@cert-authority ... type=host` lines.
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub ssh_ca_certs: Vec<Vec<u8>>,
}

/// `teleport.transport.v1.TransportService/ProxySSH`: one bidi stream per node connection.
pub const PROXY_SSH: &str = "/teleport.transport.v1.TransportService/ProxySSH";
/// `teleport.transport.v1.TransportService/GetClusterDetails`.
pub const GET_CLUSTER_DETAILS: &str = "/teleport.transport.v1.TransportService/GetClusterDetails";

/// `teleport.transport.v1.Frame`: a chunk of one of the byte streams of a `ProxySSH` stream.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Frame {
    #[prost(bytes = "bytes", tag = "1")]
    pub payload: bytes::Bytes,
}

/// `teleport.transport.v1.TargetHost`: the node to dial.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TargetHost {
    /// `host:port`; the proxy resolves the host (node name, UUID or registered address).
    #[prost(string, tag = "1")]
    pub host_port: String,
    /// The cluster the node is in (empty = the proxy's own).
    #[prost(string, tag = "2")]
    pub cluster: String,
}

/// The stream a frame belongs to: the node's SSH bytes or the SSH agent protocol.
#[derive(Clone, PartialEq, Eq, prost::Oneof)]
pub enum SshFrame {
    #[prost(message, tag = "2")]
    Ssh(Frame),
    #[prost(message, tag = "3")]
    Agent(Frame),
}

/// `teleport.transport.v1.ProxySSHRequest`: the first carries `dial_target` (and no frame),
/// the rest carry frames.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ProxySshRequest {
    #[prost(message, optional, tag = "1")]
    pub dial_target: Option<TargetHost>,
    #[prost(oneof = "SshFrame", tags = "2, 3")]
    pub frame: Option<SshFrame>,
}

/// `teleport.transport.v1.ClusterDetails`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ClusterDetails {
    #[prost(bool, tag = "1")]
    pub fips_enabled: bool,
}

/// `teleport.transport.v1.ProxySSHResponse`: the first carries `details` once the node is
/// connected, the rest carry frames.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ProxySshResponse {
    #[prost(message, optional, tag = "1")]
    pub details: Option<ClusterDetails>,
    #[prost(oneof = "SshFrame", tags = "2, 3")]
    pub frame: Option<SshFrame>,
}

/// `teleport.transport.v1.GetClusterDetailsRequest` (no fields).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct GetClusterDetailsRequest {}

/// `teleport.transport.v1.GetClusterDetailsResponse`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct GetClusterDetailsResponse {
    #[prost(message, optional, tag = "1")]
    pub details: Option<ClusterDetails>,
}

/// `teleport.transport.v1.TransportService/ProxyCluster`: one bidi stream of raw bytes to the
/// Auth server of a cluster (api/proto/teleport/transport/v1/transport_service.proto).
pub const PROXY_CLUSTER: &str = "/teleport.transport.v1.TransportService/ProxyCluster";

/// `teleport.transport.v1.ProxyClusterRequest`: the first names the cluster (and may carry a
/// frame); every later one must carry a frame.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ProxyClusterRequest {
    /// The cluster whose Auth server to reach (empty = the proxy's own).
    #[prost(string, tag = "1")]
    pub cluster: String,
    #[prost(message, optional, tag = "2")]
    pub frame: Option<Frame>,
}

/// `teleport.transport.v1.ProxyClusterResponse`: bytes from the cluster's Auth server.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ProxyClusterResponse {
    #[prost(message, optional, tag = "1")]
    pub frame: Option<Frame>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn field_numbers_on_the_wire() {
        let req = UserCertsRequest {
            username: "bot-ci".into(),
            usage: CertUsage::Ssh as i32,
            use_role_requests: true,
            ssh_public_key: b"k".to_vec(),
            tls_public_key: b"t".to_vec(),
            ..Default::default()
        };
        let b = req.encode_to_vec();
        // 2 = username (wire type 2): key 0x12.
        assert_eq!(&b[..2], &[0x12, 6]);
        // 10 = usage (varint): key 0x50; 14 = use_role_requests: key 0x70.
        assert!(b.windows(2).any(|w| w == [0x50, 1]), "{b:x?}");
        assert!(b.windows(2).any(|w| w == [0x70, 1]), "{b:x?}");
        // 22 and 23 (wire type 2) need two-byte keys: 0xb2 0x01 and 0xba 0x01.
        assert!(
            b.ends_with(&[0xb2, 0x01, 1, b'k', 0xba, 0x01, 1, b't']),
            "{b:x?}"
        );
        assert_eq!(UserCertsRequest::decode(&b[..]).unwrap(), req);
    }

    /// The impersonation request a bot sends, every field by hand: Username=2, Expires=3
    /// (Timestamp{seconds=1}), RouteToCluster=5, RoleRequests=12 (repeated), UseRoleRequests=14,
    /// SSHPublicKey=22, TLSPublicKey=23; the renewal is the same without 5, 12 and 14.
    #[test]
    fn impersonation_and_renewal_requests_by_hand() {
        let req = UserCertsRequest {
            username: "bot-ci".into(),
            expires: Some(Timestamp {
                seconds: 300,
                nanos: 0,
            }),
            route_to_cluster: "c".into(),
            role_requests: vec!["a".into(), "b".into()],
            use_role_requests: true,
            ssh_public_key: b"k".to_vec(),
            tls_public_key: b"t".to_vec(),
            ..Default::default()
        };
        let want = [
            &[0x12, 6][..],
            b"bot-ci",
            &[0x1a, 3, 0x08, 0xac, 0x02], // expires: seconds 300 (varint ac 02)
            &[0x2a, 1, b'c'],             // route_to_cluster
            &[0x62, 1, b'a', 0x62, 1, b'b'], // role_requests
            &[0x70, 1],                   // use_role_requests
            &[0xb2, 0x01, 1, b'k'],       // ssh_public_key
            &[0xba, 0x01, 1, b't'],       // tls_public_key
        ]
        .concat();
        assert_eq!(req.encode_to_vec(), want);
        assert_eq!(UserCertsRequest::decode(&want[..]).unwrap(), req);
        let renewal = UserCertsRequest {
            route_to_cluster: String::new(),
            role_requests: vec![],
            use_role_requests: false,
            ..req
        };
        let want = [
            &[0x12, 6][..],
            b"bot-ci",
            &[0x1a, 3, 0x08, 0xac, 0x02],
            &[0xb2, 0x01, 1, b'k', 0xba, 0x01, 1, b't'],
        ]
        .concat();
        assert_eq!(renewal.encode_to_vec(), want);
    }

    #[test]
    fn certs_round_trip_and_repeated_bytes() {
        let c = Certs {
            ssh: b"ssh".to_vec(),
            tls: b"tls".to_vec(),
            tls_ca_certs: vec![b"a".to_vec(), b"b".to_vec()],
            ssh_ca_certs: vec![b"c".to_vec()],
        };
        let b = c.encode_to_vec();
        assert_eq!(
            b,
            [
                &[0x0a, 3][..],
                b"ssh",
                &[0x12, 3],
                b"tls",
                &[0x1a, 1, b'a', 0x1a, 1, b'b', 0x22, 1, b'c']
            ]
            .concat()
        );
        assert_eq!(Certs::decode(&b[..]).unwrap(), c);
    }

    #[test]
    fn proxy_ssh_messages_on_the_wire() {
        let first = ProxySshRequest {
            dial_target: Some(TargetHost {
                host_port: "n:3022".into(),
                cluster: "c".into(),
            }),
            frame: None,
        };
        assert_eq!(
            first.encode_to_vec(),
            [&[0x0a, 11, 0x0a, 6][..], b"n:3022", &[0x12, 1], b"c"].concat()
        );
        let ssh = ProxySshRequest {
            dial_target: None,
            frame: Some(SshFrame::Ssh(Frame {
                payload: bytes::Bytes::from_static(b"hi"),
            })),
        };
        // 2 = ssh frame, holding 1 = payload.
        assert_eq!(ssh.encode_to_vec(), [0x12, 4, 0x0a, 2, b'h', b'i']);
        let agent = ProxySshResponse {
            details: None,
            frame: Some(SshFrame::Agent(Frame {
                payload: bytes::Bytes::from_static(b"a"),
            })),
        };
        assert_eq!(agent.encode_to_vec(), [0x1a, 3, 0x0a, 1, b'a']);
        let details = ProxySshResponse {
            details: Some(ClusterDetails { fips_enabled: true }),
            frame: None,
        };
        assert_eq!(details.encode_to_vec(), [0x0a, 2, 0x08, 1]);
        assert_eq!(
            ProxySshResponse::decode(&agent.encode_to_vec()[..]).unwrap(),
            agent
        );
        // An empty details message still marks the first response.
        let empty = ProxySshResponse {
            details: Some(ClusterDetails::default()),
            frame: None,
        };
        assert_eq!(empty.encode_to_vec(), [0x0a, 0]);
        assert!(ProxySshResponse::decode(&[0x0a, 0][..])
            .unwrap()
            .details
            .is_some());
    }

    #[test]
    fn proxy_cluster_messages_on_the_wire() {
        // ProxyClusterRequest: 1 = cluster (string), 2 = frame (Frame, whose 1 = payload).
        let first = ProxyClusterRequest {
            cluster: "dev".into(),
            frame: None,
        };
        assert_eq!(first.encode_to_vec(), [0x0a, 3, b'd', b'e', b'v']);
        let both = ProxyClusterRequest {
            cluster: "c".into(),
            frame: Some(Frame {
                payload: bytes::Bytes::from_static(b"\x16\x03"),
            }),
        };
        assert_eq!(
            both.encode_to_vec(),
            [0x0a, 1, b'c', 0x12, 4, 0x0a, 2, 0x16, 0x03]
        );
        // A later request: no cluster, a frame.
        let later = ProxyClusterRequest::decode(&[0x12, 3, 0x0a, 1, b'x'][..]).unwrap();
        assert_eq!(later.cluster, "");
        assert_eq!(later.frame.unwrap().payload.as_ref(), b"x");
        // A request with neither has no frame (the server refuses it as an invalid frame).
        assert!(ProxyClusterRequest::decode(&[][..])
            .unwrap()
            .frame
            .is_none());
        // ProxyClusterResponse: 1 = frame.
        let resp = ProxyClusterResponse {
            frame: Some(Frame {
                payload: bytes::Bytes::from_static(b"ok"),
            }),
        };
        assert_eq!(resp.encode_to_vec(), [0x0a, 4, 0x0a, 2, b'o', b'k']);
        assert_eq!(
            ProxyClusterResponse::decode(&[0x0a, 4, 0x0a, 2, b'o', b'k'][..]).unwrap(),
            resp
        );
        assert_eq!(
            PROXY_CLUSTER,
            "/teleport.transport.v1.TransportService/ProxyCluster"
        );
    }

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let ts = Timestamp::from_system_time(t);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 5));
        assert_eq!(ts.to_system_time(), Some(t));
        // Go's zero time.Time.
        let zero = Timestamp {
            seconds: -62_135_596_800,
            nanos: 0,
        };
        assert_eq!(zero.to_system_time(), None);
        assert_eq!(Timestamp::default().to_system_time(), None);
    }
}
