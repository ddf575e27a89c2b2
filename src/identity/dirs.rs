//! Dir safety: the data dir and every destination dir are checked, locked and probed before
//! the bot spends its join token or writes a file.
//!
//! Owns: [`check_dir`] (not a symlink, owned by the user idmux runs as, writable by nobody
//! else; a missing dir is created 0700), [`lock_dir`] (an exclusive `flock` on the dir itself,
//! so a second bot pointed at the same destination stops before it writes), [`probe_writable`]
//! (a temp file created and removed) and the list of dirs this process created.
//!
//! Must not know: what goes into a dir, the bot, the multiplexer, ACL readers (see
//! [`crate::acl`]), sockets or the network. Every refusal is one line that starts with the flag
//! that named the dir (`what`) and the path, then says what to do.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};
use nix::fcntl::{Flock, FlockArg};

/// Dirs this process created (and so may fix the mode of): see [`check_dir`].
static CREATED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Remember that this process created `dir` (absolute or not; kept absolute).
pub(crate) fn remember_created(dir: &Path) {
    if let Ok(abs) = crate::paths::absolute(dir) {
        let mut created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
        if !created.contains(&abs) {
            created.push(abs);
        }
    }
}

fn created_here(abs: &Path) -> bool {
    let created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
    created.iter().any(|c| c == abs)
}

/// A dir that passed [`check_dir`].
#[derive(Debug)]
pub struct CheckedDir {
    /// Its absolute path (symlinks not resolved: there are none that matter).
    pub path: PathBuf,
    /// This process created it (now, or earlier in this run).
    pub created: bool,
}

/// Check that `path` is a dir only the user idmux runs as controls, creating it (0700, with
/// missing parents) when missing. Refused, in one line naming `what` and the path:
/// - the dir is a symlink, or is reached through a symlink that someone other than root or
///   this user owns (a symlink owned by root, like `/var/run`, is fine);
/// - it exists and is not a dir;
/// - it is owned by another uid than the effective one (root may use a dir owned by root only);
/// - it is writable by group or others (`mode & 0o022`; with an ACL the group bits are its
///   mask), unless this process created it, in which case it is set to 0700.
pub fn check_dir(path: &Path, what: &str) -> Result<CheckedDir> {
    let abs = crate::paths::absolute(path)?;
    let shown = path.display();
    check_components(&abs, what, path)?;
    let meta = match fs::symlink_metadata(&abs) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&abs)
                .map_err(|e| anyhow!("{what} {shown}: cannot create the dir ({e})"))?;
            remember_created(&abs);
            fs::symlink_metadata(&abs)
                .map_err(|e| anyhow!("{what} {shown}: cannot stat the dir just created ({e})"))?
        }
        Err(e) if e.kind() == ErrorKind::NotADirectory => {
            bail!("{what} {shown}: a part of the path is a file, not a dir; choose another path")
        }
        Err(e) => bail!("{what} {shown}: cannot stat ({e})"),
    };
    if meta.file_type().is_symlink() {
        let target = fs::read_link(&abs)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        bail!(
            "{what} {shown}: is a symlink (to {target}); name the real dir, so that nobody \
             can point the bot's files elsewhere"
        );
    }
    if !meta.is_dir() {
        bail!("{what} {shown}: exists and is not a dir; remove it or choose another path");
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        bail!(
            "{what} {shown}: owned by {}, not by {} that idmux runs as; chown it or choose \
             another dir",
            user_name(meta.uid()),
            user_name(euid)
        );
    }
    let created = created_here(&abs);
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        if !created {
            bail!(
                "{what} {shown}: writable by other users (mode {mode:04o}); chmod go-w it or \
                 choose another dir"
            );
        }
        fs::set_permissions(&abs, fs::Permissions::from_mode(0o700))
            .map_err(|e| anyhow!("{what} {shown}: cannot chmod 0700 the dir idmux made ({e})"))?;
    }
    Ok(CheckedDir { path: abs, created })
}

/// Refuse a dir reached through a symlink that someone other than root or this user could
/// change. Only existing components are looked at (one `lstat` each); the last one is the
/// dir itself, which [`check_dir`] refuses as a symlink whoever owns it.
fn check_components(abs: &Path, what: &str, shown: &Path) -> Result<()> {
    let euid = nix::unistd::geteuid().as_raw();
    let mut at = PathBuf::new();
    let n = abs.components().count();
    for (i, c) in abs.components().enumerate() {
        at.push(c);
        if i + 1 == n || !matches!(c, Component::Normal(_)) {
            continue;
        }
        let Ok(m) = fs::symlink_metadata(&at) else {
            return Ok(());
        };
        if m.file_type().is_symlink() && m.uid() != 0 && m.uid() != euid {
            bail!(
                "{what} {}: reached through the symlink {} owned by {}, who could point it \
                 elsewhere; name the real dir",
                shown.display(),
                at.display(),
                user_name(m.uid())
            );
        }
    }
    Ok(())
}

/// `name (uid N)`, or `uid N` for a uid without a name.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// Take an exclusive, non-blocking `flock` on the dir itself, held as long as the returned
/// value lives: a second bot (or a second output of one) on the same dir is refused before it
/// writes anything. Nothing is created in the dir.
pub fn lock_dir(dir: &Path, what: &str) -> Result<Flock<File>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(|e| anyhow!("{what} {}: cannot open the dir ({e})", dir.display()))?;
    Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            anyhow!(
                "{what} {}: another bot writes this dir (its lock is held); give each bot its \
                 own destination",
                dir.display()
            )
        } else {
            anyhow!("{what} {}: cannot lock the dir ({errno})", dir.display())
        }
    })
}

/// Create and remove a temp file in `dir`: a dir the bot cannot write is refused now, not
/// after the join token is spent.
pub fn probe_writable(dir: &Path, what: &str) -> Result<()> {
    let probe = dir.join(format!(
        ".idmux-probe-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .map_err(|e| anyhow!("{what} {}: cannot write here ({e})", dir.display()))?;
    fs::remove_file(&probe)
        .map_err(|e| anyhow!("{what} {}: cannot remove a file here ({e})", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn missing_dir_is_created_owner_only() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        let c = check_dir(&d, "--destination-dir").unwrap();
        assert!(c.created);
        assert_eq!(mode(&d), 0o700);
    }

    #[test]
    fn symlink_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        fs::create_dir(&real).unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = check_dir(&link, "--destination-dir")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&format!(
            "--destination-dir {}: is a symlink",
            link.display()
        )));
        assert!(!e.contains('\n'));
        check_dir(&real, "--destination-dir").unwrap();
    }

    #[test]
    fn world_writable_existing_dir_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("open");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_dir(&d, "--destination-dir").unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "--destination-dir {}: writable by other users (mode 0777); chmod go-w it or \
                 choose another dir",
                d.display()
            )
        );
        assert_eq!(mode(&d), 0o777, "a dir idmux did not make is left as it is");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o750)).unwrap();
        check_dir(&d, "--destination-dir").unwrap();
    }

    #[test]
    fn group_writable_dir_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("g");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o770)).unwrap();
        assert!(check_dir(&d, "--data-dir").is_err());
    }

    #[test]
    fn dir_created_in_this_run_is_fixed() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("made");
        crate::fsutil::ensure_private_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        let c = check_dir(&d, "--destination-dir").unwrap();
        assert!(c.created);
        assert_eq!(mode(&d), 0o700);
    }

    #[test]
    fn foreign_owner_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("theirs");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        let nobody = nix::unistd::User::from_name("nobody")
            .unwrap()
            .expect("a user named nobody");
        if nix::unistd::geteuid() == nobody.uid {
            return;
        }
        nix::unistd::chown(&d, Some(nobody.uid), None).unwrap();
        let e = check_dir(&d, "--data-dir").unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("--data-dir {}: owned by nobody", d.display())),
            "{e}"
        );
    }

    #[test]
    fn symlink_parent_owned_by_another_user_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        fs::create_dir_all(real.join("dest")).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        // Owned by this user (or root): fine.
        check_dir(&link.join("dest"), "--destination-dir").unwrap();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &link,
            Some(nobody.uid),
            None,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
        let e = check_dir(&link.join("dest"), "--destination-dir")
            .unwrap_err()
            .to_string();
        assert!(e.contains("reached through the symlink"), "{e}");
    }

    #[test]
    fn file_in_the_way_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("file");
        fs::write(&f, b"x").unwrap();
        assert!(check_dir(&f, "--destination-dir")
            .unwrap_err()
            .to_string()
            .contains("is not a dir"));
        let e = check_dir(&f.join("dest"), "--destination-dir")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a part of the path is a file, not a dir"), "{e}");
    }

    #[test]
    fn second_lock_is_refused_until_the_first_goes() {
        let t = tempfile::tempdir().unwrap();
        let first = lock_dir(t.path(), "--destination-dir").unwrap();
        let e = lock_dir(t.path(), "--destination-dir")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "--destination-dir {}: another bot writes this dir (its lock is held); give \
                 each bot its own destination",
                t.path().display()
            )
        );
        drop(first);
        lock_dir(t.path(), "--destination-dir").unwrap();
    }

    #[test]
    fn probe_leaves_nothing_and_names_an_unwritable_dir() {
        let t = tempfile::tempdir().unwrap();
        probe_writable(t.path(), "--destination-dir").unwrap();
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
        let gone = t.path().join("gone");
        let e = probe_writable(&gone, "--destination-dir")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&format!(
            "--destination-dir {}: cannot write",
            gone.display()
        )));
    }
}
