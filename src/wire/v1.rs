//! The v1.sock request ("V1 Teleport SSH multiplexer protocol"): `host:port[|cluster]` then NUL.
//!
//! Pure parsing: bytes in, [`Target`] or an error naming what is wrong. The request must end
//! with NUL within [`MAX_REQUEST`] bytes; more than two `|` fields, an empty host or a bad port
//! are errors. Bytes after the NUL belong to the SSH stream and are returned untouched.

use std::fmt;

use crate::hostport::HostPortError;

/// Longest request accepted before the NUL.
pub const MAX_REQUEST: usize = 1024;

/// Where a v1.sock client wants to go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Empty: the identity's own cluster.
    pub cluster: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hostport::join(&self.host, self.port))?;
        if !self.cluster.is_empty() {
            write!(f, "|{}", self.cluster)?;
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RequestError {
    /// No NUL yet; read more.
    Incomplete,
    TooLong,
    NotUtf8,
    TooManyFields(usize),
    MissingPort(String),
    EmptyHost,
    BadHost(String),
    BadPort(String),
    EmptyCluster,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Incomplete => write!(f, "request ended before its NUL terminator"),
            RequestError::TooLong => write!(
                f,
                "request has no NUL terminator within {MAX_REQUEST} bytes"
            ),
            RequestError::NotUtf8 => write!(f, "request is not text"),
            RequestError::TooManyFields(n) => write!(
                f,
                "request has {n} '|' separated fields; want host:port or host:port|cluster"
            ),
            RequestError::MissingPort(t) => write!(f, "target {t:?} has no port; want host:port"),
            RequestError::EmptyHost => write!(f, "target has an empty host"),
            RequestError::BadHost(h) => {
                write!(f, "target host {h:?} is neither a host name nor an address")
            }
            RequestError::BadPort(p) => write!(f, "target port {p:?} is not a port number"),
            RequestError::EmptyCluster => write!(f, "target names an empty cluster after '|'"),
        }
    }
}

impl std::error::Error for RequestError {}

/// The request bytes a client sends for `target` (`host:port[|cluster]` then NUL).
pub fn encode(target: &Target) -> Vec<u8> {
    let mut out = target.to_string().into_bytes();
    out.push(0);
    out
}

/// Parse the request at the start of `buf`. Returns the target and how many bytes it used
/// (including the NUL).
pub fn parse(buf: &[u8]) -> Result<(Target, usize), RequestError> {
    let Some(nul) = buf.iter().position(|&b| b == 0) else {
        return Err(if buf.len() >= MAX_REQUEST {
            RequestError::TooLong
        } else {
            RequestError::Incomplete
        });
    };
    if nul > MAX_REQUEST {
        return Err(RequestError::TooLong);
    }
    let text = std::str::from_utf8(&buf[..nul]).map_err(|_| RequestError::NotUtf8)?;
    let fields: Vec<&str> = text.split('|').collect();
    if fields.len() > 2 {
        return Err(RequestError::TooManyFields(fields.len()));
    }
    let cluster = fields.get(1).copied().unwrap_or("");
    if fields.len() == 2 && cluster.is_empty() {
        return Err(RequestError::EmptyCluster);
    }
    let (host, port) = crate::hostport::split(fields[0]).map_err(|e| match e {
        HostPortError::NoPort => RequestError::MissingPort(fields[0].to_string()),
        HostPortError::EmptyHost => RequestError::EmptyHost,
        HostPortError::BadHost(h) => RequestError::BadHost(h.to_string()),
        HostPortError::BadPort(p) => RequestError::BadPort(p.to_string()),
    })?;
    Ok((
        Target {
            host: host.to_string(),
            port,
            cluster: cluster.to_string(),
        },
        nul + 1,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_requests() {
        let (t, n) = parse(b"node-1.c:3022|c\0SSH-2.0-x").unwrap();
        assert_eq!(
            t,
            Target {
                host: "node-1.c".into(),
                port: 3022,
                cluster: "c".into()
            }
        );
        assert_eq!(n, 16);
        assert_eq!(parse(b"h:22\0").unwrap().0.cluster, "");
        assert_eq!(parse(b"[::1]:22\0").unwrap().0.host, "::1");
        assert_eq!(parse(b"h:22|c\0").unwrap().0.to_string(), "h:22|c");
    }

    #[test]
    fn encode_is_host_port_cluster_nul() {
        // Byte for byte what fdpass-teleport sends (PROTOCOL.md section 2).
        let t = Target {
            host: "node-1".into(),
            port: 3022,
            cluster: "c".into(),
        };
        assert_eq!(encode(&t), b"node-1:3022|c\0");
        let v6 = Target {
            host: "::1".into(),
            port: 22,
            cluster: String::new(),
        };
        assert_eq!(encode(&v6), b"[::1]:22\0");
        assert_eq!(parse(&encode(&v6)).unwrap().0, v6);
    }

    #[test]
    fn bad_requests() {
        assert_eq!(parse(b"h:22"), Err(RequestError::Incomplete));
        assert_eq!(parse(&[b'a'; 2000]), Err(RequestError::TooLong));
        assert_eq!(parse(b"a|b|c\0"), Err(RequestError::TooManyFields(3)));
        assert_eq!(parse(b":22\0"), Err(RequestError::EmptyHost));
        assert_eq!(parse(b"h:x\0"), Err(RequestError::BadPort("x".into())));
        assert_eq!(
            parse(b"h:99999\0"),
            Err(RequestError::BadPort("99999".into()))
        );
        assert_eq!(parse(b"h\0"), Err(RequestError::MissingPort("h".into())));
        assert_eq!(parse(b"h:22|\0"), Err(RequestError::EmptyCluster));
        assert_eq!(parse(b"\xff:22\0"), Err(RequestError::NotUtf8));
        assert_eq!(parse(b"[[]]:3\0"), Err(RequestError::BadHost("[]".into())));
        assert_eq!(parse(b"a]:3\0"), Err(RequestError::BadHost("a]".into())));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u32 = 12345;
        for len in 0..300 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1103515245).wrapping_add(12345);
                    (x >> 16) as u8 % 64 + if x.is_multiple_of(7) { 0 } else { 32 }
                })
                .collect();
            let _ = parse(&buf);
        }
    }
}
