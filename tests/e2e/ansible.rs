//! Ansible end to end through the multiplexer: `idmux start` runs as a daemon (fdpass through
//! `v1.sock`, keys from `agent.sock`), and Ansible's ssh connection plugin reaches 10 dev nodes
//! with nothing but `-F DEST/ssh_config`, host keys checked against the generated known_hosts.
//!
//! Skipped (with a message) when `ansible` is not installed; `scripts/test.sh` installs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use idmux_testkit::*;

const C: &str = "dev.test";
const NODES: usize = 10;

/// The running `idmux start`, stopped on drop (also when an assertion panics).
struct Bot {
    _child: Reaped,
    log: PathBuf,
}

impl Bot {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Whether `tool` is on PATH. (Not `tool --version`: that creates ~/.ansible/tmp.)
pub(crate) fn installed(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            std::fs::metadata(d.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn hosts() -> Vec<String> {
    (1..=NODES).map(|i| format!("node-{i}.{C}")).collect()
}

/// Ansible's settings for this test: (environment variable, ansible.cfg section, key, value).
/// They go both into the ansible.cfg that ANSIBLE_CONFIG names and into the environment, which
/// wins over any config file.
fn settings(work: &Path, dest: &Path) -> Vec<(&'static str, &'static str, &'static str, String)> {
    let ssh_args = [
        format!("-F {}", dest.join("ssh_config").display()),
        "-o BatchMode=yes".into(),
        // Ansible's default ssh_args are "-C -o ControlMaster=auto -o ControlPersist=60s";
        // setting ssh_args replaces them. No ControlPersist means Ansible adds no ControlPath
        // and leaves no master ssh processes behind: every task is its own fdpass connection.
        "-o ControlMaster=no".into(),
        "-o StrictHostKeyChecking=yes".into(),
        "-o GlobalKnownHostsFile=/dev/null".into(),
    ]
    .join(" ");
    let d = |p: &str| work.join(p).display().to_string();
    vec![
        ("ANSIBLE_HOME", "defaults", "home", d("ansible-home")),
        (
            "ANSIBLE_LOCAL_TEMP",
            "defaults",
            "local_tmp",
            d("ansible-local"),
        ),
        (
            "ANSIBLE_REMOTE_TEMP",
            "defaults",
            "remote_tmp",
            d("ansible-remote"),
        ),
        (
            "ANSIBLE_HOST_KEY_CHECKING",
            "defaults",
            "host_key_checking",
            "True".into(),
        ),
        (
            "ANSIBLE_PYTHON_INTERPRETER",
            "defaults",
            "interpreter_python",
            "/usr/bin/python3".into(),
        ),
        ("ANSIBLE_FORKS", "defaults", "forks", NODES.to_string()),
        ("ANSIBLE_TIMEOUT", "defaults", "timeout", "20".into()),
        ("ANSIBLE_NOCOLOR", "defaults", "nocolor", "True".into()),
        (
            "ANSIBLE_RETRY_FILES_ENABLED",
            "defaults",
            "retry_files_enabled",
            "False".into(),
        ),
        ("ANSIBLE_SSH_ARGS", "ssh_connection", "ssh_args", ssh_args),
        // Never ~/.ansible/cp: its socket names hash only host, port and user, so another
        // run's master for node-1.dev.test:3022 would be reused (unused here: no ControlPersist).
        (
            "ANSIBLE_SSH_CONTROL_PATH_DIR",
            "ssh_connection",
            "control_path_dir",
            d("ansible-cp"),
        ),
        // Modules go to python's stdin in the session instead of over sftp plus chmod, exec and
        // rm: one connection per task instead of five (`copy` still puts its file over sftp).
        // Without it the test passes too, but takes about twice as long on a 2-core machine.
        (
            "ANSIBLE_PIPELINING",
            "ssh_connection",
            "pipelining",
            "True".into(),
        ),
    ]
}

pub(crate) struct Ansible {
    work: PathBuf,
    cfg: PathBuf,
    settings: Vec<(&'static str, &'static str, &'static str, String)>,
}

impl Ansible {
    pub(crate) fn new(work: &Path, dest: &Path) -> Ansible {
        let settings = settings(work, dest);
        let mut ini = String::new();
        for section in ["defaults", "ssh_connection"] {
            ini += &format!("[{section}]\n");
            for (_, s, k, v) in &settings {
                if *s == section {
                    ini += &format!("{k} = {v}\n");
                }
            }
        }
        let cfg = work.join("ansible.cfg");
        std::fs::write(&cfg, ini).unwrap();
        Ansible {
            work: work.to_path_buf(),
            cfg,
            settings,
        }
    }

    pub(crate) fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.current_dir(&self.work);
        // Nothing from the caller's Ansible set-up leaks in.
        for (k, _) in std::env::vars() {
            if k.starts_with("ANSIBLE_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("ANSIBLE_CONFIG", &self.cfg)
            .env("LC_ALL", "C.UTF-8");
        for (e, _, _, v) in &self.settings {
            cmd.env(e, v);
        }
        cmd
    }
}

/// The output of a tool run, for failure messages.
fn dump(o: &Output, bot: &Bot) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}\n--- bot log\n{}",
        o.status,
        stdout(o),
        stderr(o),
        bot.log()
    )
}

/// The PLAY RECAP counters of `host` (`ok`, `changed`, `unreachable`, `failed`, ...).
fn recap(out: &str, host: &str) -> Option<Vec<(String, u64)>> {
    let recap = &out[out.find("PLAY RECAP")?..];
    let line = recap.lines().find(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some(host) && w.next() == Some(":")
    })?;
    Some(
        line.split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect(),
    )
}

const PLAYBOOK: &str = r#"- name: write and read back a file on every node
  hosts: all
  gather_facts: false
  tasks:
    - name: write a file unique to this host
      ansible.builtin.copy:
        content: "hello from {{ inventory_hostname }}\n"
        dest: "{{ out_dir }}/out-{{ inventory_hostname }}"
        mode: "0644"
    - name: read it back
      ansible.builtin.command:
        argv: [cat, "{{ out_dir }}/out-{{ inventory_hostname }}"]
      register: readback
      changed_when: false
    - name: it is this host's content
      ansible.builtin.assert:
        that:
          - readback.stdout == "hello from " ~ inventory_hostname
        fail_msg: "read back {{ readback.stdout }}"
"#;

#[test]
fn ansible_ping_and_playbook_on_10_nodes_through_the_multiplexer() {
    let _serial = exclusive(); // asserts a deadline or loads the machine
    if !installed("ansible") || !installed("ansible-playbook") {
        println!(
            "SKIPPED ansible_ping_and_playbook_on_10_nodes_through_the_multiplexer: \
             `ansible` is not installed (IDMUX_WITH_ANSIBLE=1 bash scripts/install-deps.sh)"
        );
        return;
    }
    let t0 = Instant::now();
    let cl = DevCluster::start(C, NODES);
    let work = tempfile::tempdir().unwrap();
    let (data, dest) = (work.path().join("data"), work.path().join("dest"));
    let token = cl.token("ansible", &me());
    let log = work.path().join("bot.log");
    let bot = Bot {
        _child: Command::new(idmux_bin())
            .args(cl.start_args(&data, &dest, &token))
            .args(["--certificate-ttl=10m", "--renewal-interval=5m"])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn_reaped(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(dest.join("ssh_config").exists() && dest.join("v1.sock").exists()) {
        assert!(
            Instant::now() < deadline,
            "the bot did not come up:\n{}",
            bot.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The long-running bot's ssh_config is the fdpass one.
    let g = ssh_g(&dest.join("ssh_config"), &format!("{}@node-1.{C}", me()));
    assert_eq!(get(&g, "proxyusefdpass"), Some("yes"), "{g:?}");
    assert!(
        get(&g, "identityagent").is_some_and(|a| a.ends_with("agent.sock")),
        "{g:?}"
    );

    let out_dir = work.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let inventory = work.path().join("inventory.ini");
    let mut inv = String::from("[nodes]\n");
    for h in hosts() {
        inv += &format!("{h} ansible_user={}\n", me());
    }
    inv += &format!("\n[all:vars]\nout_dir={}\n", out_dir.display());
    std::fs::write(&inventory, inv).unwrap();
    let playbook = work.path().join("playbook.yml");
    std::fs::write(&playbook, PLAYBOOK).unwrap();
    let ansible = Ansible::new(work.path(), &dest);
    let setup = t0.elapsed();

    // (a) ad-hoc ping.
    let t = Instant::now();
    let o = run(ansible
        .command("ansible")
        .arg("all")
        .arg("-i")
        .arg(&inventory)
        .args(["-m", "ping"]));
    let ping_time = t.elapsed();
    assert!(o.status.success(), "ansible ping: {}", dump(&o, &bot));
    let out = stdout(&o);
    for h in hosts() {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{h} | SUCCESS =>"))),
            "no SUCCESS for {h}: {}",
            dump(&o, &bot)
        );
    }
    assert_eq!(
        out.matches(" | SUCCESS =>").count(),
        NODES,
        "{}",
        dump(&o, &bot)
    );
    assert_eq!(
        out.matches("\"ping\": \"pong\"").count(),
        NODES,
        "{}",
        dump(&o, &bot)
    );

    // (b) a playbook with copy, command and assert on every node.
    let t = Instant::now();
    let o = run(ansible
        .command("ansible-playbook")
        .arg("-i")
        .arg(&inventory)
        .arg(&playbook));
    let playbook_time = t.elapsed();
    assert!(o.status.success(), "ansible-playbook: {}", dump(&o, &bot));
    let out = stdout(&o);
    for h in hosts() {
        let r = recap(&out, &h)
            .unwrap_or_else(|| panic!("no PLAY RECAP line for {h}: {}", dump(&o, &bot)));
        let n = |k: &str| r.iter().find(|(x, _)| x == k).map(|(_, v)| *v);
        assert_eq!(n("ok"), Some(3), "{h}: {r:?}\n{}", dump(&o, &bot));
        assert_eq!(n("changed"), Some(1), "{h}: {r:?}\n{}", dump(&o, &bot));
        assert_eq!(n("unreachable"), Some(0), "{h}: {r:?}\n{}", dump(&o, &bot));
        assert_eq!(n("failed"), Some(0), "{h}: {r:?}\n{}", dump(&o, &bot));
        // All nodes are sshd on this machine, so the files land here.
        let f = out_dir.join(format!("out-{h}"));
        assert_eq!(
            std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())),
            format!("hello from {h}\n")
        );
    }
    assert_eq!(
        std::fs::read_dir(&out_dir).unwrap().count(),
        NODES,
        "unexpected files in {}",
        out_dir.display()
    );
    println!(
        "ansible through idmux: setup {setup:.1?}, ping {ping_time:.1?}, \
         playbook {playbook_time:.1?} for {NODES} nodes"
    );
    drop(bot);
}
