//! The library enums a flag chooses, as clap sees them: the libraries know no clap, so each
//! has a twin here with its help text, converted on the way in.

use clap::ValueEnum;

/// How ssh reaches the proxy (`--mode`, `--ssh-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ModeArg {
    /// `idmux-fdpass` + the multiplexer daemon's `v1.sock` (`ProxyUseFdpass yes`).
    Fdpass,
    /// `idmux ssh-proxy-command`: a plain stdio ProxyCommand, no daemon needed.
    Stdio,
}

impl From<ModeArg> for idmux_identity::openssh::Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Fdpass => Self::Fdpass,
            ModeArg::Stdio => Self::Stdio,
        }
    }
}

/// Which transport carries node connections (`--transport`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum TransportArg {
    /// gRPC, falling back to SSH when the proxy does not offer it.
    #[default]
    Auto,
    /// gRPC TransportService only (ALPN teleport-proxy-ssh-grpc).
    Grpc,
    /// The proxy's SSH server only (ALPN teleport-proxy-ssh).
    Ssh,
}

impl From<TransportArg> for idmux_transport::link::TransportKind {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Auto => Self::Auto,
            TransportArg::Grpc => Self::Grpc,
            TransportArg::Ssh => Self::Ssh,
        }
    }
}

/// A node transport the dev proxy serves (`--transports`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProxyTransportArg {
    /// gRPC TransportService (ALPN teleport-proxy-ssh-grpc).
    Grpc,
    /// The SSH server and its proxy: subsystem (ALPN teleport-proxy-ssh).
    Ssh,
}

impl From<ProxyTransportArg> for idmux_devcluster::ProxyTransport {
    fn from(t: ProxyTransportArg) -> Self {
        match t {
            ProxyTransportArg::Grpc => Self::Grpc,
            ProxyTransportArg::Ssh => Self::Ssh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twins_keep_the_flag_words() {
        // The words users type are the library's Display/serde words.
        for t in TransportArg::value_variants() {
            let kind: idmux_transport::link::TransportKind = (*t).into();
            assert_eq!(t.to_possible_value().unwrap().get_name(), kind.to_string());
        }
    }
}

/// The cluster's signature algorithm suite (`--signature-algorithm-suite`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SuiteArg {
    /// RSA-2048 everywhere (clusters from before Teleport 17).
    Legacy,
    /// Ed25519 SSH CAs, ECDSA P-256 TLS CAs and bot keys (Teleport 17's default).
    #[value(name = "balanced-v1")]
    BalancedV1,
    /// ECDSA P-256 CAs and keys (the FIPS suite's key types only: no FIPS validation here).
    #[value(name = "fips-v1")]
    FipsV1,
    /// ECDSA P-256 CAs and keys (the HSM suite's key types; no HSM here).
    #[value(name = "hsm-v1")]
    HsmV1,
}

impl From<SuiteArg> for idmux_devcluster::ca::Suite {
    fn from(s: SuiteArg) -> Self {
        match s {
            SuiteArg::Legacy => Self::Legacy,
            SuiteArg::BalancedV1 => Self::BalancedV1,
            SuiteArg::FipsV1 => Self::FipsV1,
            SuiteArg::HsmV1 => Self::HsmV1,
        }
    }
}
