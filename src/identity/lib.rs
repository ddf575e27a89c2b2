//! idmux-identity: who the bot is, on disk and in certificates.
//!
//! Owns: private keys ([`keys`]), Teleport's identity in an X.509 subject ([`tlsid`]), reading
//! certificates ([`x509`]), the identity (key + certs + CAs) and tbot's data and destination
//! files ([`files`], [`destination`]), atomic owner-only writes ([`fsutil`]), the safety of
//! the dirs they go into ([`dirs`]: owner, mode, symlinks, a lock per dir) and their readers
//! ([`acl`]: POSIX ACLs of `idmux init`), ssh_config and
//! known_hosts rendering from the `ssh/` templates ([`openssh`]), paths ([`paths`]) and time
//! ([`time`]).
//!
//! Must not know: sockets, the proxy, async runtimes, the bot's schedule or the dev cluster.
//! It reads and writes files; it never dials.

pub mod acl;
pub mod destination;
pub mod dirs;
pub mod files;
pub mod fsutil;
pub mod keys;
pub mod openssh;
pub mod paths;
pub mod time;
pub mod tlsid;
pub mod x509;

pub use files::{HostCa, Identity};
pub use keys::{KeyPair, KeyType};
pub use time::{rfc3339, unix_now};
pub use tlsid::TlsIdentity;
