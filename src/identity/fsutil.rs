//! Atomic, permission-aware file writes, and sets of files written as one.
//!
//! Every file idmux writes goes through [`FileSet`] (or [`write_atomic`], a set of one): temp
//! files in the same folder, fsync, rename, fsync of the folder. A reader sees the old file or
//! the new one, never a mix, and a failed write leaves the old file in place. Private material
//! is 0600; folders idmux creates are 0700. In a dir with readers ([`crate::acl`]) each new file
//! gets their read access.
//!
//! A set of several files (a key, its certificates and CAs) is committed by a journal:
//! [`JOURNAL`] holds the whole set (names, modes, contents, and a SHA-256 over them) and is
//! made durable first: that is the commit point, one file and two syncs after the caller's
//! data is ready. Then the files are written as temp files and renamed into place back to
//! back (the order the caller gave), synced, and the journal removed. A writer killed before
//! the commit point leaves the old set whole (its temp files are removed by [`recover`]); one
//! killed after it leaves a journal from which [`recover`] writes the set again. Either way
//! the dir holds one set after a start, never a key beside another write's certificate; a
//! reader that opens two files while the renames run can still pair two writes (the
//! renames are consecutive syscalls). What this must not know: which files belong together
//! (the callers say) or what they hold.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// File mode for private keys and anything secret.
pub const PRIVATE: u32 = 0o600;
/// File mode for public material (certs, CA files, ssh_config, known_hosts).
pub const PUBLIC: u32 = 0o644;

/// The journal of a set being committed, in the set's folder (see [`encode_journal`]).
/// Present only between a set's commit point and the set being durable in place (or a crash
/// there).
pub const JOURNAL: &str = ".idmux-set";
const JOURNAL_HEADER: &str = "idmux file set v2";

/// Files of one folder that belong together, written as one ([`FileSet::commit`]).
#[derive(Debug)]
pub struct FileSet {
    dir: PathBuf,
    files: Vec<(String, Vec<u8>, u32)>,
}

impl FileSet {
    /// An empty set of files in `dir`.
    pub fn new(dir: &Path) -> FileSet {
        FileSet {
            dir: dir.to_path_buf(),
            files: Vec::new(),
        }
    }

    /// Add the file `name` (a plain name in the set's folder) with `data` and `mode`. Files are
    /// renamed into place in the order they are added; a name added twice keeps its last data.
    pub fn add(&mut self, name: &str, data: impl Into<Vec<u8>>, mode: u32) -> &mut FileSet {
        self.files.retain(|(n, _, _)| n != name);
        self.files.push((name.to_string(), data.into(), mode));
        self
    }

    /// The folder the set is written in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write the set. Returns when it became durable (the commit point: the journal synced, or
    /// for one file its rename synced); what follows the commit point is redone by
    /// [`recover`] if the process dies during it.
    pub fn commit(&self) -> Result<Instant> {
        let dir = &self.dir;
        for (name, _, _) in &self.files {
            check_plain_name(name).with_context(|| format!("{}: bad file name", dir.display()))?;
        }
        if self.files.len() == 1 {
            let (name, data, mode) = &self.files[0];
            let tmp = dir.join(temp_name(name));
            write_temp(&tmp, data, *mode, true)?;
            replace(&tmp, &dir.join(name))?;
            sync_dir(dir);
            return Ok(Instant::now());
        }
        let jtmp = dir.join(temp_name(JOURNAL));
        write_temp(&jtmp, &encode_journal(&self.files), PRIVATE, true)?;
        replace(&jtmp, &dir.join(JOURNAL))
            .with_context(|| format!("{}: cannot commit", dir.display()))?;
        sync_dir(dir);
        let durable = Instant::now();
        failpoint("set-committed", 1);
        self.put_in_place().with_context(|| {
            format!(
                "{}: the set is committed ({JOURNAL}) but not in place; the next start writes it",
                dir.display()
            )
        })?;
        let _ = fs::remove_file(dir.join(JOURNAL));
        Ok(durable)
    }

    /// Write and sync every file as a temp file, then rename them into place back to back (a
    /// rename over a file whose new data is not yet on disk makes ext4 start writing it out,
    /// which would stretch the burst), then sync the folder.
    fn put_in_place(&self) -> Result<()> {
        let dir = &self.dir;
        let mut staged: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(self.files.len());
        let r = (|| -> Result<()> {
            for (name, data, mode) in &self.files {
                let tmp = dir.join(temp_name(name));
                write_temp(&tmp, data, *mode, true)?;
                staged.push((tmp, dir.join(name)));
            }
            for (i, (tmp, path)) in staged.iter().enumerate() {
                replace(tmp, path)?;
                failpoint("set-rename", i + 1);
            }
            staged.clear();
            sync_dir(dir);
            Ok(())
        })();
        for (tmp, _) in staged {
            let _ = fs::remove_file(tmp);
        }
        r
    }
}

/// Rename `tmp` over `path`, removing `tmp` if that fails.
fn replace(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path).map_err(|e| {
        let _ = fs::remove_file(tmp);
        anyhow::Error::new(e).context(format!("{}: cannot replace", path.display()))
    })
}

/// The journal's bytes: `idmux file set v2`, the hex SHA-256 of the rest, then per file
/// `NAME MODE(octal) LENGTH` and a newline, the contents and a newline.
pub fn encode_journal(files: &[(String, Vec<u8>, u32)]) -> Vec<u8> {
    use sha2::Digest;
    let mut body = Vec::new();
    for (name, data, mode) in files {
        body.extend_from_slice(format!("{name} {mode:o} {}\n", data.len()).as_bytes());
        body.extend_from_slice(data);
        body.push(b'\n');
    }
    let mut out = format!(
        "{JOURNAL_HEADER}\n{}\n",
        hex::encode(sha2::Sha256::digest(&body))
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// The files of a journal: every name plain and not one of ours, the checksum right.
pub fn parse_journal(text: &[u8]) -> Result<Vec<(String, Vec<u8>, u32)>> {
    use sha2::Digest;
    let line = |rest: &[u8]| -> Result<(String, usize)> {
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .context("a line has no end")?;
        let l = std::str::from_utf8(&rest[..end]).context("a line is not UTF-8")?;
        Ok((l.to_string(), end + 1))
    };
    let (header, n) = line(text)?;
    if header != JOURNAL_HEADER {
        bail!("no {JOURNAL_HEADER:?} header");
    }
    let (sum, m) = line(&text[n..])?;
    let body = &text[n + m..];
    if hex::encode(sha2::Sha256::digest(body)) != sum {
        bail!("its checksum does not match (a journal cut short)");
    }
    let mut out: Vec<(String, Vec<u8>, u32)> = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let (l, used) = line(&body[at..])?;
        at += used;
        let mut parts = l.split(' ');
        let (Some(name), Some(mode), Some(len), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("{l:?} is not NAME MODE LENGTH");
        };
        check_plain_name(name)?;
        if name == JOURNAL || is_temp_name(name) {
            bail!("{name:?} is not a file of a set");
        }
        let mode = u32::from_str_radix(mode, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .with_context(|| format!("{name}: bad mode {mode:?}"))?;
        let len: usize = len
            .parse()
            .with_context(|| format!("{name}: bad length {len:?}"))?;
        let end = at
            .checked_add(len)
            .filter(|e| *e < body.len() && body[*e] == b'\n')
            .with_context(|| format!("{name}: cut short"))?;
        out.push((name.to_string(), body[at..end].to_vec(), mode));
        at = end + 1;
    }
    Ok(out)
}

/// Crash tests' fault injection: with `IDMUX_FAILPOINT=NAME:N` in the environment, the
/// process aborts (as a kill -9 would stop it) the `N`th time it passes `NAME`: `set-committed`
/// (a set's journal is durable, nothing renamed) or `set-rename` (after the `N`th rename of a
/// set). Unset, this is one environment lookup per set.
fn failpoint(name: &str, n: usize) {
    if let Ok(v) = std::env::var("IDMUX_FAILPOINT") {
        if v.split_once(':') == Some((name, &n.to_string())) {
            eprintln!("idmux: failpoint {v}: aborting");
            std::process::abort();
        }
    }
}

fn temp_name(name: &str) -> String {
    format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Create and fill one temp file with `mode`, and sync it if asked.
fn write_temp(tmp: &Path, data: &[u8], mode: u32, sync: bool) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .with_context(|| format!("{}: cannot create", tmp.display()))?;
    let r = (|| -> Result<()> {
        // The umask may have narrowed the mode; public files must stay readable.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        // A dir shared with readers (`idmux init --reader-user`): this new inode too.
        crate::acl::follow_dir(tmp, mode, false)?;
        f.write_all(data)
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        if sync {
            f.sync_all()
                .with_context(|| format!("{}: cannot sync", tmp.display()))?;
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = fs::remove_file(tmp);
    }
    r
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn check_plain_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("{name:?} is not a plain file name");
    }
    Ok(())
}

/// Write `data` to `path` atomically with the given mode.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    FileSet::new(parent_of(path))
        .add(&name.to_string_lossy(), data, mode)
        .commit()
        .map(|_| ())
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

/// Is `name` a temp file [`FileSet`] (`.NAME.tmp-PID-RAND`) or `dirs::probe_writable`
/// (`.idmux-probe-PID-RAND`) makes?
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && (name.contains(".tmp-") || name.starts_with(".idmux-probe-"))
}

/// What [`recover`] did to a dir.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Files of a committed set, written again from the journal.
    pub finished: usize,
    /// Temp files of writes that did not reach their commit point, removed.
    pub removed: usize,
}

/// Bring `dir` back to one whole set after a writer was killed: write a committed set again
/// from its [`JOURNAL`], then remove the
/// temp files of writes that did not finish. Call only while holding the dir's lock: then no
/// other writer is in flight.
pub fn recover(dir: &Path) -> Result<Recovered> {
    let mut out = Recovered::default();
    let jpath = dir.join(JOURNAL);
    match fs::read(&jpath) {
        Ok(bytes) => {
            // Written whole before its rename: a journal that does not parse was damaged
            // later, and a human must look.
            let files = parse_journal(&bytes)
                .with_context(|| format!("{}: not a journal idmux wrote", jpath.display()))?;
            out.finished = files.len();
            FileSet {
                dir: dir.to_path_buf(),
                files,
            }
            .put_in_place()
            .with_context(|| format!("{}: cannot finish the set it holds", jpath.display()))?;
            fs::remove_file(&jpath)
                .with_context(|| format!("{}: cannot remove", jpath.display()))?;
            sync_dir(dir);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", jpath.display())),
    }
    out.removed = remove_stale_temps(dir)?;
    Ok(out)
}

/// Remove the temp files a writer killed mid-write left in `dir` (see [`is_temp_name`]).
/// Call only while holding the dir's lock, after finishing a journal ([`recover`] does both).
/// Returns how many were removed.
fn remove_stale_temps(dir: &Path) -> Result<usize> {
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
    use super::*;

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

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
            fs::write(d.path().join(f), b"x").unwrap();
        }
        write_atomic(&d.path().join("ok"), b"y", PUBLIC).unwrap();
        let r = recover(d.path()).unwrap();
        assert_eq!(
            r,
            Recovered {
                finished: 0,
                removed: 3
            }
        );
        assert_eq!(names(d.path()), vec![".hidden", "a.tmp-1", "key", "ok"]);
    }

    #[test]
    fn a_set_is_written_whole_with_its_modes_and_no_journal_left() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("key"), b"old key").unwrap();
        let mut set = FileSet::new(d.path());
        set.add("key", "new key", PRIVATE)
            .add("key-cert.pub", "new cert", PUBLIC)
            .add("key", "newer key", PRIVATE);
        set.commit().unwrap();
        assert_eq!(names(d.path()), vec!["key", "key-cert.pub"]);
        assert_eq!(fs::read(d.path().join("key")).unwrap(), b"newer key");
        let mode = |n: &str| fs::metadata(d.path().join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode("key"), mode("key-cert.pub")), (0o600, 0o644));
    }

    /// A writer killed after its commit point, between two renames: the key is new, the
    /// certificate still old, temp files about. `recover` writes the set again from the
    /// journal; the temp file of a set that never committed is removed.
    #[test]
    fn a_committed_set_is_finished_and_an_uncommitted_one_rolled_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::write(p.join("key"), b"key 2").unwrap();
        fs::write(p.join("key-cert.pub"), b"cert 1").unwrap();
        fs::write(p.join(".tlscert.tmp-9-2"), b"tls 2").unwrap();
        fs::write(p.join(".key.tmp-8-7"), b"key 3 (never committed)").unwrap();
        let set = vec![
            ("key".to_string(), b"key 2".to_vec(), 0o600),
            ("key-cert.pub".to_string(), b"cert 2\n".to_vec(), 0o644),
            ("tlscert".to_string(), b"tls 2".to_vec(), 0o644),
        ];
        fs::write(p.join(JOURNAL), encode_journal(&set)).unwrap();
        let r = recover(p).unwrap();
        assert_eq!(
            r,
            Recovered {
                finished: 3,
                removed: 2
            }
        );
        assert_eq!(names(p), vec!["key", "key-cert.pub", "tlscert"]);
        assert_eq!(fs::read(p.join("key-cert.pub")).unwrap(), b"cert 2\n");
        assert_eq!(fs::read(p.join("tlscert")).unwrap(), b"tls 2");
        let mode = fs::metadata(p.join("key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Idempotent: a second start finds nothing to do.
        assert_eq!(recover(p).unwrap(), Recovered::default());
    }

    #[test]
    fn a_journal_is_checked_before_anything_is_written_from_it() {
        let good = encode_journal(&[("key".to_string(), b"k\n".to_vec(), 0o600)]);
        assert_eq!(parse_journal(&good).unwrap()[0].1, b"k\n");
        let mut cut = good.clone();
        cut.pop();
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        for (bad, why) in [
            (b"no header\n".to_vec(), "header"),
            (cut, "checksum"),
            (flipped, "checksum"),
            (encode_journal(&[("../key".into(), vec![], 0o600)]), "plain"),
            (
                encode_journal(&[(".key.tmp-1-1".into(), vec![], 0o600)]),
                "not a file of a set",
            ),
            (
                encode_journal(&[(JOURNAL.into(), vec![], 0o600)]),
                "not a file of a set",
            ),
        ] {
            let e = format!("{:#}", parse_journal(&bad).unwrap_err());
            assert!(e.contains(why), "{e}");
        }
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(JOURNAL), "idmux file set v2\nx\n").unwrap();
        let e = format!("{:#}", recover(d.path()).unwrap_err());
        assert!(e.contains(".idmux-set: not a journal idmux wrote"), "{e}");
    }
}
