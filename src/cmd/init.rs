//! `idmux init`: prepare a destination dir as `tbot init` does. It is created (0700) and given
//! to its owner (the bot user), then either kept owner-only or shared with one reader user
//! and/or group through POSIX ACLs (`idmux_identity::acl`): the reader may read what the bot
//! writes there and connect to the multiplexer's sockets, nobody else may. What is already in
//! the dir gets the same owner and access; `--clean` removes what idmux does not write there.
//!
//! Must not know: the cluster, tokens, the bot's schedule. The flags are tbot's, except that
//! the owner must be the bot user: idmux's bot refuses a dir it does not own.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use nix::unistd::{Group, User};

use idmux_identity::acl::{self, Reader};
use idmux_identity::destination::{is_output_name, output_mode};
use idmux_identity::paths::absolute;

#[derive(clap::Args)]
pub(crate) struct InitArgs {
    /// The destination dir to prepare (created when missing).
    #[arg(long)]
    destination_dir: PathBuf,
    /// The user the bot runs as, who owns the dir (default: the current user).
    #[arg(long)]
    bot_user: Option<String>,
    /// A user who may read the dir's files and use its sockets (through an ACL).
    #[arg(long)]
    reader_user: Option<String>,
    /// A group whose members may read the dir's files and use its sockets (through an ACL).
    #[arg(long)]
    reader_group: Option<String>,
    /// user:group owning the dir and its files (default: the bot user and its group); the
    /// user must be the bot user.
    #[arg(long)]
    owner: Option<String>,
    /// Remove what idmux does not write into a destination dir.
    #[arg(long)]
    clean: bool,
}

fn user(name: &str, flag: &str) -> Result<User> {
    User::from_name(name)
        .map_err(|e| anyhow!("{flag} {name}: cannot look the user up ({e})"))?
        .ok_or_else(|| anyhow!("{flag} {name}: no such user"))
}

fn group(name: &str, flag: &str) -> Result<Group> {
    Group::from_name(name)
        .map_err(|e| anyhow!("{flag} {name}: cannot look the group up ({e})"))?
        .ok_or_else(|| anyhow!("{flag} {name}: no such group"))
}

pub(crate) fn run(a: InitArgs) -> Result<()> {
    let dir = absolute(&a.destination_dir)?;
    let shown = format!("--destination-dir {}", a.destination_dir.display());
    let bot = match &a.bot_user {
        Some(n) => user(n, "--bot-user")?,
        None => User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .ok_or_else(|| {
                anyhow!(
                    "the current user (uid {}) has no name",
                    nix::unistd::geteuid()
                )
            })?,
    };
    let (owner, owner_group) = match &a.owner {
        Some(s) => {
            let (u, g) = s
                .split_once(':')
                .ok_or_else(|| anyhow!("--owner {s}: expected user:group"))?;
            (user(u, "--owner")?, group(g, "--owner")?)
        }
        None => {
            let g = Group::from_gid(bot.gid).ok().flatten().ok_or_else(|| {
                anyhow!("--bot-user {}: its group {} has no name", bot.name, bot.gid)
            })?;
            (bot.clone(), g)
        }
    };
    if owner.uid != bot.uid {
        bail!(
            "--owner {}: idmux's bot writes only a dir it owns, so the owner must be the bot \
             user {}",
            a.owner.as_deref().unwrap_or_default(),
            bot.name
        );
    }
    let mut readers = Vec::new();
    if let Some(r) = &a.reader_user {
        let u = user(r, "--reader-user")?;
        if u.uid == owner.uid {
            bail!("--reader-user {r}: owns the dir already; name another user or none");
        }
        readers.push(Reader::User(u.name));
    }
    if let Some(g) = &a.reader_group {
        readers.push(Reader::Group(group(g, "--reader-group")?.name));
    }

    match fs::symlink_metadata(&dir) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!("{shown}: is a symlink; name the real dir")
        }
        Ok(m) if !m.is_dir() => bail!("{shown}: exists and is not a dir"),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| anyhow!("{shown}: cannot create the dir ({e})"))?,
        Err(e) => bail!("{shown}: cannot stat ({e})"),
    }
    let give = |p: &std::path::Path| {
        nix::unistd::chown(p, Some(owner.uid), Some(owner_group.gid)).map_err(|e| {
            anyhow!(
                "{}: cannot give it to {}:{} ({e}); run idmux init as root or as the owner",
                p.display(),
                owner.name,
                owner_group.name
            )
        })
    };
    give(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| anyhow!("{shown}: cannot chmod 0700 ({e})"))?;
    acl::share_dir(&dir, &readers)?;

    let mut unexpected = Vec::new();
    let entries = fs::read_dir(&dir).map_err(|e| anyhow!("{shown}: cannot list ({e})"))?;
    for entry in entries {
        let entry = entry.map_err(|e| anyhow!("{shown}: cannot list ({e})"))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = fs::symlink_metadata(&path)
            .map_err(|e| anyhow!("{}: cannot stat ({e})", path.display()))?;
        let kind = meta.file_type();
        if !is_output_name(&name) || !(kind.is_file() || kind.is_socket()) {
            if a.clean {
                let removed = if kind.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.map_err(|e| anyhow!("{}: cannot remove ({e})", path.display()))?;
                println!("removed {}", path.display());
            } else {
                unexpected.push(name);
            }
            continue;
        }
        give(&path)?;
        // The mode idmux writes it with (with an ACL, the mode's group bits are its mask).
        let (mode, socket) = (output_mode(&name), kind.is_socket());
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(|e| anyhow!("{}: cannot chmod {mode:04o} ({e})", path.display()))?;
        acl::share_file(&path, mode, &readers, socket)?;
    }
    let who: Vec<String> = readers.iter().map(|r| r.to_string()).collect();
    println!(
        "{}: owner {}:{}, {}",
        dir.display(),
        owner.name,
        owner_group.name,
        if who.is_empty() {
            "owner-only".to_string()
        } else {
            format!("readable by {} through its ACL", who.join(", "))
        }
    );
    if !unexpected.is_empty() {
        unexpected.sort();
        eprintln!(
            "idmux: {shown}: not written by idmux, left as they are: {} (--clean removes them)",
            unexpected.join(", ")
        );
    }
    Ok(())
}
