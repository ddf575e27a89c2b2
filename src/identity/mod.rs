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
