//! Teleport's web API JSON (`/webapi/...`), pure: the join request and the certificates it
//! returns, with Go's JSON field names (`[]byte` is base64).

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};

/// The JSON body of `POST /webapi/host/credentials` (types.RegisterUsingTokenRequest).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RegisterUsingTokenRequest {
    #[serde(default)]
    pub token: String,
    #[serde(default, rename = "hostID")]
    pub host_id: String,
    #[serde(default)]
    pub node_name: String,
    #[serde(default)]
    pub role: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// base64 of a PEM public key (Go `[]byte` in JSON).
    #[serde(default)]
    pub public_tls_key: String,
    /// base64 of an authorized_keys line.
    #[serde(default)]
    pub public_ssh_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_addr: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bot_instance_id: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bot_generation: i32,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// The JSON of `proto.Certs`: every field base64 (Go `[]byte`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CertsJson {
    #[serde(default)]
    pub ssh: String,
    #[serde(default)]
    pub tls: String,
    #[serde(default)]
    pub tls_ca_certs: Vec<String>,
    #[serde(default)]
    pub ssh_ca_certs: Vec<String>,
}

/// Decode Go's base64 `[]byte`, naming the field in the error.
pub fn b64d(s: &str, what: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| anyhow!("{what}: bad base64: {e}"))
}

/// base64 (standard, padded), as Go encodes `[]byte` in JSON.
pub fn b64e(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

impl CertsJson {
    /// Decode into the parts of an identity (the caller supplies the private key).
    pub fn decode(&self) -> Result<(String, String, Vec<String>, Vec<String>)> {
        let s =
            |b: Vec<u8>, what: &str| String::from_utf8(b).map_err(|_| anyhow!("{what}: not UTF-8"));
        let ssh = s(b64d(&self.ssh, "ssh")?, "ssh")?;
        let tls = s(b64d(&self.tls, "tls")?, "tls")?;
        let tls_cas = self
            .tls_ca_certs
            .iter()
            .map(|c| s(b64d(c, "tls_ca_certs")?, "tls_ca_certs"))
            .collect::<Result<_>>()?;
        let ssh_cas = self
            .ssh_ca_certs
            .iter()
            .map(|c| s(b64d(c, "ssh_ca_certs")?, "ssh_ca_certs"))
            .collect::<Result<_>>()?;
        Ok((ssh, tls, tls_cas, ssh_cas))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The join request's JSON names, as Go's `types.RegisterUsingTokenRequest` spells them
    /// (`hostID` is camelCase; `[]byte` is base64; `expires` RFC 3339), written by hand.
    #[test]
    fn join_request_field_names() {
        let req = RegisterUsingTokenRequest {
            token: "tok".into(),
            role: "Bot".into(),
            public_tls_key: b64e(b"TLS"),
            public_ssh_key: b64e(b"SSH"),
            expires: Some("2026-12-02T05:00:00Z".into()),
            ..Default::default()
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "token": "tok",
                "hostID": "",
                "node_name": "",
                "role": "Bot",
                "public_tls_key": "VExT",
                "public_ssh_key": "U1NI",
                "expires": "2026-12-02T05:00:00Z"
            })
        );
        let full = RegisterUsingTokenRequest {
            additional_principals: vec!["a".into()],
            dns_names: vec!["d".into()],
            remote_addr: "1.2.3.4".into(),
            bot_instance_id: "inst".into(),
            bot_generation: 3,
            ..Default::default()
        };
        let v = serde_json::to_value(&full).unwrap();
        for k in [
            "additional_principals",
            "dns_names",
            "remote_addr",
            "bot_instance_id",
            "bot_generation",
        ] {
            assert!(v.get(k).is_some(), "{k} missing from {v}");
        }
    }

    /// The answer, as a Teleport proxy sends it (`proto.Certs` through Go's encoding/json):
    /// every `[]byte` base64, CA lists as arrays, unknown fields ignored.
    #[test]
    fn certs_answer_decodes() {
        let text = r#"{"ssh":"c3No","tls":"dGxz","tls_ca_certs":["dXNlcg==","aG9zdA=="],
            "ssh_ca_certs":["c3NoLWVkMjU1MTkgVVNFUgo=","c3NoLWVkMjU1MTkgSE9TVAo="],"extra":1}"#;
        let c: CertsJson = serde_json::from_str(text).unwrap();
        let (ssh, tls, tls_cas, ssh_cas) = c.decode().unwrap();
        assert_eq!((ssh.as_str(), tls.as_str()), ("ssh", "tls"));
        assert_eq!(tls_cas, ["user", "host"]);
        assert_eq!(ssh_cas, ["ssh-ed25519 USER\n", "ssh-ed25519 HOST\n"]);
        let bad: CertsJson = serde_json::from_str(r#"{"ssh":"%%"}"#).unwrap();
        assert_eq!(
            bad.decode().unwrap_err().to_string(),
            "ssh: bad base64: Invalid symbol 37, offset 0."
        );
    }
}
