//! The join service (`/teleport.join.v1.JoinService/Join`, one bidirectional stream), as
//! `api/proto/teleport/join/v1/joinservice.proto` declares it, hand-written with its field
//! numbers. A token join: the client sends `ClientInit`, the server answers `ServerInit` (the
//! join method and the cluster's signature algorithm suite, which picks the key type), the
//! client sends `TokenInit` with its public keys, the server answers `Result` with the
//! certificates (DER and SSH wire format, not PEM).
//!
//! Field numbers are on the wire forever: never renumber a field here.

use crate::proto::Timestamp;

/// The join service's one method.
pub const JOIN: &str = "/teleport.join.v1.JoinService/Join";

/// `JoinRequest`: one of its payloads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JoinRequest {
    #[prost(oneof = "JoinRequestPayload", tags = "1, 2, 6")]
    pub payload: Option<JoinRequestPayload>,
}

/// `JoinRequest.payload` (only what a token join sends; others are skipped).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum JoinRequestPayload {
    #[prost(message, tag = "1")]
    ClientInit(ClientInit),
    #[prost(message, tag = "2")]
    TokenInit(TokenInit),
    #[prost(message, tag = "6")]
    GivingUp(GivingUp),
}

/// `ClientInit`: join_method=1 (optional), token_name=2, system_role=3, forwarded_by_proxy=4.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ClientInit {
    #[prost(string, optional, tag = "1")]
    pub join_method: Option<String>,
    #[prost(string, tag = "2")]
    pub token_name: String,
    /// `Bot` for a bot.
    #[prost(string, tag = "3")]
    pub system_role: String,
    #[prost(bool, tag = "4")]
    pub forwarded_by_proxy: bool,
}

/// `TokenInit { ClientParams client_params = 1; }`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TokenInit {
    #[prost(message, optional, tag = "1")]
    pub client_params: Option<ClientParams>,
}

/// `ClientParams`: oneof host_params=1, bot_params=2.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ClientParams {
    #[prost(message, optional, tag = "2")]
    pub bot_params: Option<BotParams>,
}

/// `BotParams { PublicKeys public_keys = 1; optional Timestamp expires = 2; }`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BotParams {
    #[prost(message, optional, tag = "1")]
    pub public_keys: Option<PublicKeys>,
    #[prost(message, optional, tag = "2")]
    pub expires: Option<Timestamp>,
}

/// `PublicKeys { bytes public_tls_key = 1 (PKIX DER); bytes public_ssh_key = 2 (SSH wire); }`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PublicKeys {
    #[prost(bytes = "vec", tag = "1")]
    pub public_tls_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub public_ssh_key: Vec<u8>,
}

/// `GivingUp { Reason reason = 1; string msg = 2; }`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GivingUp {
    #[prost(int32, tag = "1")]
    pub reason: i32,
    #[prost(string, tag = "2")]
    pub msg: String,
}

/// `JoinResponse`: one of init=1, challenge=2, result=3.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JoinResponse {
    #[prost(oneof = "JoinResponsePayload", tags = "1, 3")]
    pub payload: Option<JoinResponsePayload>,
}

/// `JoinResponse.payload` (a token join has no challenge).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum JoinResponsePayload {
    #[prost(message, tag = "1")]
    Init(ServerInit),
    #[prost(message, tag = "3")]
    Result(JoinResult),
}

/// `ServerInit { string join_method = 1; string signature_algorithm_suite = 2; }`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ServerInit {
    #[prost(string, tag = "1")]
    pub join_method: String,
    #[prost(string, tag = "2")]
    pub signature_algorithm_suite: String,
}

/// `Result`: oneof host_result=1, bot_result=2.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct JoinResult {
    #[prost(message, optional, tag = "2")]
    pub bot_result: Option<BotResult>,
}

/// `BotResult { Certificates certificates = 1; ... }`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BotResult {
    #[prost(message, optional, tag = "1")]
    pub certificates: Option<Certificates>,
}

/// `Certificates { tls_cert = 1 (DER); repeated tls_ca_certs = 2 (DER); ssh_cert = 3 (wire);
/// repeated ssh_ca_keys = 4 (wire) }`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Certificates {
    #[prost(bytes = "vec", tag = "1")]
    pub tls_cert: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub tls_ca_certs: Vec<Vec<u8>>,
    #[prost(bytes = "vec", tag = "3")]
    pub ssh_cert: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub ssh_ca_keys: Vec<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn client_init_on_the_wire() {
        // JoinRequest.client_init=1 -> ClientInit{join_method=1 "token", token_name=2 "t",
        // system_role=3 "Bot"}.
        let req = JoinRequest {
            payload: Some(JoinRequestPayload::ClientInit(ClientInit {
                join_method: Some("token".into()),
                token_name: "t".into(),
                system_role: "Bot".into(),
                forwarded_by_proxy: false,
            })),
        };
        let want = [
            &[0x0a, 15, 0x0a, 5][..],
            b"token",
            &[0x12, 1, b't', 0x1a, 3],
            b"Bot",
        ]
        .concat();
        assert_eq!(req.encode_to_vec(), want);
        assert_eq!(JoinRequest::decode(&want[..]).unwrap(), req);
    }

    #[test]
    fn token_init_on_the_wire() {
        // JoinRequest.token_init=2 -> TokenInit.client_params=1 -> ClientParams.bot_params=2
        // -> BotParams{public_keys=1 {public_tls_key=1 "T", public_ssh_key=2 "S"},
        // expires=2 {seconds=1 5}}.
        let req = JoinRequest {
            payload: Some(JoinRequestPayload::TokenInit(TokenInit {
                client_params: Some(ClientParams {
                    bot_params: Some(BotParams {
                        public_keys: Some(PublicKeys {
                            public_tls_key: b"T".to_vec(),
                            public_ssh_key: b"S".to_vec(),
                        }),
                        expires: Some(Timestamp {
                            seconds: 5,
                            nanos: 0,
                        }),
                    }),
                }),
            })),
        };
        let want = [
            0x12, 16, // token_init
            0x0a, 14, // client_params
            0x12, 12, // bot_params
            0x0a, 6, 0x0a, 1, b'T', 0x12, 1, b'S', // public_keys
            0x12, 2, 0x08, 5, // expires
        ];
        assert_eq!(req.encode_to_vec(), want);
    }

    #[test]
    fn server_answers_decode() {
        // JoinResponse.init=1 -> ServerInit{join_method=1 "token", signature_algorithm_suite=2
        // "legacy"}; an unknown field 9 is skipped.
        let init = [
            &[0x0a, 17, 0x0a, 5][..],
            b"token",
            &[0x12, 6],
            b"legacy",
            &[0x48, 1],
        ]
        .concat();
        let r = JoinResponse::decode(&init[..]).unwrap();
        assert_eq!(
            r.payload,
            Some(JoinResponsePayload::Init(ServerInit {
                join_method: "token".into(),
                signature_algorithm_suite: "legacy".into(),
            }))
        );
        // JoinResponse.result=3 -> Result.bot_result=2 -> BotResult.certificates=1 ->
        // Certificates{tls_cert=1 "C", tls_ca_certs=2 ["U", "H"], ssh_cert=3 "S",
        // ssh_ca_keys=4 ["u", "h"]}.
        let result = [
            0x1a, 22, 0x12, 20, 0x0a, 18, 0x0a, 1, b'C', 0x12, 1, b'U', 0x12, 1, b'H', 0x1a, 1,
            b'S', 0x22, 1, b'u', 0x22, 1, b'h',
        ];
        let r = JoinResponse::decode(&result[..]).unwrap();
        let Some(JoinResponsePayload::Result(res)) = r.payload else {
            panic!("not a result: {r:?}");
        };
        let c = res.bot_result.unwrap().certificates.unwrap();
        assert_eq!(c.tls_cert, b"C");
        assert_eq!(c.tls_ca_certs, [b"U".to_vec(), b"H".to_vec()]);
        assert_eq!(c.ssh_cert, b"S");
        assert_eq!(c.ssh_ca_keys, [b"u".to_vec(), b"h".to_vec()]);
    }
}
