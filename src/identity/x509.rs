//! X.509 certificates as idmux reads them: PEM decoding that cannot hang, the Teleport
//! identity in a client certificate's subject, and the cluster that issued a certificate.

use std::time::SystemTime;

use anyhow::{bail, Result};

use crate::tlsid::{self, TlsIdentity};

/// Parse one PEM certificate.
pub fn parse_cert_pem(pem: &str) -> Result<x509_cert::Certificate> {
    use der::Decode;
    // PEM first, then DER, rather than der's streaming `DecodePem`: der 0.7's PEM reader
    // loops forever on some malformed bodies (found by fuzzing: a body of "MIIB\n\r"), which
    // would hang the multiplexer's reload of a damaged identity file.
    let (label, der) = der::pem::decode_vec(pem.trim().as_bytes()).map_err(der::Error::from)?;
    if label != "CERTIFICATE" {
        bail!("PEM block {label:?} is not a CERTIFICATE");
    }
    Ok(x509_cert::Certificate::from_der(&der)?)
}

/// [`parse_cert_pem`] of a text that is exactly one `CERTIFICATE` block in the lines the
/// identity file's reader splits (BEGIN line, body, END line; surrounding whitespace aside).
/// The PEM decoder also takes a bare CR as a line break, which the reader does not (found by
/// the fuzz targets `grpc_certs` and `data_dir`): a certificate kept in an identity must read
/// back.
pub fn parse_one_cert_pem(text: &str) -> Result<x509_cert::Certificate> {
    let t = text.trim();
    let (begin, end) = ("-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----");
    let lines: Vec<&str> = t.lines().map(str::trim).collect();
    let body_ok = lines.len() > 2
        && lines[1..lines.len() - 1]
            .iter()
            .all(|l| !l.starts_with("-----"));
    if lines.first() != Some(&begin) || lines.last() != Some(&end) || !body_ok {
        bail!("not one PEM CERTIFICATE block");
    }
    parse_cert_pem(t)
}

/// The Teleport identity and validity of a PEM client certificate.
pub fn tls_identity_of(pem: &str) -> Result<(TlsIdentity, SystemTime)> {
    let cert = parse_cert_pem(pem)?;
    let id = TlsIdentity::from_name(&cert.tbs_certificate.subject)?;
    Ok((id, cert.tbs_certificate.validity.not_after.to_system_time()))
}

/// The cluster a certificate was issued by (issuer O, as tbot reads it).
pub fn issuer_cluster(cert: &x509_cert::Certificate) -> Option<String> {
    tlsid::first_attr(&cert.tbs_certificate.issuer, tlsid::OID_O)
}
