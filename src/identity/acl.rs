//! Readers of a destination dir: POSIX ACLs that let named users and groups (and nobody else)
//! read the files the bot writes there and connect to the multiplexer's sockets, as
//! `idmux init --reader-user` sets them up (tbot's `tbot init --reader-user`).
//!
//! Owns: the dir's ACLs ([`share_dir`]: an access ACL giving each reader `r-x` on the dir and
//! a default ACL that every new file inherits), reading them back ([`readers`], [`inherited`],
//! [`not_from_init`]) and the ACL of each file or socket written into such a dir
//! ([`follow_dir`], [`share_file`]). Files are written as new inodes (temp file and rename),
//! so each one gets its ACL when it is made: the named readers
//! from the dir's default ACL, `r--` on files and `rw-` on sockets (connecting needs write),
//! the owner, group and others exactly as the file's mode says.
//!
//! Must not know: which files a destination holds, the bot, the multiplexer, user flags. A dir
//! without a default ACL (the usual owner-only one) is left alone: nothing here runs then but
//! one `getxattr`.

use std::io::ErrorKind;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use exacl::{AclEntry, AclEntryKind, AclOption, Flag, Perm};

/// A user or group given read access to a destination dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reader {
    User(String),
    Group(String),
}

impl std::fmt::Display for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reader::User(u) => write!(f, "user:{u}"),
            Reader::Group(g) => write!(f, "group:{g}"),
        }
    }
}

fn rwx(bits: u32) -> Perm {
    let mut p = Perm::empty();
    if bits & 4 != 0 {
        p |= Perm::READ;
    }
    if bits & 2 != 0 {
        p |= Perm::WRITE;
    }
    if bits & 1 != 0 {
        p |= Perm::EXECUTE;
    }
    p
}

fn named(r: &Reader, perms: Perm, flags: Option<Flag>) -> AclEntry {
    match r {
        Reader::User(u) => AclEntry::allow_user(u, perms, flags),
        Reader::Group(g) => AclEntry::allow_group(g, perms, flags),
    }
}

/// The owner, group and other entries of `mode`, then one entry per reader and the mask.
fn entries(mode: u32, readers: &[Reader], reader: Perm, flags: Option<Flag>) -> Vec<AclEntry> {
    let mut e = vec![
        AclEntry::allow_user("", rwx(mode >> 6), flags),
        AclEntry::allow_group("", rwx(mode >> 3), flags),
        AclEntry::allow_other(rwx(mode), flags),
    ];
    if !readers.is_empty() {
        e.extend(readers.iter().map(|r| named(r, reader, flags)));
        e.push(AclEntry::allow_mask(reader | rwx(mode >> 3), flags));
    }
    e
}

/// Give `readers` (and nobody else) access to `dir`: the dir is set to mode 0700 plus an
/// access ACL with `r-x` for each reader and a default ACL that files made in it inherit.
/// With no readers, every ACL is removed and the dir is owner-only. The names must exist.
pub fn share_dir(dir: &Path, readers: &[Reader]) -> Result<()> {
    let mut acl = entries(0o700, readers, Perm::READ | Perm::EXECUTE, None);
    if !readers.is_empty() {
        // Inherited: readers rw- (the writer narrows files to r--, sockets keep rw-).
        acl.extend(entries(
            0o700,
            readers,
            Perm::READ | Perm::WRITE,
            Some(Flag::DEFAULT),
        ));
    }
    exacl::setfacl(&[dir], &acl, None).map_err(|e| {
        let who: Vec<String> = readers.iter().map(|r| r.to_string()).collect();
        anyhow!(
            "{}: cannot set the ACL for {} ({e}); is the user or group there and does the \
             filesystem support ACLs (mount option acl)?",
            dir.display(),
            if who.is_empty() {
                "the owner only".to_string()
            } else {
                who.join(", ")
            }
        )
    })
}

/// The named users and groups of `dir`'s access ACL (empty without an ACL or ACL support).
pub fn readers(dir: &Path) -> Result<Vec<Reader>> {
    named_entries(dir, AclOption::ACCESS_ACL, "the ACL")
}

/// The readers a new file in `dir` inherits: the named entries of its default ACL.
pub fn inherited(dir: &Path) -> Result<Vec<Reader>> {
    named_entries(dir, AclOption::DEFAULT_ACL, "the default ACL")
}

/// The named user and group entries of one of `dir`'s ACLs (`what` names it in errors).
fn named_entries(dir: &Path, which: AclOption, what: &str) -> Result<Vec<Reader>> {
    let acl = match exacl::getfacl(dir, which) {
        Ok(a) => a,
        Err(e) if unsupported(&e) => return Ok(Vec::new()),
        Err(e) => bail!("{}: cannot read {what} ({e})", dir.display()),
    };
    Ok(acl
        .iter()
        .filter(|e| !e.name.is_empty())
        .filter_map(|e| match e.kind {
            AclEntryKind::User => Some(Reader::User(e.name.clone())),
            AclEntryKind::Group => Some(Reader::Group(e.name.clone())),
            _ => None,
        })
        .collect())
}

/// Named entries `idmux init` did not set: in `dir`'s access ACL but not in its default ACL,
/// or the other way round (`init` sets the same readers in both).
pub fn not_from_init(dir: &Path) -> Result<Vec<Reader>> {
    let (access, default) = (readers(dir)?, inherited(dir)?);
    Ok(access
        .iter()
        .filter(|r| !default.contains(r))
        .chain(default.iter().filter(|r| !access.contains(r)))
        .cloned()
        .collect())
}

fn unsupported(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::Unsupported || e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// Give the file or socket `path`, just made in its dir with `mode`, the readers of the dir's
/// default ACL (see [`share_file`]). Nothing happens in a dir without a default ACL.
pub fn follow_dir(path: &Path, mode: u32, socket: bool) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let readers = inherited(dir)?;
    if readers.is_empty() {
        return Ok(());
    }
    share_file(path, mode, &readers, socket)
}

/// Set the ACL of the file or socket `path`: owner, group and others as `mode` says, and
/// `readers` `r--` on a file, `rw-` on a socket (`socket`: connecting needs write). With no
/// readers the ACL is the mode alone.
pub fn share_file(path: &Path, mode: u32, readers: &[Reader], socket: bool) -> Result<()> {
    let perms = if socket {
        Perm::READ | Perm::WRITE
    } else {
        Perm::READ
    };
    exacl::setfacl(&[path], &entries(mode, readers, perms, None), None)
        .map_err(|e| anyhow!("{}: cannot set the readers' access ({e})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The access ACL as getfacl prints it: `user:nobody:r--` lines.
    fn text(p: &Path) -> String {
        let mut out = String::new();
        for e in exacl::getfacl(p, AclOption::ACCESS_ACL).unwrap() {
            let kind = match e.kind {
                AclEntryKind::User => "user",
                AclEntryKind::Group => "group",
                AclEntryKind::Mask => "mask",
                AclEntryKind::Other => "other",
                _ => "?",
            };
            let bit = |p: Perm, c: char| if e.perms.contains(p) { c } else { '-' };
            out += &format!(
                "{kind}:{}:{}{}{}\n",
                e.name,
                bit(Perm::READ, 'r'),
                bit(Perm::WRITE, 'w'),
                bit(Perm::EXECUTE, 'x')
            );
        }
        out
    }

    #[test]
    fn a_rewritten_key_is_readable_by_the_reader_only() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        share_dir(d, &[Reader::User("nobody".into())]).unwrap();
        assert_eq!(readers(d).unwrap(), vec![Reader::User("nobody".into())]);
        let dir_acl = text(d);
        assert!(dir_acl.contains("user:nobody:r-x"), "{dir_acl}");
        assert!(dir_acl.contains("mask::r-x"), "{dir_acl}");
        assert!(dir_acl.contains("other::---"), "{dir_acl}");
        let key = d.join("key");
        for round in 0..2 {
            let before = std::fs::metadata(&key).ok().map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.ino()
            });
            crate::fsutil::write_atomic(&key, format!("k{round}").as_bytes(), 0o600).unwrap();
            if let Some(ino) = before {
                use std::os::unix::fs::MetadataExt;
                assert_ne!(std::fs::metadata(&key).unwrap().ino(), ino, "a new inode");
            }
            let acl = text(&key);
            assert!(acl.contains("user:nobody:r--"), "{acl}");
            assert!(acl.contains("mask::r--"), "{acl}");
            assert!(acl.contains("group::---"), "{acl}");
            assert!(acl.contains("other::---"), "{acl}");
            assert!(acl.contains("user::rw-"), "{acl}");
        }
    }

    #[test]
    fn a_socket_lets_the_reader_connect() {
        let t = tempfile::tempdir().unwrap();
        share_dir(t.path(), &[Reader::Group("nogroup".into())]).unwrap();
        let s = t.path().join("agent.sock");
        let _l = std::os::unix::net::UnixListener::bind(&s).unwrap();
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o600)).unwrap();
        follow_dir(&s, 0o600, true).unwrap();
        let acl = text(&s);
        assert!(acl.contains("group:nogroup:rw-"), "{acl}");
        assert!(acl.contains("mask::rw-"), "{acl}");
    }

    #[test]
    fn no_readers_means_owner_only_and_no_default() {
        let t = tempfile::tempdir().unwrap();
        share_dir(t.path(), &[Reader::User("nobody".into())]).unwrap();
        share_dir(t.path(), &[]).unwrap();
        assert!(readers(t.path()).unwrap().is_empty());
        assert!(inherited(t.path()).unwrap().is_empty());
        let mode = std::fs::metadata(t.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let f = t.path().join("f");
        crate::fsutil::write_atomic(&f, b"x", 0o600).unwrap();
        assert_eq!(text(&f), "user::rw-\ngroup::---\nother::---\n");
    }

    #[test]
    fn an_entry_added_by_hand_is_not_from_init() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        share_dir(d, &[Reader::User("nobody".into())]).unwrap();
        assert!(not_from_init(d).unwrap().is_empty());
        // `setfacl -m g:nogroup:r-x D`: the access ACL only.
        let mut acl = exacl::getfacl(d, AclOption::ACCESS_ACL).unwrap();
        acl.push(AclEntry::allow_group(
            "nogroup",
            Perm::READ | Perm::EXECUTE,
            None,
        ));
        exacl::setfacl(&[d], &acl, AclOption::ACCESS_ACL).unwrap();
        assert_eq!(
            not_from_init(d).unwrap(),
            vec![Reader::Group("nogroup".into())]
        );
    }

    #[test]
    fn an_unknown_reader_is_named() {
        let t = tempfile::tempdir().unwrap();
        let e = share_dir(t.path(), &[Reader::User("no-such-user-idmux".into())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("user:no-such-user-idmux"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
