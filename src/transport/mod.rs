//! TLS + ALPN dial to the proxy, the SSH subsystem transport, and the stdio ProxyCommand.
