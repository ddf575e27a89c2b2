//! Bot instance heartbeats (`/teleport.machineid.v1.BotInstanceService/SubmitHeartbeat`), as
//! tbot sends them (`lib/tbot/internal/heartbeat/service.go`): one at startup
//! (`is_startup`), then every 30 minutes, with the bot's own identity; one-shot runs send one
//! with `one_shot`. A server without the service (NotImplemented) is not an error; other
//! failures are logged and never stop the bot.

use std::time::{Duration, SystemTime};

use anyhow::Result;

use idmux_identity::Identity;
use idmux_transport::auth_client::{AuthClient, AuthVia};
use idmux_transport::refusal::{Refused, RefusedWith};
use idmux_wire::proto::Timestamp;
use idmux_wire::services::{
    BotInstanceStatusHeartbeat, Empty, ProtoDuration, SubmitHeartbeatRequest, SUBMIT_HEARTBEAT,
};

/// tbot's heartbeat interval.
pub(crate) const INTERVAL: Duration = Duration::from_secs(30 * 60);

/// The heartbeat tbot would send at `now` for a process started at `started`.
pub(crate) fn heartbeat(
    started: SystemTime,
    now: SystemTime,
    startup: bool,
    one_shot: bool,
) -> SubmitHeartbeatRequest {
    let uptime = now.duration_since(started).unwrap_or_default();
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    SubmitHeartbeatRequest {
        heartbeat: Some(BotInstanceStatusHeartbeat {
            recorded_at: Some(Timestamp::from_system_time(now)),
            is_startup: startup,
            version: env!("CARGO_PKG_VERSION").to_string(),
            hostname,
            uptime: Some(ProtoDuration {
                seconds: uptime.as_secs() as i64,
                nanos: uptime.subsec_nanos() as i32,
            }),
            join_method: "token".into(),
            one_shot,
            architecture: go_arch().into(),
            os: std::env::consts::OS.into(),
        }),
    }
}

/// Go's GOARCH for this machine.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// Send one heartbeat; `Ok(false)` when the server does not have the service.
pub(crate) async fn submit(
    via: &AuthVia,
    bot: &Identity,
    req: SubmitHeartbeatRequest,
) -> Result<bool> {
    let mut auth = AuthClient::connect_via(via, bot).await?;
    let sent: Result<Empty> = auth.unary(SUBMIT_HEARTBEAT, "the heartbeat", req).await;
    match sent {
        Ok(_) => Ok(true),
        Err(e) if not_served(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Did the server answer that it has no such service (an older Teleport)? tbot ignores that.
fn not_served(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Refused>()
        .is_some_and(|r| r.with == RefusedWith::Grpc(tonic::Code::Unimplemented))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn an_older_cluster_without_the_service_is_not_an_error() {
        let refused = |code| -> anyhow::Error {
            Refused {
                with: RefusedWith::Grpc(code),
                line: "x".into(),
            }
            .into()
        };
        assert!(not_served(&refused(tonic::Code::Unimplemented)));
        assert!(!not_served(&refused(tonic::Code::PermissionDenied)));
        assert!(!not_served(&anyhow::anyhow!("connection refused")));
    }

    #[test]
    fn startup_heartbeat_fields() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let hb = heartbeat(t0, t0 + Duration::from_secs(90), true, false);
        let h = hb.heartbeat.as_ref().unwrap();
        assert!(h.is_startup && !h.one_shot);
        assert_eq!(h.uptime.unwrap().seconds, 90);
        assert_eq!(h.join_method, "token");
        assert_eq!(h.os, "linux");
        assert!(["amd64", "arm64"].contains(&h.architecture.as_str()));
        // heartbeat = 1, holding is_startup = 2 (varint 1).
        let b = hb.encode_to_vec();
        assert_eq!(b[0], 0x0a);
        assert!(b.windows(2).any(|w| w == [0x10, 1]), "{b:x?}");
    }
}
