//! Private keys: generation, Teleport's PEM encodings, and the OpenSSH views of a key.
//!
//! One key serves SSH and TLS, as in tbot. Encodings follow Teleport's `api/utils/keys`:
//! RSA private keys are PKCS#1 `RSA PRIVATE KEY`; ECDSA and Ed25519 are PKCS#8 `PRIVATE KEY`
//! (SEC1 `EC PRIVATE KEY` and PKCS#8 RSA are accepted on read). TLS public keys are PKCS#1
//! `RSA PUBLIC KEY` for RSA and PKIX `PUBLIC KEY` otherwise.

use std::fmt;

use anyhow::{anyhow, bail, Result};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use russh::keys::ssh_key::{
    self,
    private::{EcdsaKeypair, EcdsaPrivateKey, Ed25519Keypair, KeypairData, RsaKeypair},
    public::{EcdsaPublicKey, KeyData},
    PrivateKey, PublicKey,
};

/// The key algorithms idmux generates and loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Ed25519,
    EcdsaP256,
    Rsa2048,
}

impl KeyType {
    /// The key type Teleport uses for bot identities under a signature algorithm suite
    /// (`/webapi/find` `auth.signature_algorithm_suite`): RSA-2048 for `legacy` (and when
    /// unset), ECDSA P-256 for `balanced-v1`, `fips-v1` and `hsm-v1`.
    pub fn for_suite(suite: &str) -> KeyType {
        match suite {
            "balanced-v1" | "fips-v1" | "hsm-v1" => KeyType::EcdsaP256,
            _ => KeyType::Rsa2048,
        }
    }
}

impl std::str::FromStr for KeyType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ed25519" => Ok(KeyType::Ed25519),
            "ecdsa" | "ecdsa-p256" | "p256" => Ok(KeyType::EcdsaP256),
            "rsa" | "rsa2048" | "rsa-2048" => Ok(KeyType::Rsa2048),
            _ => bail!("unknown key type {s:?} (want ed25519, ecdsa or rsa)"),
        }
    }
}

/// A private key of one of the supported types.
#[derive(Clone)]
pub enum KeyPair {
    Ed25519(ed25519_dalek::SigningKey),
    EcdsaP256(p256::SecretKey),
    Rsa(Box<rsa::RsaPrivateKey>),
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        write!(f, "KeyPair({:?})", self.key_type())
    }
}

impl KeyPair {
    /// Generate a fresh key.
    pub fn generate(kind: KeyType) -> Result<KeyPair> {
        let mut rng = rand::rngs::OsRng;
        Ok(match kind {
            KeyType::Ed25519 => KeyPair::Ed25519(ed25519_dalek::SigningKey::generate(&mut rng)),
            KeyType::EcdsaP256 => KeyPair::EcdsaP256(p256::SecretKey::random(&mut rng)),
            KeyType::Rsa2048 => KeyPair::Rsa(Box::new(rsa::RsaPrivateKey::new(&mut rng, 2048)?)),
        })
    }

    pub fn key_type(&self) -> KeyType {
        match self {
            KeyPair::Ed25519(_) => KeyType::Ed25519,
            KeyPair::EcdsaP256(_) => KeyType::EcdsaP256,
            KeyPair::Rsa(_) => KeyType::Rsa2048,
        }
    }

    /// The private key as Teleport writes it (`key` files, first block of `identity`).
    pub fn to_pem(&self) -> Result<String> {
        let pem = match self {
            KeyPair::Ed25519(k) => k.to_pkcs8_pem(Default::default())?.to_string(),
            KeyPair::EcdsaP256(k) => k.to_pkcs8_pem(Default::default())?.to_string(),
            KeyPair::Rsa(k) => k.to_pkcs1_pem(Default::default())?.to_string(),
        };
        Ok(pem)
    }

    /// Parse a PEM private key. Accepts PKCS#8 (Ed25519, ECDSA P-256, RSA), PKCS#1 RSA and
    /// SEC1 ECDSA. The error says which part is wrong; the caller names the file.
    pub fn from_pem(pem: &str) -> Result<KeyPair> {
        let label = pem
            .lines()
            .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
            .and_then(|l| l.strip_suffix("-----"))
            .ok_or_else(|| anyhow!("no PEM private key block"))?;
        match label {
            "RSA PRIVATE KEY" => {
                let k = rsa::RsaPrivateKey::from_pkcs1_pem(pem)
                    .map_err(|e| anyhow!("bad RSA private key: {e}"))?;
                Self::checked_rsa(k)
            }
            "EC PRIVATE KEY" => {
                let k = p256::SecretKey::from_sec1_pem(pem)
                    .map_err(|e| anyhow!("bad EC private key (only P-256 is supported): {e}"))?;
                Ok(KeyPair::EcdsaP256(k))
            }
            "PRIVATE KEY" => {
                if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
                    return Ok(KeyPair::Ed25519(k));
                }
                if let Ok(k) = p256::SecretKey::from_pkcs8_pem(pem) {
                    return Ok(KeyPair::EcdsaP256(k));
                }
                if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_pem(pem) {
                    return Self::checked_rsa(k);
                }
                bail!("unsupported PKCS#8 private key type (want Ed25519, ECDSA P-256 or RSA)")
            }
            "OPENSSH PRIVATE KEY" => {
                let k = PrivateKey::from_openssh(pem)
                    .map_err(|e| anyhow!("bad OpenSSH private key: {e}"))?;
                Self::from_ssh(&k)
            }
            other => bail!("unsupported private key PEM type {other:?}"),
        }
    }

    fn checked_rsa(k: rsa::RsaPrivateKey) -> Result<KeyPair> {
        if k.size() * 8 < 2048 {
            bail!(
                "RSA key of {} bits is too small (want 2048 or more)",
                k.size() * 8
            );
        }
        Ok(KeyPair::Rsa(Box::new(k)))
    }

    /// Convert from an OpenSSH private key (Ed25519, ECDSA P-256 or RSA).
    pub(crate) fn from_ssh(k: &PrivateKey) -> Result<KeyPair> {
        match k.key_data() {
            KeypairData::Ed25519(kp) => Ok(KeyPair::Ed25519(
                ed25519_dalek::SigningKey::from_bytes(&kp.private.to_bytes()),
            )),
            KeypairData::Ecdsa(EcdsaKeypair::NistP256 { private, .. }) => Ok(KeyPair::EcdsaP256(
                p256::SecretKey::from_slice(private.as_slice())?,
            )),
            KeypairData::Rsa(kp) => {
                let n = rsa::BigUint::from_bytes_be(
                    kp.public().n().as_positive_bytes().unwrap_or_default(),
                );
                let e = rsa::BigUint::from_bytes_be(
                    kp.public().e().as_positive_bytes().unwrap_or_default(),
                );
                let d = rsa::BigUint::from_bytes_be(
                    kp.private().d().as_positive_bytes().unwrap_or_default(),
                );
                let p = rsa::BigUint::from_bytes_be(
                    kp.private().p().as_positive_bytes().unwrap_or_default(),
                );
                let q = rsa::BigUint::from_bytes_be(
                    kp.private().q().as_positive_bytes().unwrap_or_default(),
                );
                Self::checked_rsa(rsa::RsaPrivateKey::from_components(n, e, d, vec![p, q])?)
            }
            other => bail!("unsupported SSH key algorithm {:?}", other.algorithm()),
        }
    }

    /// The key as an OpenSSH private key (for russh and ssh-key certificate signing).
    pub fn to_ssh(&self) -> Result<PrivateKey> {
        let data = match self {
            KeyPair::Ed25519(k) => KeypairData::Ed25519(Ed25519Keypair::from_seed(&k.to_bytes())),
            KeyPair::EcdsaP256(k) => {
                let public = k.public_key().to_sec1_bytes();
                let EcdsaPublicKey::NistP256(point) = EcdsaPublicKey::from_sec1_bytes(&public)?
                else {
                    bail!("P-256 public key did not decode as P-256");
                };
                let bytes: [u8; 32] = k.to_bytes().into();
                KeypairData::Ecdsa(EcdsaKeypair::NistP256 {
                    public: point,
                    private: EcdsaPrivateKey::from(bytes),
                })
            }
            KeyPair::Rsa(k) => {
                let mpint =
                    |b: &rsa::BigUint| ssh_key::Mpint::from_positive_bytes(&b.to_bytes_be());
                let primes = k.primes();
                let (p, q) = (&primes[0], &primes[1]);
                let iqmp = k
                    .crt_coefficient()
                    .ok_or_else(|| anyhow!("RSA key has no CRT coefficient"))?;
                let public = ssh_key::public::RsaPublicKey::new(mpint(k.e()), mpint(k.n()))?;
                let private = ssh_key::private::RsaPrivateKey::new(
                    mpint(k.d()),
                    mpint(&iqmp),
                    mpint(p),
                    mpint(q),
                )?;
                KeypairData::Rsa(RsaKeypair::new(public, private)?)
            }
        };
        Ok(PrivateKey::new(data, "")?)
    }

    /// The SSH public key.
    pub fn ssh_public(&self) -> Result<PublicKey> {
        Ok(self.to_ssh()?.public_key().clone())
    }

    /// The SSH public key as an authorized_keys line with a trailing newline (`key.pub`), as
    /// Go's `ssh.MarshalAuthorizedKey` writes it.
    pub fn ssh_authorized_key(&self) -> Result<String> {
        Ok(format!("{}\n", self.ssh_public()?.to_openssh()?))
    }

    /// DER SubjectPublicKeyInfo of the public key (for X.509 certificates).
    pub fn spki_der(&self) -> Result<Vec<u8>> {
        let doc = match self {
            KeyPair::Ed25519(k) => k.verifying_key().to_public_key_der()?,
            KeyPair::EcdsaP256(k) => k.public_key().to_public_key_der()?,
            KeyPair::Rsa(k) => k.to_public_key().to_public_key_der()?,
        };
        Ok(doc.as_bytes().to_vec())
    }

    /// The TLS public key in PEM as Teleport sends it (`public_tls_key` of a join request).
    pub fn tls_public_pem(&self) -> Result<String> {
        Ok(match self {
            KeyPair::Rsa(k) => k.to_public_key().to_pkcs1_pem(Default::default())?,
            KeyPair::Ed25519(k) => k.verifying_key().to_public_key_pem(Default::default())?,
            KeyPair::EcdsaP256(k) => k.public_key().to_public_key_pem(Default::default())?,
        })
    }

    /// The private key as rustls wants it.
    pub fn to_rustls(&self) -> Result<rustls_pki_types::PrivateKeyDer<'static>> {
        let der = match self {
            KeyPair::Ed25519(k) => k.to_pkcs8_der()?.as_bytes().to_vec(),
            KeyPair::EcdsaP256(k) => k.to_pkcs8_der()?.as_bytes().to_vec(),
            KeyPair::Rsa(k) => k.to_pkcs8_der()?.as_bytes().to_vec(),
        };
        Ok(rustls_pki_types::PrivateKeyDer::Pkcs8(der.into()))
    }

    /// Does this private key belong to `public`?
    pub fn matches_ssh(&self, public: &KeyData) -> bool {
        self.ssh_public()
            .map(|p| p.key_data() == public)
            .unwrap_or(false)
    }
}

/// The SSH key data of a DER SubjectPublicKeyInfo (to compare a TLS cert's key with an SSH key).
pub fn ssh_key_data_from_spki(spki: &[u8]) -> Result<KeyData> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_der(spki) {
        return Ok(KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(
            k.to_bytes(),
        )));
    }
    if let Ok(k) = p256::PublicKey::from_public_key_der(spki) {
        return Ok(KeyData::Ecdsa(EcdsaPublicKey::from_sec1_bytes(
            &k.to_sec1_bytes(),
        )?));
    }
    if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(spki) {
        let e = ssh_key::Mpint::from_positive_bytes(&k.e().to_bytes_be());
        let n = ssh_key::Mpint::from_positive_bytes(&k.n().to_bytes_be());
        return Ok(KeyData::Rsa(ssh_key::public::RsaPublicKey::new(e, n)?));
    }
    bail!("unsupported public key type in certificate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_all_types() {
        for kind in [KeyType::Ed25519, KeyType::EcdsaP256, KeyType::Rsa2048] {
            let k = KeyPair::generate(kind).unwrap();
            let pem = k.to_pem().unwrap();
            let want = if kind == KeyType::Rsa2048 {
                "RSA PRIVATE KEY"
            } else {
                "PRIVATE KEY"
            };
            assert!(
                pem.starts_with(&format!("-----BEGIN {want}-----")),
                "{kind:?}: {pem}"
            );
            let back = KeyPair::from_pem(&pem).unwrap();
            assert_eq!(back.key_type(), kind);
            assert_eq!(
                back.ssh_authorized_key().unwrap(),
                k.ssh_authorized_key().unwrap()
            );
            // The SPKI and the SSH key describe the same public key.
            let from_spki = ssh_key_data_from_spki(&k.spki_der().unwrap()).unwrap();
            assert!(k.matches_ssh(&from_spki));
            // OpenSSH conversion round trip.
            let ssh = k.to_ssh().unwrap();
            assert_eq!(KeyPair::from_ssh(&ssh).unwrap().to_pem().unwrap(), pem);
        }
    }

    #[test]
    fn sec1_ec_key_accepted() {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let k = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let _ = k.public_key().to_encoded_point(false);
        let sec1 = k.to_sec1_pem(Default::default()).unwrap();
        assert_eq!(
            KeyPair::from_pem(&sec1).unwrap().key_type(),
            KeyType::EcdsaP256
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert!(KeyPair::from_pem("hello").is_err());
        let err = KeyPair::from_pem(
            "-----BEGIN DSA PRIVATE KEY-----\nAAAA\n-----END DSA PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("DSA PRIVATE KEY"), "{err}");
    }

    #[test]
    fn suite_picks_key_type() {
        assert_eq!(KeyType::for_suite("balanced-v1"), KeyType::EcdsaP256);
        assert_eq!(KeyType::for_suite("legacy"), KeyType::Rsa2048);
        assert_eq!(KeyType::for_suite(""), KeyType::Rsa2048);
    }
}
