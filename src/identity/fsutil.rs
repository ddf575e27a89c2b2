//! Atomic, permission-aware file writes.
//!
//! Every file idmux writes goes through [`write_atomic`]: a temp file in the same folder, fsync,
//! rename, fsync of the folder. A reader sees the old file or the new one, never a mix, and a
//! failed write leaves the old file in place. Private material is 0600; folders idmux creates are
//! 0700. In a dir with readers ([`crate::acl`]) each new file gets their read access.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};

/// File mode for private keys and anything secret.
pub const PRIVATE: u32 = 0o600;
/// File mode for public material (certs, CA files, ssh_config, known_hosts).
pub const PUBLIC: u32 = 0o644;

/// Write `data` to `path` atomically with the given mode.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    write_set_atomic(&[(path, data, mode)])
}

/// Write a set of files that belong together (a key and its certificates): every temp file is
/// written and synced first, then they are renamed into place back to back, in the order given,
/// and the folders synced. A failure before the renames leaves every old file in place; the
/// renames follow each other within microseconds, so a reader that opens two of the files sees
/// a pair from one write in all but that window.
pub fn write_set_atomic(files: &[(&Path, &[u8], u32)]) -> Result<()> {
    let mut staged: Vec<(std::path::PathBuf, &Path)> = Vec::with_capacity(files.len());
    let result = (|| -> Result<()> {
        for (path, data, mode) in files {
            let dir = parent_of(path);
            let name = path
                .file_name()
                .with_context(|| format!("{}: not a file path", path.display()))?;
            let tmp = dir.join(format!(
                ".{}.tmp-{}-{}",
                name.to_string_lossy(),
                std::process::id(),
                rand::random::<u32>()
            ));
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(*mode)
                .open(&tmp)
                .with_context(|| format!("{}: cannot create", tmp.display()))?;
            staged.push((tmp.clone(), path));
            // The umask may have narrowed the mode; public files must stay readable.
            f.set_permissions(fs::Permissions::from_mode(*mode))?;
            // A dir shared with readers (`idmux init --reader-user`): this new inode too.
            crate::acl::follow_dir(&tmp, *mode, false)?;
            f.write_all(data)
                .with_context(|| format!("{}: cannot write", tmp.display()))?;
            f.sync_all()
                .with_context(|| format!("{}: cannot sync", tmp.display()))?;
        }
        while !staged.is_empty() {
            let (tmp, path) = staged.remove(0);
            if let Err(e) = fs::rename(&tmp, path) {
                let _ = fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("{}: cannot replace", path.display()));
            }
        }
        let mut synced: Vec<&Path> = Vec::new();
        for (path, _, _) in files {
            let dir = parent_of(path);
            if !synced.contains(&dir) {
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
                synced.push(dir);
            }
        }
        Ok(())
    })();
    for (tmp, _) in staged {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Create `dir` (and parents) with mode 0700 if it does not exist. An existing folder is left
/// as it is: its owner chose its mode. A dir made here is remembered
/// ([`crate::dirs::check_dir`] may then fix its mode).
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("{}: cannot create directory", dir.display()))?;
    crate::dirs::remember_created(dir);
    Ok(())
}

/// Is `name` a temp file [`write_set_atomic`] (`.NAME.tmp-PID-RAND`) or `dirs::probe_writable`
/// (`.idmux-probe-PID-RAND`) makes?
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && (name.contains(".tmp-") || name.starts_with(".idmux-probe-"))
}

/// Remove the temp files a writer killed mid-write left in `dir` (see [`is_temp_name`]).
/// Call only while holding the dir's lock: then no other writer's temp file is in flight.
/// Returns how many were removed.
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    let mut n = 0;
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot list", dir.display())),
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let is_file = e.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_file && is_temp_name(&name.to_string_lossy()) {
            fs::remove_file(e.path()).with_context(|| {
                format!("{}: cannot remove a stale temp file", e.path().display())
            })?;
            n += 1;
        }
    }
    Ok(n)
}

/// Read a file to a string, naming the file in the error.
pub fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn stale_temps_are_ours_only() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            ".key.tmp-12-34",
            ".identity.tmp-1-2",
            ".idmux-probe-3-4",
            "key",
            ".hidden",
            "a.tmp-1",
        ] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        super::write_atomic(&d.path().join("ok"), b"y", super::PUBLIC).unwrap();
        assert_eq!(super::remove_stale_temps(d.path()).unwrap(), 3);
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec![".hidden", "a.tmp-1", "key", "ok"]);
    }
}
