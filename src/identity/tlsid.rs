//! Teleport's identity inside an X.509 subject (lib/tlsca/ca.go `Subject`/`FromSubject`).
//!
//! CN = username, O = roles (one attribute per role), OU = usage, L = logins, STREET =
//! route-to-cluster, PostalCode = traits JSON, and extra attributes under Teleport's private
//! OIDs. Attributes are laid out as Go's `pkix.Name.ToRDNSequence` does: one RDN per attribute
//! type holding all its values, in the order C, ST, L, STREET, PostalCode, O, OU, CN, then the
//! extra names, each in its own RDN. Strings are PrintableString when they fit, else UTF8String.

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::{anyhow, Result};
use der::asn1::{Any, ObjectIdentifier as Oid, SetOfVec};
use der::{Decode, Tag, Tagged};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

pub(crate) const OID_CN: &str = "2.5.4.3";
pub(crate) const OID_L: &str = "2.5.4.7";
pub(crate) const OID_STREET: &str = "2.5.4.9";
pub(crate) const OID_O: &str = "2.5.4.10";
pub(crate) const OID_OU: &str = "2.5.4.11";
pub(crate) const OID_POSTAL: &str = "2.5.4.17";
pub(crate) const OID_TELEPORT_CLUSTER: &str = "1.3.9999.1.7";
pub(crate) const OID_RENEWABLE: &str = "1.3.9999.1.13";
pub(crate) const OID_GENERATION: &str = "1.3.9999.1.14";
pub(crate) const OID_IMPERSONATOR: &str = "1.3.9999.2.7";
pub(crate) const OID_DISALLOW_REISSUE: &str = "1.3.9999.2.9";
pub(crate) const OID_SYSTEM_ROLES: &str = "1.3.9999.2.11";
pub(crate) const OID_BOT_NAME: &str = "1.3.9999.2.18";
pub(crate) const OID_BOT_INSTANCE_ID: &str = "1.3.9999.2.20";

/// The identity fields idmux reads and writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsIdentity {
    pub username: String,
    pub groups: Vec<String>,
    pub usage: Vec<String>,
    pub principals: Vec<String>,
    pub route_to_cluster: String,
    pub traits: BTreeMap<String, Vec<String>>,
    pub teleport_cluster: String,
    pub renewable: bool,
    pub generation: u64,
    pub impersonator: String,
    pub disallow_reissue: bool,
    pub system_roles: Vec<String>,
    pub bot_name: String,
    pub bot_instance_id: String,
}

fn oid(s: &str) -> Oid {
    Oid::from_str(s).expect("static OID")
}

fn is_printable(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b))
}

fn string_value(s: &str) -> Result<Any> {
    let tag = if is_printable(s) {
        Tag::PrintableString
    } else {
        Tag::Utf8String
    };
    Ok(Any::new(tag, s.as_bytes())?)
}

fn rdn(oid_str: &str, values: &[String]) -> Result<RelativeDistinguishedName> {
    let mut set = SetOfVec::new();
    for v in values {
        set.insert(AttributeTypeAndValue {
            oid: oid(oid_str),
            value: string_value(v)?,
        })?;
    }
    Ok(RelativeDistinguishedName(set))
}

impl TlsIdentity {
    /// Encode as an X.509 subject.
    pub fn to_name(&self) -> Result<Name> {
        let mut rdns = Vec::new();
        let mut push = |o: &str, vals: &[String]| -> Result<()> {
            if !vals.is_empty() {
                rdns.push(rdn(o, vals)?);
            }
            Ok(())
        };
        push(OID_L, &self.principals)?;
        // Teleport always sets STREET and PostalCode, even when empty.
        push(OID_STREET, std::slice::from_ref(&self.route_to_cluster))?;
        push(OID_POSTAL, &[serde_json::to_string(&self.traits)?])?;
        push(OID_O, &self.groups)?;
        push(OID_OU, &self.usage)?;
        push(OID_CN, std::slice::from_ref(&self.username))?;
        let mut extra = |o: &str, v: &str| -> Result<()> {
            if !v.is_empty() {
                push(o, &[v.to_string()])?;
            }
            Ok(())
        };
        extra(OID_TELEPORT_CLUSTER, &self.teleport_cluster)?;
        if self.renewable {
            extra(OID_RENEWABLE, "true")?;
        }
        if self.generation > 0 {
            extra(OID_GENERATION, &self.generation.to_string())?;
        }
        extra(OID_IMPERSONATOR, &self.impersonator)?;
        if self.disallow_reissue {
            extra(OID_DISALLOW_REISSUE, "true")?;
        }
        for r in &self.system_roles {
            extra(OID_SYSTEM_ROLES, r)?;
        }
        extra(OID_BOT_NAME, &self.bot_name)?;
        extra(OID_BOT_INSTANCE_ID, &self.bot_instance_id)?;
        Ok(RdnSequence(rdns))
    }

    /// Decode from an X.509 subject. Unknown attributes are ignored, as Teleport does.
    pub fn from_name(name: &Name) -> Result<TlsIdentity> {
        let mut id = TlsIdentity::default();
        for rdn in name.0.iter() {
            for atv in rdn.0.iter() {
                let v = attr_string(&atv.value)?;
                match atv.oid.to_string().as_str() {
                    OID_CN => id.username = v,
                    OID_O => id.groups.push(v),
                    OID_OU => id.usage.push(v),
                    OID_L => id.principals.push(v),
                    OID_STREET => id.route_to_cluster = v,
                    OID_POSTAL if v.is_empty() || v == "null" => {}
                    OID_POSTAL => {
                        id.traits = serde_json::from_str(&v)
                            .map_err(|e| anyhow!("bad traits JSON in certificate subject: {e}"))?
                    }
                    OID_TELEPORT_CLUSTER => id.teleport_cluster = v,
                    OID_RENEWABLE => id.renewable = v == "true",
                    OID_GENERATION => {
                        id.generation = v
                            .parse()
                            .map_err(|_| anyhow!("bad generation {v:?} in certificate subject"))?
                    }
                    OID_IMPERSONATOR => id.impersonator = v,
                    OID_DISALLOW_REISSUE => id.disallow_reissue = v == "true",
                    OID_SYSTEM_ROLES => id.system_roles.push(v),
                    OID_BOT_NAME => id.bot_name = v,
                    OID_BOT_INSTANCE_ID => id.bot_instance_id = v,
                    _ => {}
                }
            }
        }
        Ok(id)
    }
}

/// The string value of a directory attribute (Printable, UTF8 or IA5).
pub(crate) fn attr_string(v: &Any) -> Result<String> {
    match v.tag() {
        Tag::PrintableString | Tag::Utf8String | Tag::Ia5String | Tag::TeletexString => {
            Ok(String::from_utf8(v.value().to_vec())?)
        }
        t => Err(anyhow!("unsupported attribute string type {t}")),
    }
}

/// The first value of an attribute type in a name (e.g. the issuer's O = cluster name).
pub(crate) fn first_attr(name: &Name, oid_str: &str) -> Option<String> {
    name.0
        .iter()
        .flat_map(|r| r.0.iter())
        .find(|a| a.oid.to_string() == oid_str)
        .and_then(|a| attr_string(&a.value).ok())
}

/// Parse a DER certificate.
pub fn parse_cert_der(der: &[u8]) -> Result<x509_cert::Certificate> {
    Ok(x509_cert::Certificate::from_der(der)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_round_trip_with_repeated_roles() {
        let mut traits = BTreeMap::new();
        traits.insert(
            "logins".to_string(),
            vec!["root".to_string(), "ubuntu".to_string()],
        );
        let id = TlsIdentity {
            username: "bot-ci".into(),
            groups: vec!["access".into(), "editor".into()],
            principals: vec!["root".into(), "ubuntu".into()],
            route_to_cluster: "example.com".into(),
            traits,
            teleport_cluster: "example.com".into(),
            renewable: true,
            generation: 3,
            bot_name: "ci".into(),
            bot_instance_id: "0b7a3c1e".into(),
            ..Default::default()
        };
        let name = id.to_name().unwrap();
        let s = name.to_string();
        assert!(s.contains("O=access") && s.contains("O=editor"), "{s}");
        assert_eq!(TlsIdentity::from_name(&name).unwrap(), id);
    }
}
