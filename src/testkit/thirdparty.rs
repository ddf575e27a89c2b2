//! Real third-party parts for the "real deployments" tests, each started by the test itself on
//! loopback and stopped when dropped: Debian's `nginx` as an L7 load balancer in front of the
//! dev cluster ([`Nginx`]), `tinyproxy` as an HTTP CONNECT proxy ([`Tinyproxy`]), `stunnel4`
//! as the TLS front that makes an `https://` proxy of it ([`TlsFront`]), `microsocks` as a
//! SOCKS5 proxy ([`Microsocks`]), and peers that accept and then say nothing ([`SilentPeer`],
//! [`SilentTlsPeer`]) for deadline tests.
//!
//! `scripts/install-deps.sh` installs nginx (`/usr/sbin/nginx`), tinyproxy
//! (`/usr/bin/tinyproxy`), stunnel4 (`/usr/bin/stunnel4`) and microsocks
//! (`/usr/bin/microsocks`); nothing here installs anything.
//! Certificates come from the `openssl` CLI ([`TestCerts`]).

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where Debian's packages put the binaries.
pub const NGINX_BIN: &str = "/usr/sbin/nginx";
pub const TINYPROXY_BIN: &str = "/usr/bin/tinyproxy";
pub const STUNNEL_BIN: &str = "/usr/bin/stunnel4";
pub const MICROSOCKS_BIN: &str = "/usr/bin/microsocks";

/// How long a third-party process may take to listen.
const READY_LIMIT: Duration = Duration::from_secs(10);
/// Attempts at a free port (another process may take the one we picked before we bind it).
const PORT_TRIES: usize = 3;

/// The machine's host name, if it resolves to an address this machine can bind (so a client
/// that dials it reaches a loopback listener here); else None. Tests that need a non-loopback
/// name for a target (an HTTP proxy skips loopback targets by `NO_PROXY` rules, for one) skip
/// with a printed reason when this is None.
pub fn host_name() -> Option<String> {
    let name = nix::unistd::gethostname().ok()?.into_string().ok()?;
    if name.is_empty() {
        return None;
    }
    let addrs = (name.as_str(), 0).to_socket_addrs().ok()?;
    for a in addrs {
        if TcpListener::bind(SocketAddr::new(a.ip(), 0)).is_ok() {
            return Some(name);
        }
    }
    None
}

/// A fresh CA (`ca.pem`) and a server certificate it signed (`cert.pem`, key `key.pem`), made
/// with the `openssl` CLI in `dir`: ECDSA P-256, valid from now for two days.
pub struct TestCerts {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl TestCerts {
    /// SANs: every name in `names` (IP addresses as IP SANs, the rest as DNS names).
    pub fn create(dir: &Path, names: &[&str]) -> TestCerts {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = dir.join("ca.key");
        let ca_pem = dir.join("ca.pem");
        let key_pem = dir.join("key.pem");
        let csr = dir.join("cert.csr");
        let cert_pem = dir.join("cert.pem");
        let ext = dir.join("cert.ext");
        openssl(
            Command::new("openssl")
                .args(["req", "-x509", "-new", "-nodes", "-days", "2"])
                .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
                .args(["-subj", "/O=idmux tests/CN=idmux test third-party CA"])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca_pem),
        );
        openssl(
            Command::new("openssl")
                .args(["req", "-new", "-nodes"])
                .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
                .args(["-subj", &format!("/O=idmux tests/CN={}", names[0])])
                .arg("-keyout")
                .arg(&key_pem)
                .arg("-out")
                .arg(&csr),
        );
        let sans: Vec<String> = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(_) => format!("IP:{n}"),
                Err(_) => format!("DNS:{n}"),
            })
            .collect();
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName={}\n",
                sans.join(",")
            ),
        )
        .unwrap();
        openssl(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-sha256", "-set_serial"])
                .arg(format!("0x{:016x}", rand_u64()))
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&ca_pem)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&cert_pem),
        );
        TestCerts {
            ca_pem,
            cert_pem,
            key_pem,
        }
    }

    /// SANs 127.0.0.1, localhost and the machine's host name (when it has one).
    pub fn for_loopback(dir: &Path) -> TestCerts {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty() && h != "localhost");
        let mut names = vec!["localhost", "127.0.0.1"];
        if let Some(h) = host.as_deref() {
            names.push(h);
        }
        Self::create(dir, &names)
    }
}

fn openssl(cmd: &mut Command) {
    let o = crate::run(cmd);
    assert!(o.status.success(), "{cmd:?} failed: {}", crate::stderr(&o));
}

/// A serial number: random enough for test certificates (no two alike in one run).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() >> 1
}

/// Wait until `addr` accepts a TCP connection, at most [`READY_LIMIT`]. Err(why) when the
/// child exited first or the deadline passed.
fn wait_listening(child: &mut Child, addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + READY_LIMIT;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("exited ({st}) before listening on {addr}"));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not listening on {addr} after {READY_LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh tempdir (`idmux-NAME-…`) for a third-party server whose binary `bin` must be
/// installed (by `scripts/install-deps.sh`; its absence fails the test in those words).
fn workdir(bin: &str, name: &str) -> tempfile::TempDir {
    assert!(
        Path::new(bin).exists(),
        "{bin} is missing: run scripts/install-deps.sh"
    );
    tempfile::Builder::new()
        .prefix(&format!("idmux-{name}-"))
        .tempdir()
        .unwrap()
}

/// Start a third-party server on a free loopback port: `spawn(addr)` starts it listening on
/// `addr`; when it does not, another port is tried if the one picked was taken meanwhile
/// ("in use" in `logs()`), else this panics with `logs()`.
fn spawn_on_free_port(
    what: &str,
    mut spawn: impl FnMut(SocketAddr) -> Child,
    logs: impl Fn() -> String,
) -> (Child, SocketAddr) {
    let mut why = String::new();
    for _ in 0..PORT_TRIES {
        let addr = free_addr();
        let mut child = spawn(addr);
        match wait_listening(&mut child, addr) {
            Ok(()) => return (child, addr),
            Err(e) => {
                stop_child(&mut child, Duration::from_secs(2));
                why = format!("{e}\n{}", logs());
                if !why.contains("in use") {
                    break;
                }
            }
        }
    }
    panic!("{what} did not start: {why}");
}

fn free_addr() -> SocketAddr {
    let port = idmux_devcluster::node::free_port().expect("a free loopback port");
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Pids of the direct children of `pid` (nginx's workers, ssh's ProxyCommand), from /proc.
pub fn children_of(pid: u32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // `pid (comm) state ppid ...`: comm may hold spaces, so split after ')'.
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Stop `child` with SIGTERM, then SIGKILL after `grace`; children it leaves behind (nginx's
/// workers, if the master was killed) are killed by pid.
fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let kids = children_of(child.id());
    idmux_devcluster::node::terminate(child, grace);
    for k in kids {
        // A worker left behind when its master had to be killed. Signal it by pid, and only
        // if that pid is still an nginx (not one reused since by something else).
        let exe = std::fs::read_link(format!("/proc/{k}/exe")).unwrap_or_default();
        if exe == Path::new(NGINX_BIN) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(k),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A third-party server's process: stopped ([`stop_child`]: SIGTERM, then SIGKILL after 2 s)
/// by [`Server::stop`] or when dropped. Each server declares it before its tempdir: fields drop
/// in order, so the process stops before its directory is removed.
struct Server(Option<Child>);

impl Server {
    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            stop_child(&mut c, Duration::from_secs(2));
        }
    }

    fn alive(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// nginx (Debian's package) as an L7 load balancer in front of a dev cluster's TLS web port:
/// it terminates TLS with its own certificate (signed by [`Nginx::ca_pem`], not the cluster's
/// CA) and proxies every path, the web API and `/webapi/connectionupgrade` alike, to
/// `https://UPSTREAM` over HTTP/1.1, passing WebSocket upgrades (`Upgrade`/`Connection`),
/// with 1 h read and send timeouts and no buffering. Its ALPN offers only `h2` and `http/1.1`,
/// as a real L7 load balancer's would: Teleport's own ALPN protocols (`teleport-proxy-ssh`,
/// ...) are never selected (nginx 1.22 completes the handshake with no ALPN). A client that
/// offers `h2` gets it, and nginx does not carry WebSocket over HTTP/2: an upgrade through this
/// load balancer must offer `http/1.1` alone. Runs in the foreground with everything (config,
/// certificates, pid, logs, temp files) in its own tempdir; stopped on drop.
pub struct Nginx {
    /// `127.0.0.1:PORT`, nginx's TLS listener.
    pub addr: String,
    /// The CA that signed nginx's server certificate (SANs 127.0.0.1, localhost and the
    /// machine's host name): what a client behind this load balancer trusts.
    pub ca_pem: PathBuf,
    /// nginx's prefix: nginx.conf, the certificates, error.log and access.log.
    pub log_dir: PathBuf,
    /// The upstream it proxies to (`host:port`).
    pub upstream: String,
    child: Server,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Start nginx proxying to `upstream` (`host:port` of the dev cluster's TLS web port),
    /// verifying the upstream's certificate against `upstream_ca`; waits until it listens.
    pub fn start(upstream: &str, upstream_ca: &Path) -> Nginx {
        let dir = workdir(NGINX_BIN, "nginx");
        let prefix = dir.path().to_path_buf();
        let certs = TestCerts::for_loopback(&prefix.join("tls"));
        let upstream_ca = std::fs::canonicalize(upstream_ca)
            .unwrap_or_else(|e| panic!("upstream CA {}: {e}", upstream_ca.display()));
        let (child, addr) = spawn_on_free_port(
            "nginx",
            |addr| {
                let conf = nginx_conf(&prefix, addr, upstream, &upstream_ca, &certs);
                std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
                let _ = std::fs::remove_file(prefix.join("error.log"));
                Command::new(NGINX_BIN)
                    .arg("-p")
                    .arg(&prefix)
                    .arg("-c")
                    .arg(prefix.join("nginx.conf"))
                    .arg("-e")
                    .arg(prefix.join("error.log"))
                    .args(["-g", "daemon off;"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(prefix.join("stderr.log")).unwrap())
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot run {NGINX_BIN}: {e}"))
            },
            || read_logs(&prefix),
        );
        Nginx {
            addr: addr.to_string(),
            ca_pem: certs.ca_pem,
            log_dir: prefix,
            upstream: upstream.to_string(),
            child: Server(Some(child)),
            _dir: dir,
        }
    }

    /// nginx's error log (and anything it wrote to stderr).
    pub fn error_log(&self) -> String {
        read_logs(&self.log_dir)
    }

    /// nginx's access log: one line per request (`$request $status $upstream_status`).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.log_dir.join("access.log")).unwrap_or_default()
    }

    /// Is nginx's master process still running?
    pub fn alive(&mut self) -> bool {
        self.child.alive()
    }

    /// Stop nginx (SIGTERM, then SIGKILL after 2 s). Also done on drop.
    pub fn stop(&mut self) {
        self.child.stop();
    }
}

fn read_logs(prefix: &Path) -> String {
    let mut s = String::new();
    for f in ["error.log", "stderr.log"] {
        if let Ok(t) = std::fs::read_to_string(prefix.join(f)) {
            if !t.trim().is_empty() {
                s.push_str(&format!("--- nginx {f}:\n{t}"));
            }
        }
    }
    s
}

/// nginx.conf for [`Nginx`]: everything under `prefix`, nothing in /var or /etc.
fn nginx_conf(
    prefix: &Path,
    addr: SocketAddr,
    upstream: &str,
    upstream_ca: &Path,
    certs: &TestCerts,
) -> String {
    let p = prefix.display();
    // nginx checks the upstream's certificate with X509_check_host, which matches DNS names
    // only: for an IP upstream (the dev cluster's 127.0.0.1) verify the name `localhost`,
    // which the cluster's web certificate carries.
    let upstream_host = upstream
        .rsplit_once(':')
        .map_or(upstream, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ssl_name = if upstream_host.parse::<std::net::IpAddr>().is_ok() {
        "localhost"
    } else {
        upstream_host
    };
    // As root the master's workers would run as `nobody`, who cannot enter the tempdir (its
    // temp paths and logs); run them as root. Unprivileged, nginx ignores `user` (with a
    // warning), so leave it out.
    let user = if nix::unistd::geteuid().is_root() {
        "user root;\n"
    } else {
        ""
    };
    format!(
        r#"# idmux tests: nginx as an L7 load balancer in front of a dev cluster.
{user}worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{
    worker_connections 1024;
}}
http {{
    access_log {p}/access.log combined;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    server {{
        # ALPN: nginx offers http/1.1 (and h2 where enabled) and nothing else.
        listen {addr} ssl http2;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;

        location / {{
            proxy_pass https://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 4;
            proxy_ssl_trusted_certificate {upstream_ca};
            proxy_ssl_name {ssl_name};
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_buffering off;
            proxy_request_buffering off;
            client_max_body_size 0;
        }}
    }}
}}
"#,
        cert = certs.cert_pem.display(),
        key = certs.key_pem.display(),
        upstream_ca = upstream_ca.display(),
    )
}

/// tinyproxy (Debian's `tinyproxy-bin`) as an HTTP proxy on loopback: CONNECT to any port,
/// clients from 127.0.0.1 only, logging each request at `LogLevel Connect`. Killed on drop.
pub struct Tinyproxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// tinyproxy's log file.
    pub log_path: PathBuf,
    child: Server,
    dir: tempfile::TempDir,
}

impl Tinyproxy {
    pub fn start() -> Tinyproxy {
        let dir = workdir(TINYPROXY_BIN, "tinyproxy");
        let log_path = dir.path().join("tinyproxy.log");
        let conf_path = dir.path().join("tinyproxy.conf");
        let stderr_path = dir.path().join("stderr.log");
        let (child, addr) = spawn_on_free_port(
            "tinyproxy",
            |addr| {
                // No ConnectPort line: CONNECT to every port (the Debian default file allows
                // only 443 and 563). No User/Group: as root tinyproxy 1.11 warns and stays
                // root, which keeps its log in the (root-only) tempdir writable.
                let conf = format!(
                    "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 100\n\
                     Allow 127.0.0.1\nLogFile \"{log}\"\nLogLevel Connect\nPidFile \"{pid}\"\n",
                    port = addr.port(),
                    log = log_path.display(),
                    pid = dir.path().join("tinyproxy.pid").display(),
                );
                std::fs::write(&conf_path, conf).unwrap();
                let _ = std::fs::remove_file(&log_path);
                Command::new(TINYPROXY_BIN)
                    .arg("-d")
                    .arg("-c")
                    .arg(&conf_path)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&stderr_path).unwrap())
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot run {TINYPROXY_BIN}: {e}"))
            },
            || {
                let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
                format!(
                    "--- tinyproxy log:\n{}--- stderr:\n{}",
                    read(&log_path),
                    read(&stderr_path)
                )
            },
        );
        Tinyproxy {
            addr: addr.to_string(),
            log_path,
            child: Server(Some(child)),
            dir,
        }
    }

    /// `http://127.0.0.1:PORT`, for `curl -x` or `HTTPS_PROXY`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The CONNECT targets (`host:port`) requested so far, in order, from lines such as
    /// `CONNECT ... Request (file descriptor 5): CONNECT 127.0.0.1:3080 HTTP/1.1`.
    pub fn connects(&self) -> Vec<String> {
        parse_connects(&self.log())
    }

    /// Stop tinyproxy. Also done on drop.
    pub fn stop(&mut self) {
        self.child.stop();
    }

    /// The tempdir holding the config, log and pid file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// stunnel4 (Debian's package) as a TLS server on 127.0.0.1 in front of `upstream`: TLS ends
/// here with a certificate of its own CA ([`TlsFront::ca_pem`]; SANs `127.0.0.1`, `localhost`
/// and the host name) and the plain bytes go on to `upstream`. In front of [`Tinyproxy`] it is
/// an `https://` forward proxy. Killed on drop.
pub struct TlsFront {
    /// `127.0.0.1:PORT`, the TLS listener.
    pub addr: String,
    /// The CA that signed its certificate.
    pub ca_pem: PathBuf,
    /// Held to stop it on drop.
    _child: Server,
    dir: tempfile::TempDir,
}

impl TlsFront {
    pub fn start(upstream: &str) -> TlsFront {
        let dir = workdir(STUNNEL_BIN, "stunnel");
        let certs = TestCerts::for_loopback(&dir.path().join("certs"));
        let conf_path = dir.path().join("stunnel.conf");
        let log_path = dir.path().join("stunnel.log");
        let (child, addr) = spawn_on_free_port(
            "stunnel",
            |addr| {
                let conf = format!(
                    "foreground = yes\npid =\ndebug = 5\nsslVersionMin = TLSv1.2\n\
                     [front]\naccept = {addr}\nconnect = {upstream}\ncert = {cert}\nkey = {key}\n",
                    cert = certs.cert_pem.display(),
                    key = certs.key_pem.display(),
                );
                std::fs::write(&conf_path, conf).unwrap();
                Command::new(STUNNEL_BIN)
                    .arg(&conf_path)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log_path).unwrap())
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot run {STUNNEL_BIN}: {e}"))
            },
            || {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                format!("--- stunnel log:\n{log}")
            },
        );
        TlsFront {
            addr: addr.to_string(),
            ca_pem: certs.ca_pem,
            _child: Server(Some(child)),
            dir,
        }
    }

    /// stunnel's log (`debug = 5`: a line per accepted connection, and the bytes each relayed).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stunnel.log")).unwrap_or_default()
    }
}

/// microsocks (Debian's package) as a SOCKS5 proxy on 127.0.0.1, requiring the user name and
/// password `user`/`password` (RFC 1929); it logs each tunnel it opens. Killed on drop.
pub struct Microsocks {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Held to stop it on drop.
    _child: Server,
    dir: tempfile::TempDir,
}

impl Microsocks {
    pub fn start(user: &str, password: &str) -> Microsocks {
        let dir = workdir(MICROSOCKS_BIN, "microsocks");
        let log_path = dir.path().join("microsocks.log");
        let (child, addr) = spawn_on_free_port(
            "microsocks",
            |addr| {
                Command::new(MICROSOCKS_BIN)
                    .args(["-i", "127.0.0.1", "-p", &addr.port().to_string()])
                    .args(["-u", user, "-P", password])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log_path).unwrap())
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot run {MICROSOCKS_BIN}: {e}"))
            },
            || {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                format!("--- microsocks log:\n{log}")
            },
        );
        Microsocks {
            addr: addr.to_string(),
            _child: Server(Some(child)),
            dir,
        }
    }

    /// The targets (`host:port`) it opened tunnels to, from lines such as `client[5]
    /// 127.0.0.1: connected to vm:3080`.
    pub fn connects(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("microsocks.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| Some(l.split_once(": connected to ")?.1.trim().to_string()))
            .collect()
    }
}

fn parse_connects(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            let (_, req) = l.split_once("Request (file descriptor ")?;
            let (_, req) = req.split_once("): ")?;
            let mut w = req.split_whitespace();
            (w.next()? == "CONNECT").then(|| w.next().map(str::to_string))?
        })
        .collect()
}

/// Connections a silent peer holds, closed (shut down) when the peer is dropped.
type Held = Arc<Mutex<Vec<TcpStream>>>;

/// An accept loop on 127.0.0.1:0 that hands each connection to `on_conn`, and stops (closing
/// every held connection) on drop.
struct Acceptor {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    held: Held,
    accepted: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Acceptor {
    fn start(on_conn: impl Fn(TcpStream, &Held) + Send + 'static) -> Acceptor {
        Self::start_on("127.0.0.1:0", on_conn)
    }

    fn start_on(at: &str, on_conn: impl Fn(TcpStream, &Held) + Send + 'static) -> Acceptor {
        let l = TcpListener::bind(at).unwrap_or_else(|e| panic!("bind {at}: {e}"));
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let held: Held = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, held, accepted) = (stop.clone(), held.clone(), accepted.clone());
            std::thread::spawn(move || {
                for c in l.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(c) = c else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    if let Ok(c2) = c.try_clone() {
                        held.lock().unwrap().push(c2);
                    }
                    on_conn(c, &held);
                }
            })
        };
        Acceptor {
            addr,
            stop,
            held,
            accepted,
            thread: Some(thread),
        }
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept with one last connection.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.held.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A TCP listener on 127.0.0.1 that accepts every connection and holds it open without ever
/// writing, reading, or closing it (until dropped): a peer for deadline tests.
pub struct SilentPeer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    acc: Acceptor,
}

impl SilentPeer {
    pub fn start() -> SilentPeer {
        Self::start_on("127.0.0.1:0")
    }

    /// On a given address (e.g. the port a load balancer just gave up, so that clients
    /// configured for it now meet silence).
    pub fn start_on(at: &str) -> SilentPeer {
        let acc = Acceptor::start_on(at, |_c, _held| {});
        SilentPeer {
            addr: acc.addr.to_string(),
            acc,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.acc.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentPeer {
    fn drop(&mut self) {
        self.acc.shutdown();
    }
}

/// A TCP listener on 127.0.0.1 that accepts every connection, completes a TLS handshake with
/// a certificate for 127.0.0.1/localhost (signed by [`SilentTlsPeer::ca_pem`]), and then says
/// nothing and reads nothing until dropped: a peer for deadline tests past the handshake.
pub struct SilentTlsPeer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The CA that signed the peer's certificate.
    pub ca_pem: PathBuf,
    handshakes: Arc<AtomicUsize>,
    acc: Acceptor,
    _dir: tempfile::TempDir,
}

impl SilentTlsPeer {
    /// Negotiates no ALPN protocol.
    pub fn start() -> SilentTlsPeer {
        Self::start_alpn(&[])
    }

    /// Selects the first of `alpn` that a client offers (a client that offers none of them is
    /// refused, as rustls does).
    pub fn start_alpn(alpn: &[&str]) -> SilentTlsPeer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = tempfile::Builder::new()
            .prefix("idmux-silent-tls-")
            .tempdir()
            .unwrap();
        let certs = TestCerts::for_loopback(dir.path());
        let chain = vec![CertificateDer::from_pem_file(&certs.cert_pem).unwrap()];
        let key = PrivateKeyDer::from_pem_file(&certs.key_pem).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let cfg = Arc::new(cfg);
        let handshakes = Arc::new(AtomicUsize::new(0));
        let acc = {
            let handshakes = handshakes.clone();
            Acceptor::start(move |mut c, _held| {
                let (cfg, handshakes) = (cfg.clone(), handshakes.clone());
                // One thread per connection: a client that never sends its ClientHello blocks
                // only its own; drop shuts the socket down, which ends the handshake.
                std::thread::spawn(move || {
                    let Ok(mut tls) = rustls::ServerConnection::new(cfg) else {
                        return;
                    };
                    while tls.is_handshaking() {
                        if tls.complete_io(&mut c).is_err() {
                            return;
                        }
                    }
                    // Flush what follows the handshake (TLS 1.3 session tickets), then nothing.
                    while tls.wants_write() {
                        if tls.write_tls(&mut c).is_err() {
                            return;
                        }
                    }
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    // Then nothing: the socket's twin in `held` keeps the connection open,
                    // unread and unwritten, until the peer is dropped (no close_notify ever).
                });
            })
        };
        SilentTlsPeer {
            addr: acc.addr.to_string(),
            ca_pem: certs.ca_pem,
            handshakes,
            acc,
            _dir: dir,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.acc.accepted.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for SilentTlsPeer {
    fn drop(&mut self) {
        self.acc.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_targets_from_a_tinyproxy_log() {
        let log = "CONNECT   Dec 02 06:49:06.350 [11852]: Connect (file descriptor 5): 127.0.0.1\n\
                   CONNECT   Dec 02 06:49:06.351 [11852]: Request (file descriptor 5): CONNECT 127.0.0.1:9 HTTP/1.1\n\
                   ERROR     Dec 02 06:49:06.354 [11852]: opensock: Could not establish a connection to 127.0.0.1:9\n\
                   CONNECT   Dec 02 06:49:07.000 [11852]: Request (file descriptor 6): GET http://x/ HTTP/1.1\n\
                   CONNECT   Dec 02 06:49:08.000 [11852]: Request (file descriptor 7): CONNECT vm:3080 HTTP/1.1\n";
        assert_eq!(parse_connects(log), vec!["127.0.0.1:9", "vm:3080"]);
    }
}
