//! Manual CA rotation, one phase per step, as `tctl auth rotate --manual --type T --phase P`
//! does it (`lib/auth/rotate.go` `processRotationRequest`):
//! - `init` (only from standby): new keys of the cluster's suite become **additional trusted**;
//!   the old keys keep signing.
//! - `update_clients` (only from init): the sets swap: the new keys sign, the old stay trusted.
//! - `update_servers` (only from update_clients): no key changes; servers reload and present
//!   certificates from the new CA (the running dev cluster reissues its own and its nodes').
//! - `rollback` (from init, update_clients or update_servers): the old keys sign again (swapped
//!   back unless from init), the new stay trusted.
//! - `standby` (only from update_servers or rollback): the additional trusted keys are dropped.
//!
//! Refusals carry Teleport's words. Pure: the caller saves the CA.

use anyhow::{bail, Result};

use crate::ca::{ca_key_types, Authority, CaKind, KeySet, Suite};

/// The phases a manual rotation steps through.
pub const PHASES: [&str; 5] = [
    "init",
    "update_clients",
    "update_servers",
    "rollback",
    "standby",
];

/// The keys `init` adds: of the suite's types for this CA. (RSA takes up to seconds under
/// `legacy`: callers make them before taking any lock.)
pub fn next_keys(cluster: &str, suite: Suite, kind: CaKind) -> Result<KeySet> {
    let (ssh, tls) = ca_key_types(suite, kind);
    KeySet::create(cluster, ssh, tls)
}

/// Move `ca` to `phase`; `init` takes its new keys from `fresh`.
pub fn step(ca: &mut Authority, phase: &str, fresh: impl FnOnce() -> Result<KeySet>) -> Result<()> {
    let cur = ca.phase.clone();
    let only_from = |from: &str| -> Result<()> {
        if cur != from {
            bail!("can only switch to phase {phase} from {from}, current phase is {cur}");
        }
        Ok(())
    };
    let no_transition =
        || -> Result<()> { bail!("can not transition to phase {phase:?} from {cur:?} phase.") };
    match phase {
        "init" => {
            if cur != "standby" && !cur.is_empty() {
                bail!("can not initiate rotation while another is in progress");
            }
            ca.additional = Some(fresh()?);
        }
        "update_clients" => {
            only_from("init")?;
            swap(ca)?;
        }
        "update_servers" => only_from("update_clients")?,
        "rollback" => match cur.as_str() {
            "init" => {}
            "update_clients" | "update_servers" => swap(ca)?,
            _ => no_transition()?,
        },
        "standby" => match cur.as_str() {
            "update_servers" | "rollback" => ca.additional = None,
            _ => no_transition()?,
        },
        other => bail!("unsupported phase: {other:?}"),
    }
    ca.phase = phase.to_string();
    Ok(())
}

fn swap(ca: &mut Authority) -> Result<()> {
    let Some(next) = ca.additional.take() else {
        bail!(
            "the {} CA has no additional trusted keys to swap in",
            ca.kind.name()
        );
    };
    ca.additional = Some(std::mem::replace(&mut ca.active, next));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::ClusterCas;

    fn go(ca: &mut Authority, suite: Suite, phase: &str) -> Result<()> {
        let kind = ca.kind;
        step(ca, phase, || next_keys("rot.test", suite, kind))
    }

    fn fp(k: &KeySet) -> String {
        k.ssh_public_line().unwrap()
    }

    #[test]
    fn a_full_rotation_and_teleports_refusals() {
        let d = tempfile::tempdir().unwrap();
        let mut cas = ClusterCas::create(&d.path().join("ca"), "rot.test").unwrap();
        let ca = &mut cas.host;
        let old = fp(&ca.active);
        let e = go(ca, Suite::BalancedV1, "update_clients").unwrap_err();
        assert_eq!(
            e.to_string(),
            "can only switch to phase update_clients from init, current phase is standby"
        );
        let e = go(ca, Suite::BalancedV1, "standby").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"can not transition to phase "standby" from "standby" phase."#
        );

        go(ca, Suite::BalancedV1, "init").unwrap();
        assert_eq!(fp(&ca.active), old, "init keeps signing with the old keys");
        let new = fp(ca.additional.as_ref().unwrap());
        assert_ne!(new, old);
        let e = go(ca, Suite::BalancedV1, "init").unwrap_err();
        assert_eq!(
            e.to_string(),
            "can not initiate rotation while another is in progress"
        );

        go(ca, Suite::BalancedV1, "update_clients").unwrap();
        assert_eq!(fp(&ca.active), new);
        assert_eq!(fp(ca.additional.as_ref().unwrap()), old);
        go(ca, Suite::BalancedV1, "update_servers").unwrap();
        assert_eq!(ca.trusted().count(), 2);
        go(ca, Suite::BalancedV1, "standby").unwrap();
        assert_eq!(fp(&ca.active), new);
        assert!(ca.additional.is_none());
        assert_eq!(ca.phase, "standby");
    }

    #[test]
    fn rollback_keeps_the_new_keys_trusted_until_standby() {
        let d = tempfile::tempdir().unwrap();
        let mut cas = ClusterCas::create(&d.path().join("ca"), "rot.test").unwrap();
        let ca = &mut cas.user;
        let old = fp(&ca.active);
        go(ca, Suite::BalancedV1, "init").unwrap();
        go(ca, Suite::BalancedV1, "update_clients").unwrap();
        go(ca, Suite::BalancedV1, "rollback").unwrap();
        assert_eq!(fp(&ca.active), old);
        assert_eq!(ca.trusted().count(), 2);
        go(ca, Suite::BalancedV1, "standby").unwrap();
        assert_eq!(fp(&ca.active), old);
        assert_eq!(ca.trusted().count(), 1);
    }

    #[test]
    fn new_keys_follow_the_suite_and_survive_a_reload() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("ca");
        let mut cas = ClusterCas::create(&dir, "rot.test").unwrap();
        cas.suite = Suite::FipsV1;
        go(&mut cas.host, Suite::FipsV1, "init").unwrap();
        cas.save_authority(&dir, CaKind::Host).unwrap();
        let back = ClusterCas::load(&dir).unwrap();
        assert_eq!(back.host.phase, "init");
        let next = back.host.additional.as_ref().unwrap();
        assert_eq!(next.ssh_key.key_type(), idmux_identity::KeyType::EcdsaP256);
        assert_eq!(fp(next), fp(cas.host.additional.as_ref().unwrap()));
    }
}
