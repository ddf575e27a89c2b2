//! Time as certificates and flags state it: Unix seconds, RFC 3339, and TTLs like `1h`.

use std::time::Duration;

use anyhow::{anyhow, Result};

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

/// Parse a TTL like `1h`, `30m`, `45s` (humantime syntax), naming the flag or key in the error.
pub fn parse_ttl(s: &str, flag: &str) -> Result<Duration> {
    humantime::parse_duration(s).map_err(|e| anyhow!("{flag} {s:?}: {e}"))
}
