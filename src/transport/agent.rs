//! `agent.sock`: an SSH agent holding the current key with its certificate, and the bare key.
//!
//! The answer to a request is pure ([`Agent::respond`]: frame in, frame out) and the keys are
//! swapped as one value on renewal, so ssh can never be handed a key with another key's cert.
//! Every renewal brings a fresh key, so the previous key and certificate stay usable for
//! signing (not listed) until the certificate expires: an ssh that listed the identities just
//! before a renewal still gets its signature.
//! It answers REQUEST_IDENTITIES and SIGN_REQUEST (RSA honouring the rsa-sha2-256/512 flags);
//! everything else, including adding or removing keys, gets SSH_AGENT_FAILURE. The bare key
//! is listed too, as tbot does, for clients that cannot use certificates (Paramiko).

use std::sync::{Arc, RwLock};

use anyhow::Result;
use russh::keys::ssh_encoding::Encode;
use russh::keys::ssh_key::{private::KeypairData, Certificate, HashAlg, PrivateKey, Signature};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest agent request served: a sign request is a key blob and the data to sign (a
/// few hundred bytes to a few KiB); OpenSSH's own limit is 256 KiB.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a request may take to arrive once its first byte has.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

use idmux_wire::agent::{
    self as wire, AgentIdentity, SignRequest, FAILURE, MAX_FRAME, REQUEST_IDENTITIES, RSA_SHA2_256,
    RSA_SHA2_512, SIGN_REQUEST,
};

/// One key and its certificate.
pub(crate) struct AgentKeys {
    pub key: PrivateKey,
    pub cert: Certificate,
}

/// The current keys and the ones they replaced.
#[derive(Default)]
struct Held {
    current: Option<Arc<AgentKeys>>,
    previous: Option<Arc<AgentKeys>>,
}

/// The agent: keys behind one lock, swapped whole.
#[derive(Clone, Default)]
pub struct Agent {
    keys: Arc<RwLock<Held>>,
}

impl Agent {
    /// Replace the keys (on renewal); the replaced ones still sign until their cert expires.
    pub fn set(&self, key: PrivateKey, cert: Certificate) {
        let new = Arc::new(AgentKeys { key, cert });
        let mut held = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let same_key = held
            .current
            .as_ref()
            .is_some_and(|c| c.key.public_key() == new.key.public_key());
        if !same_key {
            held.previous = held.current.take();
        }
        held.current = Some(new);
    }

    fn current(&self) -> Option<Arc<AgentKeys>> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .clone()
    }

    /// The previous keys, while their certificate is valid.
    fn previous(&self) -> Option<Arc<AgentKeys>> {
        let prev = self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .previous
            .clone()?;
        let now = std::time::SystemTime::now();
        prev.cert
            .valid_before_time()
            .is_some_and(|t| t > now)
            .then_some(prev)
    }

    /// Answer one request message (type byte + payload); returns the reply message. Pure
    /// but for reading the held keys: the server and the fuzz target `agent_msg` call it.
    pub fn respond(&self, msg: &[u8]) -> Vec<u8> {
        self.try_respond(msg).unwrap_or_else(|| vec![FAILURE])
    }

    fn try_respond(&self, msg: &[u8]) -> Option<Vec<u8>> {
        let (&kind, body) = msg.split_first()?;
        let keys = self.current()?;
        let cert_blob = keys.cert.to_bytes().ok()?;
        let key_blob = keys.key.public_key().key_data().encode_vec().ok()?;
        match kind {
            REQUEST_IDENTITIES => Some(wire::identities_answer(&[
                AgentIdentity {
                    blob: cert_blob,
                    comment: keys.cert.key_id().as_bytes().to_vec(),
                },
                AgentIdentity {
                    blob: key_blob,
                    comment: b"idmux bare key".to_vec(),
                },
            ])),
            SIGN_REQUEST => {
                let req = SignRequest::parse(body)?;
                let holds = |k: &AgentKeys| -> Option<bool> {
                    let cert = k.cert.to_bytes().ok()?;
                    let key = k.key.public_key().key_data().encode_vec().ok()?;
                    Some(req.key_blob == cert.as_slice() || req.key_blob == key.as_slice())
                };
                let signer = if req.key_blob == cert_blob.as_slice()
                    || req.key_blob == key_blob.as_slice()
                {
                    keys
                } else {
                    self.previous().filter(|p| holds(p) == Some(true))?
                };
                let sig = sign(&signer.key, req.data, req.flags)?;
                Some(wire::sign_response(&sig.encode_vec().ok()?))
            }
            _ => None,
        }
    }

    /// Serve one client connection until it closes or sends a bad frame. A request must be
    /// at most [`MAX_REQUEST`] bytes and arrive whole within [`REQUEST_TIMEOUT`] of its first
    /// byte; its buffer grows with what arrives (a client that announces a large frame and
    /// sends nothing holds no memory).
    pub async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        s: S,
    ) -> Result<()> {
        self.serve_limited(s, MAX_REQUEST, REQUEST_TIMEOUT).await
    }

    /// [`Agent::serve`] with another request size limit (bytes, at most the protocol's
    /// frame limit) and request timeout (the daemon's `--agent-max-request-size` and
    /// `--agent-request-timeout`).
    pub async fn serve_limited<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        mut s: S,
        max_request: usize,
        request_timeout: std::time::Duration,
    ) -> Result<()> {
        loop {
            let mut len = [0u8; 4];
            if s.read_exact(&mut len[..1]).await.is_err() {
                return Ok(());
            }
            let msg = tokio::time::timeout(request_timeout, async {
                s.read_exact(&mut len[1..]).await?;
                let n = wire::request_len(len, max_request.min(MAX_FRAME))?;
                let mut msg = Vec::new();
                (&mut s).take(n as u64).read_to_end(&mut msg).await?;
                if msg.len() != n {
                    anyhow::bail!("agent request cut short");
                }
                Ok(msg)
            })
            .await
            .map_err(|_| {
                anyhow::anyhow!("agent request not complete within {request_timeout:?}")
            })??;
            let reply = self.respond(&msg);
            s.write_all(&(reply.len() as u32).to_be_bytes()).await?;
            s.write_all(&reply).await?;
        }
    }
}

fn sign(key: &PrivateKey, data: &[u8], flags: u32) -> Option<Signature> {
    use russh::keys::signature::Signer;
    match key.key_data() {
        KeypairData::Rsa(rsa) => {
            let hash = if flags & RSA_SHA2_256 != 0 {
                HashAlg::Sha256
            } else if flags & RSA_SHA2_512 != 0 {
                HashAlg::Sha512
            } else {
                return None; // ssh-rsa (SHA-1) is not offered
            };
            (rsa, Some(hash)).try_sign(data).ok()
        }
        _ => key.try_sign(data).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idmux_identity::KeyType;
    use idmux_wire::agent::{get_string, put_string, IDENTITIES_ANSWER, SIGN_RESPONSE};

    fn agent_for(kind: KeyType) -> (Agent, PrivateKey) {
        let tmp = tempfile::tempdir().unwrap();
        let cas = idmux_devcluster::ca::ClusterCas::create(&tmp.path().join("ca"), "c").unwrap();
        let key = idmux_identity::KeyPair::generate(kind).unwrap();
        let cert = cas
            .issue_ssh_user(
                &key.ssh_public().unwrap(),
                &idmux_devcluster::ca::UserCertFields {
                    username: "bot-x",
                    logins: &["root".into()],
                    roles: &[],
                    traits: &Default::default(),
                    route_to_cluster: "c",
                    renewable: false,
                    generation: 0,
                    bot_name: "x",
                    bot_instance_id: "",
                    impersonator: "",
                    disallow_reissue: false,
                    ttl: std::time::Duration::from_secs(60),
                },
            )
            .unwrap();
        let a = Agent::default();
        let k = key.to_ssh().unwrap();
        a.set(k.clone(), cert);
        (a, k)
    }

    #[test]
    fn lists_cert_and_bare_key_and_signs() {
        for kind in [KeyType::EcdsaP256, KeyType::Ed25519, KeyType::Rsa2048] {
            let (a, k) = agent_for(kind);
            let r = a.respond(&[REQUEST_IDENTITIES]);
            assert_eq!(r[0], IDENTITIES_ANSWER);
            assert_eq!(&r[1..5], &2u32.to_be_bytes());
            let mut body = &r[5..];
            let cert_blob = get_string(&mut body).unwrap().to_vec();
            let _ = get_string(&mut body).unwrap();
            let key_blob = get_string(&mut body).unwrap().to_vec();
            let mut req = vec![SIGN_REQUEST];
            put_string(&mut req, &cert_blob);
            put_string(&mut req, b"data to sign");
            req.extend_from_slice(&RSA_SHA2_512.to_be_bytes());
            let r = a.respond(&req);
            assert_eq!(r[0], SIGN_RESPONSE, "{kind:?}");
            let mut body = &r[1..];
            let sig_blob = get_string(&mut body).unwrap();
            let sig = russh::keys::ssh_encoding::Decode::decode(&mut &sig_blob[..])
                .map(|s: Signature| s)
                .unwrap();
            use russh::keys::signature::Verifier;
            Verifier::verify(k.public_key().key_data(), b"data to sign", &sig).unwrap();
            // The bare key signs too; an unknown key does not.
            let mut req2 = vec![SIGN_REQUEST];
            put_string(&mut req2, &key_blob);
            put_string(&mut req2, b"x");
            req2.extend_from_slice(&RSA_SHA2_256.to_be_bytes());
            assert_eq!(a.respond(&req2)[0], SIGN_RESPONSE);
            let mut bad = vec![SIGN_REQUEST];
            put_string(&mut bad, b"nope");
            put_string(&mut bad, b"x");
            bad.extend_from_slice(&0u32.to_be_bytes());
            assert_eq!(a.respond(&bad), vec![FAILURE]);
        }
    }

    fn sign_req(blob: &[u8]) -> Vec<u8> {
        let mut req = vec![SIGN_REQUEST];
        put_string(&mut req, blob);
        put_string(&mut req, b"data");
        req.extend_from_slice(&RSA_SHA2_512.to_be_bytes());
        req
    }

    #[test]
    fn the_replaced_key_still_signs_but_is_not_listed() {
        let (a, old) = agent_for(KeyType::EcdsaP256);
        let (b, new) = agent_for(KeyType::EcdsaP256);
        let new_cert = b.current().unwrap().cert.clone();
        let old_cert = a.current().unwrap().cert.to_bytes().unwrap();
        a.set(new.clone(), new_cert);
        // Listed: only the new key (cert and bare key).
        let r = a.respond(&[REQUEST_IDENTITIES]);
        let mut body = &r[5..];
        let listed = get_string(&mut body).unwrap().to_vec();
        assert_eq!(listed, a.current().unwrap().cert.to_bytes().unwrap());
        // An ssh that listed the old identity just before the swap still gets a signature.
        assert_eq!(a.respond(&sign_req(&old_cert))[0], SIGN_RESPONSE);
        let old_bare = old.public_key().key_data().encode_vec().unwrap();
        assert_eq!(a.respond(&sign_req(&old_bare))[0], SIGN_RESPONSE);
        // Two renewals on, the first key is gone.
        let (c, newer) = agent_for(KeyType::EcdsaP256);
        a.set(newer, c.current().unwrap().cert.clone());
        assert_eq!(a.respond(&sign_req(&old_cert)), vec![FAILURE]);
    }

    #[test]
    fn garbage_gets_failure() {
        let (a, _) = agent_for(KeyType::Ed25519);
        for m in [
            &[][..],
            &[SIGN_REQUEST][..],
            &[SIGN_REQUEST, 0, 0, 0, 9, 1][..],
            &[17, 1, 2][..],
            &[255][..],
        ] {
            assert_eq!(a.respond(m), vec![FAILURE]);
        }
        assert_eq!(
            Agent::default().respond(&[REQUEST_IDENTITIES]),
            vec![FAILURE]
        );
    }
}
