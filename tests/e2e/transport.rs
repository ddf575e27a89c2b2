//! The choice of node transport (issue 6): `--transport grpc|ssh|auto` on the stdio
//! ProxyCommand and the multiplexer, against proxies that serve one transport or both; and the
//! gRPC transport's `agent` frames answered from the in-memory agent.
//!
//! (The rest of the end-to-end suite runs once per transport: `IDMUX_TEST_TRANSPORT`, see
//! `scripts/test.sh`.)

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use idmux_testkit::*;

const C: &str = "transport.test";

/// ssh through `idmux ssh-proxy-command --transport <t>` (overriding the ssh_config's own
/// ProxyCommand).
fn ssh_stdio(cl: &DevCluster, dest: &Path, t: &str, cmd: &str) -> std::process::Output {
    let pc = format!(
        "{} ssh-proxy-command --destination-dir={} --proxy-server={} --cluster={C} --host=%h \
         --port=%p --transport={t}",
        idmux_bin().display(),
        dest.display(),
        cl.addr
    );
    ssh(
        &dest.join("ssh_config"),
        &[
            "-o",
            &format!("ProxyCommand={pc}"),
            "-o",
            "ProxyUseFdpass=no",
            &format!("{}@node-1.{C}", me()),
            cmd,
        ],
    )
}

/// One `idmux:` line on stderr, containing `want`.
fn assert_one_line(o: &std::process::Output, want: &str) {
    assert!(!o.status.success(), "expected a failure ({want})");
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("idmux:")).collect();
    assert_eq!(lines.len(), 1, "want one idmux: line, got: {err}");
    assert!(lines[0].contains(want), "want {want:?} in: {err}");
}

/// `idmux start ssh-multiplexer --transport <t>` on `dest`.
fn mux(cl: &DevCluster, dest: &Path, t: &str) -> StandaloneMux {
    StandaloneMux::start(cl, dest, &["--transport", t])
}

fn fdpass_ssh(dest: &Path, cmd: &str) -> std::process::Output {
    ssh(
        &dest.join("ssh_config"),
        &[&format!("{}@node-1.{C}", me()), cmd],
    )
}

#[test]
fn each_transport_on_demand_and_auto_falls_back() {
    // A proxy serving both: each choice uses what it names, auto uses gRPC.
    let cl = DevCluster::start_serving(tempfile::tempdir().unwrap(), C, 1, "grpc,ssh");
    let dest = cl.bot_destination("ci", &me(), "access", "1h", "fdpass");
    for t in ["grpc", "ssh", "auto"] {
        // (The fdpass ssh_config takes keys from the multiplexer's agent.sock.)
        let m = mux(&cl, &dest, t);
        let o = ssh_stdio(&cl, &dest, t, "echo via-stdio");
        assert!(o.status.success(), "stdio --transport {t}: {}", stderr(&o));
        assert_eq!(stdout(&o), "via-stdio\n");
        let o = fdpass_ssh(&dest, "echo via-fdpass");
        assert!(o.status.success(), "fdpass --transport {t}: {}", stderr(&o));
        assert_eq!(stdout(&o), "via-fdpass\n");
        let (used, unused) = if t == "ssh" {
            ("ssh", "grpc")
        } else {
            ("grpc", "ssh")
        };
        assert!(
            m.connects(used) >= 1,
            "--transport {t} made no {used} connection"
        );
        assert_eq!(
            m.connects(unused),
            0,
            "--transport {t} made {unused} connections"
        );
    }

    // An older proxy (SSH transport only): auto falls back, grpc says what is wrong.
    let old = DevCluster::start_serving(tempfile::tempdir().unwrap(), C, 1, "ssh");
    let dest = old.bot_destination("ci", &me(), "access", "1h", "fdpass");
    let m = mux(&old, &dest, "auto");
    let o = ssh_stdio(&old, &dest, "auto", "echo fell-back");
    assert!(
        o.status.success(),
        "auto on an SSH-only proxy: {}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), "fell-back\n");
    let o = ssh_stdio(&old, &dest, "grpc", "true");
    assert_one_line(&o, "does not offer ALPN teleport-proxy-ssh-grpc");
    assert_one_line(&o, "--transport auto or ssh");
    let o = fdpass_ssh(&dest, "echo fell-back");
    assert!(
        o.status.success(),
        "fdpass auto on an SSH-only proxy: {}",
        stderr(&o)
    );
    assert!(m.connects("ssh") >= 1);
    assert_eq!(m.connects("grpc"), 0);
    drop(m);
    let _m = mux(&old, &dest, "grpc");
    let o = fdpass_ssh(&dest, "true");
    assert_one_line(&o, "does not offer ALPN teleport-proxy-ssh-grpc");

    // A proxy with the gRPC transport only: ssh says what is wrong.
    let new = DevCluster::start_serving(tempfile::tempdir().unwrap(), C, 1, "grpc");
    let dest = new.bot_destination("ci", &me(), "access", "1h", "stdio");
    let o = ssh_stdio(&new, &dest, "ssh", "true");
    assert_one_line(&o, "does not offer ALPN teleport-proxy-ssh (");
    let o = ssh_stdio(&new, &dest, "auto", "echo grpc-only");
    assert!(
        o.status.success(),
        "auto on a gRPC-only proxy: {}",
        stderr(&o)
    );
}

/// Past `--max-channels-per-connection` node connections, the multiplexer opens another
/// upstream connection (tbot's cycling client does so at 100), on this run's transport.
#[test]
fn node_connections_per_upstream_connection_are_capped() {
    let cl = DevCluster::start(C, 1);
    let dest = cl.bot_destination("ci", &me(), "access", "1h", "fdpass");
    let m = StandaloneMux::start(&cl, &dest, &["--max-channels-per-connection", "2"]);
    let sessions: Vec<_> = (0..5)
        .map(|i| {
            Command::new("ssh")
                .arg("-F")
                .arg(dest.join("ssh_config"))
                .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
                .arg(format!("{}@node-1.{C}", me()))
                .arg(format!("sleep 3; echo held-{i}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, s) in sessions.into_iter().enumerate() {
        let o = s.wait_with_output().unwrap();
        assert!(o.status.success(), "session {i}: {}", stderr(&o));
        assert_eq!(stdout(&o), format!("held-{i}\n"));
    }
    // 5 held at once, 2 per connection: at least 3 connections (the keeper's warm one may be
    // one of them).
    let made = m.connects(transport());
    assert!(
        made >= 3,
        "{made} {} connections for 5 sessions at 2 each",
        transport()
    );
}

/// A proxy that asks for the agent (as a Teleport proxy recording at the proxy does) gets
/// answers from the in-memory agent over `agent` frames, alongside the node's bytes.
#[test]
fn grpc_agent_frames_are_answered_from_the_agent() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(agent_frames());
}

#[test]
fn grpc_input_eof_ends_the_request_side_while_an_agent_session_is_open() {
    // The agent's replies share the request queue with the relay's input; input EOF must
    // still end the request side (the proxy passes the half-close on to the node) while the
    // agent's session is open, as it did when the agent held only a weak handle.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(agent_then_input_eof());
}

mod agent_proxy {
    //! A TransportService that, once "connected", asks the client's agent for its identities
    //! and sends what it learned back as the node's bytes.

    use std::future::Future;
    use std::pin::Pin;

    use bytes::Bytes;
    use idmux_wire::proto::{ClusterDetails, Frame, ProxySshRequest, ProxySshResponse, SshFrame};
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::Status;

    /// `wait_for_eof`: after reporting the agent's answer, wait (5 s at most) for the client's
    /// request side to end and report whether it did.
    pub struct AskAgent {
        pub wait_for_eof: bool,
    }

    type Responses = ReceiverStream<Result<ProxySshResponse, Status>>;

    fn frame(f: SshFrame) -> Result<ProxySshResponse, Status> {
        Ok(ProxySshResponse {
            details: None,
            frame: Some(f),
        })
    }

    impl tonic::server::StreamingService<ProxySshRequest> for AskAgent {
        type Response = ProxySshResponse;
        type ResponseStream = Responses;
        type Future =
            Pin<Box<dyn Future<Output = Result<tonic::Response<Responses>, Status>> + Send>>;

        fn call(&mut self, req: tonic::Request<tonic::Streaming<ProxySshRequest>>) -> Self::Future {
            let wait_for_eof = self.wait_for_eof;
            Box::pin(async move {
                let mut inbound = req.into_inner();
                let first = inbound.message().await?.expect("a first request");
                let target = first.dial_target.expect("a dial target").host_port;
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                let details = ProxySshResponse {
                    details: Some(ClusterDetails::default()),
                    frame: None,
                };
                tx.send(Ok(details)).await.unwrap();
                tokio::spawn(async move {
                    // SSH_AGENTC_REQUEST_IDENTITIES (11), length-prefixed, split over two
                    // frames: the agent must not care where frames end.
                    for part in [&[0u8, 0, 0][..], &[1, 11][..]] {
                        let f = Frame {
                            payload: Bytes::copy_from_slice(part),
                        };
                        tx.send(frame(SshFrame::Agent(f))).await.unwrap();
                    }
                    let mut answer = Vec::new();
                    while let Ok(Some(m)) = inbound.message().await {
                        if let Some(SshFrame::Agent(f)) = m.frame {
                            answer.extend_from_slice(&f.payload);
                        }
                        if answer.len() >= 9 {
                            let len = u32::from_be_bytes(answer[..4].try_into().unwrap());
                            if answer.len() >= 4 + len as usize {
                                break;
                            }
                        }
                    }
                    let keys = u32::from_be_bytes(answer[5..9].try_into().unwrap());
                    let report = format!("target={target} reply={} keys={keys}", answer[4]);
                    let f = Frame {
                        payload: Bytes::from(report),
                    };
                    tx.send(frame(SshFrame::Ssh(f))).await.unwrap();
                    if wait_for_eof {
                        let ended =
                            tokio::time::timeout(std::time::Duration::from_secs(5), async {
                                while let Ok(Some(_)) = inbound.message().await {}
                            })
                            .await
                            .is_ok();
                        let f = Frame {
                            payload: Bytes::from(format!(" request side ended={ended}")),
                        };
                        tx.send(frame(SshFrame::Ssh(f))).await.unwrap();
                    }
                    // Dropping tx ends the stream with status OK: the "node" hung up.
                });
                Ok(tonic::Response::new(ReceiverStream::new(rx)))
            })
        }
    }
}

/// A gRPC connection to an [`agent_proxy::AskAgent`] proxy and a node stream on it, with the
/// client's agent (keep the connection and the dir for as long as the stream).
async fn agent_proxy_node(
    wait_for_eof: bool,
) -> (
    idmux_transport::grpc::GrpcProxy,
    idmux_transport::grpc::GrpcNode,
    tempfile::TempDir,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(
            move |req: http::Request<hyper::body::Incoming>| async move {
                let codec = tonic_prost::ProstCodec::<
                    idmux_wire::proto::ProxySshResponse,
                    idmux_wire::proto::ProxySshRequest,
                >::default();
                let resp = tonic::server::Grpc::new(codec)
                    .streaming(agent_proxy::AskAgent { wait_for_eof }, req)
                    .await;
                Ok::<_, std::convert::Infallible>(resp)
            },
        );
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(server_io), svc)
            .await;
    });
    let tmp = tempfile::tempdir().unwrap();
    let (_, id) = new_ca_and_identity(&tmp.path().join("ca"), C, Duration::from_secs(600));
    let agent = idmux_transport::agent::Agent::default();
    agent.set(id.key.to_ssh().unwrap(), id.ssh_cert.clone());
    let proxy = idmux_transport::grpc::connect(client_io, "agent-proxy.test")
        .await
        .unwrap();
    let node = proxy
        .open_node("node-1", 3022, C, Some(agent))
        .await
        .unwrap();
    (proxy, node, tmp)
}

async fn agent_then_input_eof() {
    use idmux_transport::link::Node;
    use tokio::io::AsyncReadExt;

    let (_proxy, node, _tmp) = agent_proxy_node(true).await;
    let (hold, input) = tokio::io::duplex(1024);
    let (output, mut seen) = tokio::io::duplex(1 << 16);
    // Ends the input (as ssh closing its side) once the proxy has the agent's answer, while
    // the agent's session is still open.
    let watcher = tokio::spawn(async move {
        let mut hold = Some(hold);
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let n = seen.read(&mut buf).await.unwrap();
            if n == 0 {
                return String::from_utf8_lossy(&got).into_owned();
            }
            got.extend_from_slice(&buf[..n]);
            if got.windows(6).any(|w| w == b"keys=2") {
                hold.take();
            }
        }
    });
    tokio::time::timeout(
        Duration::from_secs(15),
        idmux_transport::relay::relay(
            Node::Grpc(node),
            input,
            output,
            tokio::io::sink(),
            ("input", "output"),
        ),
    )
    .await
    .expect("the relay did not end")
    .unwrap();
    assert_eq!(
        watcher.await.unwrap(),
        "target=node-1:3022 reply=12 keys=2 request side ended=true"
    );
}

async fn agent_frames() {
    use idmux_transport::link::Node;

    let (_proxy, node, _tmp) = agent_proxy_node(false).await;
    // Input that stays open (ssh never closes its side first); the proxy ends the stream.
    let (_hold, input) = tokio::io::duplex(1024);
    let mut out = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        idmux_transport::relay::relay(
            Node::Grpc(node),
            input,
            &mut out,
            tokio::io::sink(),
            ("input", "output"),
        ),
    )
    .await
    .expect("the relay did not end when the proxy ended the stream")
    .unwrap();
    // 12 = SSH_AGENT_IDENTITIES_ANSWER, with the certificate and the bare key.
    assert_eq!(
        String::from_utf8_lossy(&out),
        "target=node-1:3022 reply=12 keys=2"
    );
}

#[test]
fn the_ssh_transport_negotiates_aes_gcm_with_the_proxy() {
    // Issue 18: russh's default order puts ChaCha20-Poly1305 first, which costs several times
    // AES-GCM per byte on a CPU with AES instructions. The client now asks for AES-128-GCM
    // first and the dev proxy offers Teleport's list, so that is what the SSH transport runs.
    // The stdio ProxyCommand's russh logs the negotiated algorithms at debug level (to ssh's
    // stderr, through IDMUX_LOG).
    let cl = DevCluster::start_serving(tempfile::tempdir().unwrap(), C, 1, "ssh");
    let dest = cl.bot_destination("ci", &me(), "access", "1h", "stdio");
    let pc = format!(
        "env IDMUX_LOG=russh::client::kex=debug {} ssh-proxy-command --destination-dir={} \
         --proxy-server={} --cluster={C} --host=%h --port=%p --transport=ssh",
        idmux_bin().display(),
        dest.display(),
        cl.addr
    );
    let o = ssh(
        &dest.join("ssh_config"),
        &[
            "-o",
            &format!("ProxyCommand={pc}"),
            &format!("{}@node-1.{C}", me()),
            "echo aes",
        ],
    );
    assert!(o.status.success(), "ssh: {}", stderr(&o));
    assert_eq!(stdout(&o), "aes\n");
    let err = stderr(&o);
    let negotiated: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("negotiated algorithms"))
        .collect();
    assert_eq!(negotiated.len(), 1, "one key exchange logged: {err}");
    assert!(
        negotiated[0].contains("cipher: Name(\"aes128-gcm@openssh.com\")"),
        "AES-128-GCM negotiated: {}",
        negotiated[0]
    );
}

#[test]
fn the_stdio_proxy_command_relays_on_one_thread() {
    // Issue 18: the stdio ProxyCommand ran two tokio workers, so each chunk of an upload
    // crossed threads between the relay and the proxy connection's task: 1.6-1.9 s of CPU per
    // GiB against 1.2-1.4 on one thread. Its relay now runs on the process's own thread.
    let cl = DevCluster::start(C, 1);
    let dest = cl.bot_destination("ci", &me(), "access", "1h", "stdio");
    const BYTES: usize = 128 << 20;
    let mut up = Command::new("ssh")
        .arg("-F")
        .arg(dest.join("ssh_config"))
        .args([
            "-o",
            "BatchMode=yes",
            &format!("{}@node-1.{C}", me()),
            &format!("head -c {BYTES} > /dev/null && echo relayed && sleep 60"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // ssh runs its ProxyCommand through `sh -c exec`: the command is ssh's child.
    let mut pc = None;
    assert!(
        wait_for(Duration::from_secs(20), || {
            pc = children_of(up.id()).into_iter().find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "idmux")
            });
            pc.is_some()
        }),
        "no ProxyCommand process under ssh"
    );
    let pc = pc.unwrap() as u32;
    let before = thread_cpu(pc);
    let mut stdin = up.stdin.take().unwrap();
    let block = vec![0u8; 1 << 20];
    for _ in 0..BYTES >> 20 {
        stdin.write_all(&block).unwrap();
    }
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(up.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "relayed\n");
    // Every byte went through the ProxyCommand, which is still running.
    let after = thread_cpu(pc);
    let _ = up.kill();
    let _ = up.wait();
    let (spent, total) = thread_cpu_spent(&before, &after);
    let main = *spent.get("idmux").unwrap_or(&0);
    assert!(
        main * 5 >= total * 4 && total > 0,
        "the ProxyCommand's own thread did {main} of its {total} ticks: {after:?}"
    );
}
