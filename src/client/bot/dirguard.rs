//! The bot's dirs before it spends its token: the data dir and every destination dir are
//! checked (`idmux_identity::dirs::check_dir`), every dir the bot writes (outputs, the
//! multiplexer's) is locked for the bot's life and probed for writing; readers given by
//! `idmux init` are named in the log.
//!
//! Must not know: what is written into the dirs, the network, the join. The data dir keeps
//! tbot's own `DATA/lock` file (taken by `lock_data_dir`); this module only checks it.

use std::fs::File;
use std::path::PathBuf;

use anyhow::Result;
use nix::fcntl::Flock;

use idmux_identity::acl;
use idmux_identity::dirs::{check_dir, lock_dir, probe_writable};

use super::config::BotConfig;

/// The flag that names a destination dir in messages.
const DEST: &str = "--destination-dir";

/// Check the data dir (created when missing), before its `DATA/lock` is taken.
pub(crate) fn check_data_dir(cfg: &BotConfig) -> Result<()> {
    match cfg.data_dir() {
        Some(d) => check_dir(d, "--data-dir").map(|_| ()),
        None => Ok(()),
    }
}

/// Check, lock and probe every output dir, multiplexers' included (one lock for a dir named
/// twice), after the data dir's lock is held (a bot refused there creates no destination).
/// The returned locks are to be held as long as the bot runs.
pub(crate) fn guard_dirs(cfg: &BotConfig) -> Result<Vec<Flock<File>>> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for d in cfg
        .outputs
        .iter()
        .map(|o| &o.dir)
        .chain(cfg.multiplexers.iter().map(|m| &m.dir))
    {
        let checked = check_dir(d, DEST)?;
        if !dirs.contains(&checked.path) {
            dirs.push(checked.path);
        }
    }
    let mut locks = Vec::with_capacity(dirs.len());
    for d in &dirs {
        locks.push(lock_dir(d, DEST)?);
    }
    for d in &dirs {
        probe_writable(d, DEST)?;
        log_readers(d)?;
    }
    Ok(locks)
}

/// Say who else reads `dir` through its ACL (`idmux init --reader-user`). Entries in the
/// dir's access ACL that its default ACL lacks (or the other way round) were not set by
/// `idmux init`: as tbot with `acls: try` (its default), that is a warning, not a refusal. An
/// entry that could write is refused earlier: it shows as group write in the dir's mode.
fn log_readers(dir: &std::path::Path) -> Result<()> {
    let names = |r: &[acl::Reader]| r.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    let odd = names(&acl::not_from_init(dir)?);
    let access = acl::readers(dir)?;
    if !odd.is_empty() {
        tracing::warn!(
            "{DEST} {}: ACL entries idmux init did not set: {} (run idmux init again to set the \
             readers)",
            dir.display(),
            odd.join(", ")
        );
    } else if !access.is_empty() {
        tracing::info!(
            "{DEST} {}: readable by {} through its ACL",
            dir.display(),
            names(&access).join(", ")
        );
    }
    Ok(())
}
