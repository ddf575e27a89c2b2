//! Paths idmux writes into files other programs read: absolute directories and the idmux
//! binaries' own paths (for ProxyCommand lines).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Absolute form of a path (without resolving symlinks).
pub fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}: cannot make absolute", p.display()))
}

/// Paths of the idmux binaries, for ProxyCommand lines.
pub fn exe_paths() -> Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("cannot find the idmux executable")?;
    let fdpass = exe.with_file_name("idmux-fdpass");
    Ok((exe, fdpass))
}
