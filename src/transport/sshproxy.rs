//! SSH to the proxy over the TLS stream (ALPN `teleport-proxy-ssh`, PROTOCOL.md section 4):
//! the check of the proxy's host certificate against the cluster's host CA, login with the
//! identity's user certificate, and the `proxy:<host>:<port>@<cluster>` subsystem that turns a
//! session channel into the node's raw SSH byte stream.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use russh::client::{self, Handle, Msg};
use russh::keys::agent::AgentIdentity;
use russh::keys::ssh_encoding::Encode;
use russh::keys::ssh_key::{certificate::CertType, Algorithm, EcdsaCurve, Fingerprint};
use russh::keys::{HashAlg, PrivateKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::tls;
use idmux_identity::{rfc3339, unix_now, HostCa, Identity, KeyPair};

/// How often to send an SSH keepalive to the proxy.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

/// The russh client handler: checks the proxy's host certificate and remembers why it was
/// refused, so the caller can say so (russh itself only reports "unknown server key").
pub struct ProxyHandler {
    trusted: Vec<Fingerprint>,
    proxy_host: String,
    rejection: Arc<Mutex<Option<String>>>,
}

impl client::Handler for ProxyHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match check_host_key(key, &self.trusted, &self.proxy_host, unix_now()) {
            Ok(()) => Ok(true),
            Err(why) => {
                if let Ok(mut r) = self.rejection.lock() {
                    *r = Some(why);
                }
                Ok(false)
            }
        }
    }
}

/// SHA-256 fingerprints of the host CA keys (what `Certificate::validate` takes).
pub(crate) fn host_ca_fingerprints(cas: &[HostCa]) -> Vec<Fingerprint> {
    cas.iter()
        .map(|c| c.key.fingerprint(HashAlg::Sha256))
        .collect()
}

/// Accept only a host certificate signed by one of `trusted` (SHA-256 CA fingerprints), valid
/// at `now` (unix seconds), that names `host` among its principals. The error is the whole
/// message for the user.
pub(crate) fn check_host_key(
    key: &PublicKeyOrCertificate,
    trusted: &[Fingerprint],
    host: &str,
    now: u64,
) -> std::result::Result<(), String> {
    let cert = match key {
        PublicKeyOrCertificate::Certificate(c) => c,
        PublicKeyOrCertificate::PublicKey { key, .. } => {
            return Err(format!(
                "proxy {host} presented a plain host key ({}), not a host certificate from \
                 the cluster's host CA",
                key.fingerprint(HashAlg::Sha256)
            ))
        }
    };
    let ca_fp = cert.signature_key().fingerprint(HashAlg::Sha256);
    if !trusted.contains(&ca_fp) {
        return Err(format!(
            "proxy {host} host certificate is not signed by the cluster's host CA \
             (signed by {ca_fp})"
        ));
    }
    if cert.cert_type() != CertType::Host {
        return Err(format!(
            "proxy {host} presented a user certificate instead of a host certificate"
        ));
    }
    if now >= cert.valid_before() {
        return Err(format!(
            "proxy {host} host certificate expired at {}",
            rfc3339(cert.valid_before())
        ));
    }
    if now < cert.valid_after() {
        return Err(format!(
            "proxy {host} host certificate is not valid until {}",
            rfc3339(cert.valid_after())
        ));
    }
    // CA fingerprint, validity window and the CA's signature, all at once.
    if let Err(e) = cert.validate_at(now, trusted) {
        return Err(format!(
            "proxy {host} host certificate does not verify: {e}"
        ));
    }
    if !cert.valid_principals().iter().any(|p| p == host) {
        return Err(format!(
            "proxy {host} host certificate is not valid for {host} (it names {})",
            if cert.valid_principals().is_empty() {
                "no principals".to_string()
            } else {
                cert.valid_principals().join(", ")
            }
        ));
    }
    Ok(())
}

/// The ciphers offered to the proxy, most preferred first: AES-GCM ahead of
/// ChaCha20-Poly1305. The client's order decides (RFC 4253 section 7.1), and russh's own
/// default puts ChaCha20 first, which on a CPU with AES instructions costs several times
/// more per byte (36 % of the SSH-transport daemon's CPU before this order; issue 18).
/// Teleport's proxy offers all of these (x/crypto/ssh's default list, also its FIPS list
/// without ChaCha20), so the choice costs no compatibility; a proxy without AES-GCM still
/// gets ChaCha20 or AES-CTR.
pub const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_128_GCM,
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// The russh client configuration: host certificates of every supported key type, the
/// [`CIPHERS`] order, no inactivity timeout, a keepalive every [`KEEPALIVE`].
pub(crate) fn client_config() -> Arc<client::Config> {
    let preferred = russh::Preferred {
        cipher: Cow::Borrowed(CIPHERS),
        host_key_certificates: Cow::Owned(vec![
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP384,
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP521,
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            },
        ]),
        ..Default::default()
    };
    Arc::new(client::Config {
        preferred,
        inactivity_timeout: None,
        keepalive_interval: Some(KEEPALIVE),
        ..Default::default()
    })
}

/// SSH over `stream` (the TLS stream to the proxy): check the proxy's host certificate, then
/// log in as the first principal of the identity's SSH certificate.
///
/// `proxy` is the proxy's host, which its host certificate must name, or its `host:port`
/// (the port then only shows in error messages).
pub async fn connect<S>(stream: S, id: &Identity, proxy: &str) -> Result<Handle<ProxyHandler>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Over TLS the TLS deadline came first; on a proxy's plain SSH port this is the only one.
    match tokio::time::timeout(
        SSH_HANDSHAKE_TIMEOUT,
        handshake_and_login(stream, id, proxy),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => bail!(
            "proxy {proxy} did not complete the SSH handshake and login within {}s",
            SSH_HANDSHAKE_TIMEOUT.as_secs()
        ),
    }
}

/// How long the SSH handshake and login with the proxy may take.
pub(crate) const SSH_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn handshake_and_login<S>(
    stream: S,
    id: &Identity,
    proxy: &str,
) -> Result<Handle<ProxyHandler>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let proxy_host = idmux_wire::hostport::host_of(proxy).to_string();
    let rejection = Arc::new(Mutex::new(None));
    let handler = ProxyHandler {
        trusted: host_ca_fingerprints(&id.host_cas),
        proxy_host: proxy_host.clone(),
        rejection: rejection.clone(),
    };
    if handler.trusted.is_empty() {
        bail!("the identity holds no host CA to check the proxy {proxy} with");
    }
    let mut handle = match client::connect_stream(client_config(), stream, handler).await {
        Ok(h) => h,
        Err(e) => {
            let why = rejection.lock().ok().and_then(|mut r| r.take());
            bail!("{}", why.unwrap_or_else(|| describe_ssh_error(proxy, &e)));
        }
    };

    let cert = id.ssh_cert.clone();
    let key_id = cert.key_id().to_string();
    let Some(user) = cert.valid_principals().first().cloned() else {
        bail!("the SSH certificate of {key_id} has no principals to log in to the proxy with");
    };
    let result = match &id.key {
        KeyPair::Rsa(_) => {
            // rsa-sha2-512-cert-v01@openssh.com (authenticate_openssh_cert would advertise the
            // SHA-1 name ssh-rsa-cert-v01 and sign with SHA-512: russh issue #679).
            let mut signer = RsaSha512Signer(id.key.to_ssh()?);
            handle
                .authenticate_certificate_with(&user, cert, Some(HashAlg::Sha512), &mut signer)
                .await
                .map_err(|e| anyhow!("logging in to proxy {proxy}: {e}"))?
        }
        _ => {
            let key = Arc::new(id.key.to_ssh().context("the identity's private key")?);
            handle
                .authenticate_openssh_cert(&user, key, cert)
                .await
                .map_err(|e| anyhow!("{}", describe_ssh_error(proxy, &e)))?
        }
    };
    if !result.success() {
        bail!("proxy refused the SSH certificate of {key_id} (login {user})");
    }
    Ok(handle)
}

/// End the connection politely: SSH disconnect, then TLS close_notify (russh shuts the
/// stream down when its session ends). Waits at most [`CLOSE_WAIT`]; errors are of no interest
/// at this point.
pub async fn close(handle: Handle<ProxyHandler>) {
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    let _ = tokio::time::timeout(CLOSE_WAIT, handle).await;
}

/// How long [`close`] waits for the session to wind down.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// One line for an SSH-level failure talking to the proxy (`proxy` as the user knows it).
pub(crate) fn describe_ssh_error(proxy: &str, e: &russh::Error) -> String {
    match e {
        russh::Error::IO(io) if tls::rustls_error(io).is_some() => {
            tls::describe_tls_error(proxy, &[tls::ALPN_PROXY_SSH], io)
        }
        russh::Error::IO(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("proxy {proxy} closed the connection during the SSH handshake")
        }
        russh::Error::IO(io) => format!(
            "SSH connection to proxy {proxy} failed: {}",
            tls::io_words(io)
        ),
        russh::Error::Disconnect | russh::Error::HUP => {
            format!("proxy {proxy} closed the SSH connection")
        }
        russh::Error::UnknownKey => {
            format!("proxy {proxy} host key was refused")
        }
        other => format!("SSH handshake with proxy {proxy} failed: {other}"),
    }
}

/// Signs the certificate login with the RSA key as rsa-sha2-512, the way russh signs for
/// `authenticate_openssh_cert`: the signature blob is appended, as an SSH string, to the data
/// russh hands over.
struct RsaSha512Signer(PrivateKey);

/// Why the local RSA signer failed.
#[derive(Debug, thiserror::Error)]
enum SignError {
    #[error("the SSH session ended while signing")]
    Send(#[from] russh::SendError),
    #[error("signing with the RSA key failed: {0}")]
    Sign(String),
}

impl russh::Signer for RsaSha512Signer {
    type Error = SignError;

    async fn auth_sign(
        &mut self,
        _key: &AgentIdentity,
        hash_alg: Option<HashAlg>,
        mut to_sign: Vec<u8>,
    ) -> Result<Vec<u8>, SignError> {
        let rsa = self
            .0
            .key_data()
            .rsa()
            .ok_or_else(|| SignError::Sign("the key is not an RSA key".into()))?;
        let hash = hash_alg.or(Some(HashAlg::Sha512));
        let sig: russh::keys::ssh_key::Signature =
            russh::keys::signature::Signer::try_sign(&(rsa, hash), &to_sign)
                .map_err(|e| SignError::Sign(e.to_string()))?;
        let blob = sig
            .encode_vec()
            .map_err(|e| SignError::Sign(e.to_string()))?;
        blob.encode(&mut to_sign)
            .map_err(|e| SignError::Sign(e.to_string()))?;
        Ok(to_sign)
    }
}

/// The subsystem that asks the proxy for a node: `proxy:<host>:<port>[@<cluster>]`.
pub(crate) fn subsystem_name(host: &str, port: u16, cluster: &str) -> String {
    if cluster.is_empty() {
        format!("proxy:{host}:{port}")
    } else {
        format!("proxy:{host}:{port}@{cluster}")
    }
}

/// A session channel the proxy has connected to a node. `early_data` holds node bytes that
/// arrived before the proxy's answer to the subsystem request; they come before anything read
/// from `channel`.
pub struct NodeChannel {
    pub channel: Channel<Msg>,
    pub early_data: Vec<u8>,
}

/// Ask the proxy for `host:port` in `cluster` (empty = the proxy's own cluster).
pub async fn open_node(
    handle: &Handle<ProxyHandler>,
    host: &str,
    port: u16,
    cluster: &str,
) -> Result<NodeChannel> {
    let mut channel = handle
        .channel_open_session()
        .await
        .map_err(|e| anyhow!("proxy did not open a session channel: {e}"))?;
    channel
        .request_subsystem(true, subsystem_name(host, port, cluster))
        .await
        .map_err(|e| anyhow!("asking the proxy for {host}:{port}: {e}"))?;
    let mut early_data = Vec::new();
    let mut stderr = Vec::new();
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => {
                return Ok(NodeChannel {
                    channel,
                    early_data,
                })
            }
            Some(ChannelMsg::Data { data }) => early_data.extend_from_slice(&data),
            Some(ChannelMsg::ExtendedData { data, ext: 1 }) => stderr.extend_from_slice(&data),
            Some(ChannelMsg::Failure) | Some(ChannelMsg::Close) | None => {
                bail!("{}", refusal_message(&stderr, host, port))
            }
            Some(_) => {}
        }
    }
}

/// The error for a refused subsystem request: the proxy's stderr text on one line.
pub(crate) fn refusal_message(stderr: &[u8], host: &str, port: u16) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if text.is_empty() {
        format!("proxy refused to connect to {host}:{port}")
    } else {
        format!("proxy refused to connect to {host}:{port}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idmux_devcluster::ca::ClusterCas;
    use idmux_identity::KeyType;
    use russh::keys::ssh_key::Certificate;

    #[test]
    fn subsystem_names() {
        assert_eq!(
            subsystem_name("node-1", 3022, "example"),
            "proxy:node-1:3022@example"
        );
        assert_eq!(subsystem_name("node-1", 22, ""), "proxy:node-1:22");
    }

    #[test]
    fn refusals_are_one_line() {
        assert_eq!(
            refusal_message(
                b"direct dialing to nodes not found in inventory is not supported\n",
                "node-9",
                3022
            ),
            "proxy refused to connect to node-9:3022: direct dialing to nodes not found in \
             inventory is not supported"
        );
        assert_eq!(
            refusal_message(b"a\r\n\nb\n", "n", 1),
            "proxy refused to connect to n:1: a; b"
        );
        assert_eq!(
            refusal_message(b"", "n", 1),
            "proxy refused to connect to n:1"
        );
    }

    #[test]
    fn host_certificate_checks() {
        let dir = tempfile::tempdir().unwrap();
        let cas = ClusterCas::create(&dir.path().join("a"), "a.example").unwrap();
        let other = ClusterCas::create(&dir.path().join("b"), "b.example").unwrap();
        let key = KeyPair::generate(KeyType::Ed25519).unwrap();
        let pubkey = key.ssh_public().unwrap();
        let ttl = Duration::from_secs(3600);
        let cert = cas
            .issue_ssh_host(&pubkey, "uuid-1", "proxy", "Proxy", &[], ttl)
            .unwrap();
        let trusted = host_ca_fingerprints(&[HostCa {
            cluster: "a.example".into(),
            key: cas.host.ssh_public().unwrap(),
        }]);
        let now = unix_now();
        let as_key = |c: &Certificate| PublicKeyOrCertificate::Certificate(c.clone());

        check_host_key(&as_key(&cert), &trusted, "localhost", now).unwrap();
        check_host_key(&as_key(&cert), &trusted, "127.0.0.1", now).unwrap();

        let e = check_host_key(&as_key(&cert), &trusted, "proxy.example.com", now).unwrap_err();
        assert!(e.contains("is not valid for proxy.example.com"), "{e}");

        let e = check_host_key(&as_key(&cert), &trusted, "localhost", now + 7200).unwrap_err();
        assert!(
            e.starts_with("proxy localhost host certificate expired at "),
            "{e}"
        );

        let foreign = other
            .issue_ssh_host(&pubkey, "uuid-1", "proxy", "Proxy", &[], ttl)
            .unwrap();
        let e = check_host_key(&as_key(&foreign), &trusted, "localhost", now).unwrap_err();
        assert!(
            e.starts_with(
                "proxy localhost host certificate is not signed by the cluster's host CA"
            ),
            "{e}"
        );

        let plain = PublicKeyOrCertificate::PublicKey {
            key: pubkey.clone(),
            hash_alg: None,
        };
        let e = check_host_key(&plain, &trusted, "localhost", now).unwrap_err();
        assert!(e.contains("plain host key"), "{e}");
    }

    #[tokio::test]
    async fn rsa_signer_appends_a_sha512_signature() {
        use russh::keys::signature::Verifier;
        use russh::keys::ssh_encoding::Decode;
        use russh::Signer;

        let key = KeyPair::generate(KeyType::Rsa2048).unwrap();
        let ssh = key.to_ssh().unwrap();
        let public = ssh.public_key().clone();
        let cert = {
            let dir = tempfile::tempdir().unwrap();
            let cas = ClusterCas::create(dir.path(), "a.example").unwrap();
            cas.issue_ssh_host(&public, "h", "n", "Node", &[], Duration::from_secs(60))
                .unwrap()
        };
        let mut signer = RsaSha512Signer(ssh);
        let data = b"session id and request".to_vec();
        let out = signer
            .auth_sign(&cert.into(), Some(HashAlg::Sha512), data.clone())
            .await
            .unwrap();
        assert_eq!(&out[..data.len()], &data[..]);
        let mut rest = &out[data.len()..];
        let blob = Vec::<u8>::decode(&mut rest).unwrap();
        assert!(rest.is_empty());
        let sig = russh::keys::ssh_key::Signature::decode(&mut blob.as_slice()).unwrap();
        assert_eq!(
            sig.algorithm(),
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512)
            }
        );
        public.key_data().verify(&data, &sig).unwrap();
    }
}
