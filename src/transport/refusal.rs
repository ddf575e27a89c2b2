//! A refusal by the far side (Auth's gRPC status, the proxy's HTTP status), typed so that
//! callers decide what to do from the code, not from the words. Its text is the one line
//! the user sees.

/// Who refused, and with what code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedWith {
    /// A gRPC status that Auth (or the proxy) sent.
    Grpc(tonic::Code),
    /// An HTTP status from the proxy's web API.
    Http(u16),
}

/// A request the far side answered with a refusal.
#[derive(Debug, thiserror::Error)]
#[error("{line}")]
pub struct Refused {
    pub with: RefusedWith,
    /// The one line shown to the user.
    pub line: String,
}

impl Refused {
    /// Will asking again never help? Teleport answers AccessDenied (gRPC PermissionDenied,
    /// HTTP 403) for a locked bot, a generation mismatch and a spent or unknown token,
    /// NotFound for a removed bot or role, and Unauthenticated for a certificate it no longer
    /// accepts.
    pub fn is_final(&self) -> bool {
        match self.with {
            RefusedWith::Grpc(code) => matches!(
                code,
                tonic::Code::PermissionDenied
                    | tonic::Code::NotFound
                    | tonic::Code::Unauthenticated
            ),
            RefusedWith::Http(status) => matches!(status, 401 | 403),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_codes() {
        let r = |with| Refused {
            with,
            line: String::new(),
        };
        assert!(r(RefusedWith::Grpc(tonic::Code::PermissionDenied)).is_final());
        assert!(r(RefusedWith::Grpc(tonic::Code::NotFound)).is_final());
        assert!(!r(RefusedWith::Grpc(tonic::Code::Unavailable)).is_final());
        assert!(!r(RefusedWith::Grpc(tonic::Code::Internal)).is_final());
        assert!(r(RefusedWith::Http(403)).is_final());
        assert!(!r(RefusedWith::Http(502)).is_final());
    }
}
