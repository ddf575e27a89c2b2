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
