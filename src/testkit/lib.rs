//! idmux-testkit: test-only helpers for the end-to-end tests and the fuzz targets.
//!
//! Owns: the dev cluster launcher ([`DevCluster`]), bots and standalone multiplexers as child
//! processes, running commands, `ssh -G` and real ssh, `/proc` readings, [`wait_for`], the
//! fuzz target bodies ([`fuzzing`]), and real third-party parts for the "real deployments"
//! tests ([`thirdparty`]: nginx, tinyproxy, silent peers).
//!
//! Must not be a dependency of anything but tests, benches and `fuzz/`.

pub mod fuzzing;
pub mod thirdparty;

pub use thirdparty::{
    children_of, host_name, Microsocks, Nginx, SilentPeer, SilentTlsPeer, TestCerts, Tinyproxy,
    TlsFront,
};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use idmux_devcluster::ca::{ClusterCas, UserCertFields};
use idmux_identity::{Identity, KeyPair, KeyType};

/// The `idmux` binary under test: `IDMUX_BIN`, or the one cargo built beside the test
/// executable (`target/<profile>/idmux`, the test being `target/<profile>/deps/e2e-*`).
pub fn idmux_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("IDMUX_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().expect("deps dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("profile dir")
    } else {
        dir
    };
    dir.join("idmux")
}

/// The user the tests run as (sshd can only log in as this user unless we are root).
pub fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A new CA for `cluster` in `dir` and an ECDSA identity it issued (logins: me; role
/// `access`), as another cluster of the same name would have.
pub fn new_ca_and_identity(dir: &Path, cluster: &str, ttl: Duration) -> (ClusterCas, Identity) {
    let cas = ClusterCas::create(dir, cluster).unwrap();
    let id = issue(
        &cas,
        KeyType::EcdsaP256,
        &[me()],
        &["access".to_string()],
        ttl,
    );
    (cas, id)
}

/// Issue an identity for a bot with the given logins and roles.
pub fn issue(
    cas: &ClusterCas,
    kind: KeyType,
    logins: &[String],
    roles: &[String],
    ttl: Duration,
) -> Identity {
    let key = KeyPair::generate(kind).unwrap();
    let traits = Default::default();
    cas.issue_identity(
        &key,
        &UserCertFields {
            username: "bot-test",
            logins,
            roles,
            traits: &traits,
            route_to_cluster: &cas.cluster,
            renewable: false,
            generation: 0,
            bot_name: "test",
            bot_instance_id: "",
            impersonator: "bot-test",
            disallow_reissue: true,
            ttl,
        },
    )
    .unwrap()
}

/// Write a destination dir for `id` (identity artifacts + CA files), as the bot would.
pub fn write_destination(dir: &Path, cas: &ClusterCas, id: &Identity) {
    id.write_destination_files(dir).unwrap();
    idmux_identity::files::write_ca_files(
        dir,
        std::slice::from_ref(&cas.host.tls_cert_pem),
        std::slice::from_ref(&cas.user.tls_cert_pem),
        std::slice::from_ref(&cas.db.tls_cert_pem),
    )
    .unwrap();
}

/// `ssh -G` for a destination, parsed into (key, value) lines.
pub fn ssh_g(config: &Path, dest: &str) -> Vec<(String, String)> {
    let o = run(Command::new("ssh")
        .arg("-G")
        .arg("-F")
        .arg(config)
        .arg(dest));
    assert!(o.status.success(), "ssh -G failed: {}", stderr(&o));
    stdout(&o)
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

pub fn get<'a>(g: &'a [(String, String)], key: &str) -> Option<&'a str> {
    g.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The node transport this run of the suite exercises (`IDMUX_TEST_TRANSPORT`): `grpc` or
/// `ssh`. Dev clusters then serve only that transport, so every client (`--transport auto`,
/// the default) must use it, or fail. Unset: clusters serve both and clients pick gRPC.
pub fn transport() -> &'static str {
    match std::env::var("IDMUX_TEST_TRANSPORT").as_deref() {
        Ok("ssh") => "ssh",
        Ok("grpc") | Ok("") | Err(_) => "grpc",
        Ok(other) => panic!("IDMUX_TEST_TRANSPORT={other:?}: want grpc or ssh"),
    }
}

/// `idmux cluster start --transports` for this run (see [`transport`]).
pub fn cluster_transports() -> &'static str {
    match std::env::var("IDMUX_TEST_TRANSPORT") {
        Ok(_) => transport(),
        Err(_) => "grpc,ssh",
    }
}

/// A dev cluster run as a child process (`idmux cluster start`), stopped on drop.
pub struct DevCluster {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub name: String,
    pub child: std::process::Child,
    /// `--transports` it serves.
    pub transports: String,
    /// How the cluster process is run (environment, log file); kept across restarts.
    pub opts: ClusterOptions,
    /// Auth's own port, with [`ClusterOptions::auth_listen`] (`auth on ADDR` on the ready
    /// line).
    pub auth_addr: Option<String>,
}

/// Extra settings for a cluster process.
#[derive(Clone, Default)]
pub struct ClusterOptions {
    /// Environment variables for the `idmux cluster start` process.
    pub env: Vec<(String, String)>,
    /// Append stdout and stderr to this file instead of inheriting stderr.
    pub log: Option<PathBuf>,
    /// More `idmux cluster start` flags (e.g. `--signature-algorithm-suite=legacy`).
    pub args: Vec<String>,
    /// `--listen` (default `127.0.0.1:0`: a free loopback port).
    pub listen: Option<String>,
    /// `--auth-listen`: Auth served directly (e.g. `127.0.0.1:0`).
    pub auth_listen: Option<String>,
    /// Pass `--data-dir` relative to the process's working dir (its parent).
    pub relative_data_dir: bool,
}

impl DevCluster {
    pub fn start(name: &str, nodes: usize) -> DevCluster {
        Self::start_in(tempfile::tempdir().unwrap(), name, nodes)
    }

    pub fn start_in(dir: tempfile::TempDir, name: &str, nodes: usize) -> DevCluster {
        Self::start_serving(dir, name, nodes, cluster_transports())
    }

    /// A cluster serving the given node transports (`grpc`, `ssh` or `grpc,ssh`).
    pub fn start_serving(
        dir: tempfile::TempDir,
        name: &str,
        nodes: usize,
        transports: &str,
    ) -> DevCluster {
        Self::start_full(dir, name, nodes, transports, ClusterOptions::default())
    }

    /// Start with an environment and/or a log file (serving this run's transports).
    pub fn start_with(
        dir: tempfile::TempDir,
        name: &str,
        nodes: usize,
        opts: ClusterOptions,
    ) -> DevCluster {
        Self::start_full(dir, name, nodes, cluster_transports(), opts)
    }

    pub fn start_full(
        dir: tempfile::TempDir,
        name: &str,
        nodes: usize,
        transports: &str,
        opts: ClusterOptions,
    ) -> DevCluster {
        // Port 0: the cluster binds a free port and reports it on its ready line.
        let listen = opts.listen.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        let (child, addr, auth_addr) =
            Self::spawn(dir.path(), &listen, name, nodes, transports, &opts);
        DevCluster {
            dir,
            addr,
            name: name.to_string(),
            child,
            transports: transports.to_string(),
            opts,
            auth_addr,
        }
    }

    /// Stop and start again on the same address and data dir.
    pub fn restart(&mut self, nodes: usize) {
        self.stop();
        (self.child, _, _) = Self::spawn(
            self.dir.path(),
            &self.addr,
            &self.name,
            nodes,
            &self.transports,
            &self.opts,
        );
    }

    fn spawn(
        dir: &Path,
        addr: &str,
        name: &str,
        nodes: usize,
        transports: &str,
        opts: &ClusterOptions,
    ) -> (std::process::Child, String, Option<String>) {
        use std::io::{BufRead, BufReader, Write};
        let log = opts.log.as_ref().map(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap()
        });
        let stderr = match &log {
            Some(f) => std::process::Stdio::from(f.try_clone().unwrap()),
            None => std::process::Stdio::inherit(),
        };
        let mut child = Command::new(idmux_bin())
            .args([
                "cluster",
                "start",
                "--listen",
                addr,
                "--name",
                name,
                "--nodes",
                &nodes.to_string(),
                "--transports",
                transports,
                "--data-dir",
            ])
            .arg(if opts.relative_data_dir {
                dir.file_name().map(Path::new).unwrap_or(dir)
            } else {
                dir
            })
            .current_dir(if opts.relative_data_dir {
                dir.parent().unwrap_or(dir).to_path_buf()
            } else {
                std::env::current_dir().unwrap()
            })
            .args(
                opts.auth_listen
                    .iter()
                    .flat_map(|a| ["--auth-listen".to_string(), a.clone()]),
            )
            .args(&opts.args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let first = lines.next().expect("cluster printed nothing").unwrap();
        // `idmux dev cluster "NAME" ready on https://ADDR (CA: ...)`
        let addr = first
            .split_once("ready on https://")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("cluster did not start: {first}"))
            .to_string();
        let auth_addr = first
            .split_once(", auth on ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(|a| a.trim_end_matches(',').to_string());
        // Keep draining stdout (into the log, if any) so the cluster never blocks on a pipe.
        std::thread::spawn(move || {
            let mut log = log;
            for l in lines.map_while(Result::ok) {
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{l}");
                }
            }
        });
        (child, addr, auth_addr)
    }

    /// A fresh join token for a (new or updated) bot.
    pub fn token(&self, bot: &str, logins: &str) -> String {
        let o = self.admin(&["bots", "add", bot, "--logins", logins, "--format", "json"]);
        assert!(o.status.success(), "bots add: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["token_id"].as_str().unwrap().to_string()
    }

    /// The CA pins `bots add --format json` prints (`ca_pins`).
    pub fn ca_pins(&self) -> Vec<String> {
        let o = self.admin(&[
            "bots",
            "add",
            "pin-reader",
            "--logins",
            "nobody",
            "--format",
            "json",
        ]);
        assert!(o.status.success(), "bots add: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["ca_pins"]
            .as_array()
            .expect("bots add prints ca_pins")
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect()
    }

    /// `idmux start` flags for this cluster.
    pub fn start_args(&self, data: &Path, dest: &Path, token: &str) -> Vec<String> {
        vec![
            "start".into(),
            format!("--data-dir={}", data.display()),
            format!("--destination-dir={}", dest.display()),
            format!("--token={token}"),
            "--join-method=token".into(),
            format!("--proxy-server={}", self.addr),
            format!("--ca-path={}", self.dir.path().join("ca.pem").display()),
        ]
    }

    /// [`DevCluster::start_args`] with another `--proxy-server` and/or `--ca-path` (a load
    /// balancer, a name reached through an HTTP proxy).
    pub fn start_args_via(
        &self,
        data: &Path,
        dest: &Path,
        token: &str,
        proxy: Option<&str>,
        ca_path: Option<&Path>,
    ) -> Vec<String> {
        let mut args = self.start_args(data, dest, token);
        for a in args.iter_mut() {
            if let (Some(p), true) = (proxy, a.starts_with("--proxy-server=")) {
                *a = format!("--proxy-server={p}");
            }
            if let (Some(c), true) = (ca_path, a.starts_with("--ca-path=")) {
                *a = format!("--ca-path={}", c.display());
            }
        }
        args
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Run `idmux cluster <args> --data-dir DIR`.
    pub fn admin(&self, args: &[&str]) -> Output {
        let o = run(Command::new(idmux_bin())
            .arg("cluster")
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path()));
        o
    }

    /// Add a bot and write a destination dir for it with `auth sign`.
    pub fn bot_destination(
        &self,
        bot: &str,
        logins: &str,
        roles: &str,
        ttl: &str,
        mode: &str,
    ) -> PathBuf {
        let o = self.admin(&["bots", "add", bot, "--logins", logins, "--roles", roles]);
        assert!(o.status.success(), "bots add: {}", stderr(&o));
        let dest = self.dir.path().join(format!("dest-{bot}"));
        let o = self.admin(&[
            "auth",
            "sign",
            "--bot",
            bot,
            "--ttl",
            ttl,
            "--mode",
            mode,
            "--destination-dir",
            dest.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "auth sign: {}", stderr(&o));
        dest
    }

    pub fn stop(&mut self) {
        idmux_devcluster::node::terminate(&mut self.child, Duration::from_secs(2));
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `ssh -F CONFIG <args>` in batch mode with strict host key checking.
pub fn ssh(config: &Path, args: &[&str]) -> Output {
    ssh_with_env(config, &[], args)
}

/// `ssh -F CONFIG ME@node-1.CLUSTER echo hi` works: exits 0 and prints `hi`; else the test
/// fails with ssh's stderr.
pub fn assert_ssh_hi(config: &Path, cluster: &str) {
    let o = ssh(
        config,
        &[&format!("{}@node-1.{cluster}", me()), "echo", "hi"],
    );
    assert!(
        o.status.success() && stdout(&o).trim() == "hi",
        "ssh -F {}: {}",
        config.display(),
        stderr(&o)
    );
}

/// [`ssh`] with more environment (e.g. `HTTPS_PROXY` for its ProxyCommand).
pub fn ssh_with_env(config: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    run(Command::new("ssh")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("-F")
        .arg(config)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=20",
        ])
        .args(args))
}

/// `idmux start ssh-multiplexer` on `dest` with a diagnostics address, stopped on drop.
pub struct StandaloneMux {
    pub child: Reaped,
    /// `host:port` of /metrics, /readyz, /livez.
    pub diag: String,
}

impl StandaloneMux {
    /// Start it with `extra` flags (e.g. `--transport ssh`) and wait for `v1.sock`.
    pub fn start(cl: &DevCluster, dest: &Path, extra: &[&str]) -> StandaloneMux {
        let _ = std::fs::remove_file(dest.join("v1.sock"));
        let diag = format!("127.0.0.1:{}", idmux_devcluster::node::free_port().unwrap());
        let child = Command::new(idmux_bin())
            .args(["start", "ssh-multiplexer", "--proxy-server", &cl.addr])
            .arg("--ca-path")
            .arg(cl.dir.path().join("ca.pem"))
            .args(["--diag-addr", &diag])
            .args(extra)
            .arg("--destination-dir")
            .arg(dest)
            .stderr(std::process::Stdio::null())
            .spawn_reaped();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !dest.join("v1.sock").exists() {
            assert!(std::time::Instant::now() < deadline, "no v1.sock");
            std::thread::sleep(Duration::from_millis(50));
        }
        StandaloneMux { child, diag }
    }

    /// The /metrics text.
    pub fn metrics(&self) -> String {
        stdout(&run(
            Command::new("curl").args(["-s", &format!("http://{}/metrics", self.diag)])
        ))
    }

    /// The value of the unlabelled metric `name` (a gauge such as `idmux_upstream_connections`),
    /// if the endpoint answered with it.
    pub fn gauge(&self, name: &str) -> Option<u64> {
        metric_value(&self.metrics(), name)
    }

    /// `idmux_upstream_connects_total{transport=...}`.
    pub fn connects(&self, transport: &str) -> u64 {
        let text = self.metrics();
        let name = format!("idmux_upstream_connects_total{{transport=\"{transport}\"}}");
        metric_value(&text, &name).unwrap_or_else(|| panic!("no {name:?} in metrics:\n{text}"))
    }
}

/// A session through a multiplexer's `v1.sock` at `sock`, held open once the node's banner
/// has begun (`SSH-2.0-` read, within 20 s). `request` is the v1 request, NUL included.
pub fn v1_session_at_banner(sock: &Path, request: &str) -> std::os::unix::net::UnixStream {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", sock.display()));
    s.write_all(request.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut banner = [0u8; 8];
    s.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
    s
}

/// The value of metric `name` (with its labels, if any, as written) in a /metrics text.
pub fn metric_value(text: &str, name: &str) -> Option<u64> {
    let key = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

/// Extra flags for every `idmux start` that the reliability tests (faults, soak, isolation)
/// run: `IDMUX_TEST_START_ARGS`, split on whitespace (e.g. `--transport=grpc`), so the same
/// tests can be run once per transport.
pub fn extra_start_args() -> Vec<String> {
    std::env::var("IDMUX_TEST_START_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A process a test started (a bot, a multiplexer, an ssh), stopped on drop: SIGTERM, 2 s,
/// then SIGKILL. A test that panics halfway would otherwise leave it running after the test
/// binary exits. Derefs to the [`Child`](std::process::Child), so `kill`, `wait` and `id`
/// work as before.
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        idmux_devcluster::node::terminate(&mut self.0, Duration::from_secs(2));
    }
}

/// `Command::spawn`, the child stopped on drop ([`Reaped`]).
pub trait SpawnReaped {
    fn spawn_reaped(&mut self) -> Reaped;
}

impl SpawnReaped for Command {
    fn spawn_reaped(&mut self) -> Reaped {
        Reaped(
            self.spawn()
                .unwrap_or_else(|e| panic!("spawn {self:?}: {e}")),
        )
    }
}

/// How to run a bot ([`BotProc::start`]).
#[derive(Default)]
pub struct BotOptions {
    /// More `idmux start` flags (after the cluster's and [`extra_start_args`]).
    pub args: Vec<String>,
    /// Environment of the bot process.
    pub env: Vec<(String, String)>,
    /// Data and destination dirs (default: fresh folders in the bot's work dir).
    pub data: Option<PathBuf>,
    pub dest: Option<PathBuf>,
    /// Join token (default: a fresh one for bot `ci` with the current user as login).
    pub token: Option<String>,
    /// Return at once instead of waiting for ssh_config, v1.sock and agent.sock.
    pub no_wait: bool,
    /// `--proxy-server` and `--ca-path` instead of the cluster's own (a load balancer, a
    /// name reached through an HTTP proxy).
    pub proxy: Option<String>,
    pub ca_path: Option<PathBuf>,
}

/// A running `idmux start` (bot + multiplexer) whose stderr goes to `log`; stopped on drop.
pub struct BotProc {
    pub child: Reaped,
    pub data: PathBuf,
    pub dest: PathBuf,
    pub log: PathBuf,
    pub work: tempfile::TempDir,
}

impl BotProc {
    /// Start a bot against `cl` (by default as bot `ci` with a fresh token); waits until the
    /// destination dir holds ssh_config, v1.sock and agent.sock.
    pub fn start(cl: &DevCluster, o: BotOptions) -> BotProc {
        let work = tempfile::tempdir().unwrap();
        let data = o.data.clone().unwrap_or_else(|| work.path().join("data"));
        let dest = o.dest.clone().unwrap_or_else(|| work.path().join("dest"));
        let log = work.path().join("bot.log");
        let token = o.token.clone().unwrap_or_else(|| cl.token("ci", &me()));
        let args = cl.start_args_via(
            &data,
            &dest,
            &token,
            o.proxy.as_deref(),
            o.ca_path.as_deref(),
        );
        let child = Command::new(idmux_bin())
            .args(args)
            .args(extra_start_args())
            .args(&o.args)
            .envs(o.env.iter().map(|(k, v)| (k, v)))
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn_reaped();
        let mut b = BotProc {
            child,
            data,
            dest,
            log,
            work,
        };
        if !o.no_wait {
            b.wait_ready();
        }
        b
    }

    pub fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !(self.dest.join("ssh_config").exists()
            && self.dest.join("v1.sock").exists()
            && self.dest.join("agent.sock").exists())
        {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("the bot exited ({st}): {}", self.log_text());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the bot did not come up: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Is the process still running?
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The destination's ssh_config.
    pub fn ssh_config(&self) -> PathBuf {
        self.dest.join("ssh_config")
    }
}

/// The one `idmux:` line of a command's stderr (an error is one line naming what is at
/// fault); fails the test when there is not exactly one.
pub fn error_line(o: &Output) -> String {
    let e = stderr(o);
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("idmux:")).collect();
    assert_eq!(lines.len(), 1, "want one idmux: line, got {e:?}");
    lines[0].to_string()
}

/// Send SIGTERM to a process (a bot, a multiplexer) the test started.
pub fn sigterm(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Resident set size of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

/// CPU time (utime + stime, in clock ticks) of each thread of `pid`, by thread name.
pub fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(t.path().join("comm")),
            std::fs::read_to_string(t.path().join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        *out.entry(comm.trim().to_string()).or_insert(0) += ticks;
    }
    out
}

/// The CPU ticks each thread name of a process spent between two [`thread_cpu`] snapshots,
/// and their sum.
pub fn thread_cpu_spent(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> (std::collections::BTreeMap<String, u64>, u64) {
    let spent: std::collections::BTreeMap<String, u64> = after
        .iter()
        .map(|(n, t)| (n.clone(), t.saturating_sub(*before.get(n).unwrap_or(&0))))
        .collect();
    let total = spent.values().sum();
    (spent, total)
}

/// Wait until `f` holds, checking every 100 ms; false if `limit` passed first.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `fd -> target` of every open descriptor of a process (for failure messages).
pub fn fd_list(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let t = std::fs::read_link(e.path()).unwrap_or_default();
                    format!("{} -> {}", e.file_name().to_string_lossy(), t.display())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Wait until a process's open fds stop changing (the same count over five readings 100 ms
/// apart, at most `limit`): the baseline to compare against after a load. Returns the count.
pub fn settled_fds(pid: u32, limit: Duration) -> usize {
    let mut last = fd_count(pid);
    let mut same = 0;
    wait_for(limit, || {
        let now = fd_count(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
        same >= 5
    });
    last
}

/// Is `DATA/lock` (or any flock'd file) held by another process right now?
pub fn lock_held(path: &Path) -> bool {
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) else {
        return false;
    };
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
}

/// Wait until the certificate of the identity `load` reads (e.g. `Identity::load_destination`
/// or `Identity::read_data_dir`) has been expired for a whole second (certificate times have
/// one-second resolution, so a check within the second of expiry may still accept it), at
/// most `limit`; false if it had not by then.
pub fn wait_expired(limit: Duration, mut load: impl FnMut() -> anyhow::Result<Identity>) -> bool {
    wait_for(limit, || {
        load()
            .and_then(|id| id.expires())
            .is_ok_and(|t| t + Duration::from_secs(1) < std::time::SystemTime::now())
    })
}

/// Tests that assert a deadline, and tests that load the machine (tens of concurrent ssh
/// sessions, a soak), hold this for their whole run, so that no two of them run side by
/// side: in the one end-to-end binary libtest would otherwise pair, say, 50 sessions through
/// a restarting proxy with a check that a session answers within 10 s (seen: 12.3 s).
/// Every other test still runs beside them, two at a time.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `short` in the default suite, `long` with `IDMUX_LONG` (`scripts/test.sh --long`,
/// `scripts/torture.sh`).
pub fn scale(short: usize, long: usize) -> usize {
    if std::env::var_os("IDMUX_LONG").is_some() {
        long
    } else {
        short
    }
}

/// One row of `scripts/torture.sh`'s table, printed by a hostile-world test:
/// `torture| attack | result | figures`.
pub fn torture_row(attack: &str, result: &str, figures: &str) {
    eprintln!("torture| {attack} | {result} | {figures}");
}

/// What must keep working while a test attacks a bot: an ssh session streaming through it the
/// whole time, and its renewals (counted from its log's `renewed:` lines).
pub struct Witness {
    child: Reaped,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    renewals0: usize,
    log: PathBuf,
    started: std::time::Instant,
}

fn renewals_in(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("renewed: bot identity")
        .count()
}

impl Witness {
    /// Start streaming through `bot` to `target` (64 KiB every 50 ms).
    pub fn start(bot: &BotProc, target: &str) -> Witness {
        use std::io::Read;
        let mut child = Command::new("ssh")
            .arg("-F")
            .arg(bot.ssh_config())
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=20", target])
            // Ends when the stream does: a loop that ignored the failed write outlived the test on
            // the node, orphaned when its session went.
            .arg("while head -c 65536 /dev/zero; do sleep 0.05; done")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn_reaped();
        let bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut out = child.stdout.take().unwrap();
        let counter = bytes.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let w = Witness {
            child,
            bytes,
            renewals0: renewals_in(&bot.log),
            log: bot.log.clone(),
            started: std::time::Instant::now(),
        };
        assert!(
            wait_for(Duration::from_secs(20), || w.streamed() > 0),
            "the witness session did not start streaming"
        );
        w
    }

    /// Bytes streamed so far.
    pub fn streamed(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Renewals the bot logged since the witness started.
    pub fn renewals(&self) -> usize {
        renewals_in(&self.log).saturating_sub(self.renewals0)
    }

    /// Assert the session is still streaming (bytes within `limit`) and the bot renewed at
    /// least `renewals` times; returns a figure for the torture table.
    pub fn check(&mut self, renewals: usize, limit: Duration) -> String {
        let before = self.streamed();
        assert!(
            wait_for(limit, || self.streamed() > before),
            "the streaming ssh session stalled at {before} bytes"
        );
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the streaming ssh session ended"
        );
        assert!(
            wait_for(Duration::from_secs(30), || self.renewals() >= renewals),
            "the bot renewed {} times during the attack, expected {renewals}",
            self.renewals()
        );
        format!(
            "ssh streamed {:.1} MiB over {:.0} s, {} renewals",
            self.streamed() as f64 / 1048576.0,
            self.started.elapsed().as_secs_f64(),
            self.renewals()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test that panics with a process it started still running leaves nothing behind.
    #[test]
    fn a_reaped_child_is_gone_after_a_panic() {
        let pid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let p = pid.clone();
        let r = std::thread::spawn(move || {
            let c = Command::new("sleep").arg("600").spawn_reaped();
            p.store(c.id(), std::sync::atomic::Ordering::SeqCst);
            panic!("a failed assertion");
        })
        .join();
        assert!(r.is_err());
        let pid = pid.load(std::sync::atomic::Ordering::SeqCst);
        assert_ne!(pid, 0);
        // Reaped, not only signalled: no zombie is left under /proc either.
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "sleep (pid {pid}) is still there"
        );
    }
}
