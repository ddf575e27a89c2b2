//! Keys, certificates and the file formats of tbot's data and destination directories.
//!
//! - [`keys`]: private keys of the three supported types and their encodings.
//! - [`tlsid`]: Teleport's identity encoded in an X.509 subject.
//! - [`files`]: the identity (key + certs + CAs) and the files that hold it.

pub mod files;
pub mod keys;
pub mod tlsid;

pub use files::{HostCa, Identity};
pub use keys::{KeyPair, KeyType};
pub use tlsid::TlsIdentity;

/// Now as Unix seconds, the unit of an SSH certificate's `valid_after`/`valid_before`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds (an SSH certificate time) as RFC 3339, e.g. `2026-11-24T05:12:00Z`.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}
