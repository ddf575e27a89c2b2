//! The ALPN protocol names a Teleport proxy routes by (TLS routing, PROTOCOL.md section 1).

/// The proxy's SSH service (`proxy:` subsystem to nodes).
pub const PROXY_SSH: &[u8] = b"teleport-proxy-ssh";
/// The proxy's gRPC TransportService (`ProxySSH` streams to nodes).
pub const PROXY_GRPC: &[u8] = b"teleport-proxy-ssh-grpc";
/// The proxy's reverse tunnel (newest first); a client's upgrade detection dials with
/// `teleport-reversetunnel` and reads "nothing negotiated" as "behind an L7 load balancer".
pub const REVERSE_TUNNEL_V2: &[u8] = b"teleport-reversetunnelv2";
pub const REVERSE_TUNNEL: &[u8] = b"teleport-reversetunnel";
/// The SNI a Teleport API client sends to Auth.
pub const AUTH_SERVER_NAME: &str = "teleport.cluster.local";

/// The ALPN that routes a connection to the Auth service of `cluster`:
/// `teleport-auth@<hex(cluster)>.teleport.cluster.local`.
pub fn auth(cluster: &str) -> String {
    let hex: String = cluster.bytes().map(|b| format!("{b:02x}")).collect();
    format!("teleport-auth@{hex}.{AUTH_SERVER_NAME}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn auth_alpn_is_hex_of_the_cluster() {
        assert_eq!(
            super::auth("a.b"),
            "teleport-auth@612e62.teleport.cluster.local"
        );
    }
}
