#!/usr/bin/env bash
# Benchmarks (issues 7 and 18): idmux against direct ssh (plain, and with TCP_NODELAY as the
# latency baseline), OpenSSH ProxyJump, stunnel4 (a plain C TLS relay, the daemon's peer) and the
# per-connection stdio ProxyCommand, side by side in one run. Writes BENCHMARKS.md at the repo
# root, with the latency distribution of each path in benches/latency.svg and each relay's CPU per
# GiB in benches/cpu.svg, and prints the tables and the goals of both issues.
#
#   scripts/bench.sh           full run: 30 latency runs, 1 GiB throughput x5, 4 x 512 MiB at once
#                              per relay, storm of 500 through the multiplexer paths (200 through
#                              the others), 1,000 open sessions per daemon (about 20 minutes on 2
#                              cores)
#   scripts/bench.sh --quick   10 latency runs, 256 MiB throughput x1, 4 x 128 MiB at once, storm
#                              of 50, 100 sessions per daemon (about 5 minutes)
#   scripts/bench.sh --keep    keep the work dir (cluster, destinations, logs) for inspection
#   scripts/bench.sh --no-build  measure target/release as it is (no install-deps, no build)
#   scripts/bench.sh --identities  only renewals per signature algorithm suite (legacy RSA vs
#                              balanced-v1 ECDSA) and ssh latency while the bot renews back to
#                              back (benches/identities.py; about a minute)
#
# Starts, all on loopback: a dev cluster with one sshd node, two bot daemons (`idmux start`, fdpass
# multiplexer; one with --transport grpc, one with --transport ssh) and a third behind nginx (an
# L7 load balancer), a stdio destination dir (`idmux cluster auth sign --mode stdio`, used with
# either transport), a bastion sshd for ProxyJump, and a stunnel4 server (in front of the node's
# sshd) and client (TLS 1.3, TLS_AES_128_GCM_SHA256, as idmux negotiates with the dev proxy).
# Builds two C helpers into the work dir with cc: benches/nodelay.c (LD_PRELOAD shim: TCP_NODELAY
# on ssh's socket) and benches/hop.c (CPU of one socket hop, for the relay cost's limit, with
# `openssl speed`). Then benches/measure.py measures every path (see benches/README.md).
# Everything started here is stopped on exit. Raw results: target/bench/results.json.
set -euo pipefail
BENCH_T0=$(date +%s.%N)
export BENCH_T0
cd "$(dirname "$0")/.."
ROOT="$PWD"

quick=0 keep=0 build=1 identities=0
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    --identities) identities=1 ;;
    --keep) keep=1 ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument $a (try --help)" >&2; exit 2 ;;
  esac
done

if [ "$build" = 1 ]; then
  bash scripts/install-deps.sh
  echo "bench: cargo build --release --bins" >&2
  cargo build --release --bins
fi
IDMUX="$ROOT/target/release/idmux"
[ -x "$ROOT/target/release/idmux-fdpass" ] || { echo "bench: target/release/idmux-fdpass is missing" >&2; exit 1; }
if [ "$identities" = 1 ]; then
  unset SSH_AUTH_SOCK
  exec python3 "$ROOT/benches/identities.py" "$IDMUX" --runs "$([ "$quick" = 1 ] && echo 5 || echo 15)"
fi

# 1,000 sessions, a storm of 500 and their pipes need more than the usual 1024 descriptors.
[ "$(ulimit -n)" -ge 8192 ] 2>/dev/null || ulimit -n 8192 2>/dev/null || true
unset SSH_AUTH_SOCK  # only the keys we name, for every path
# ssh starts a ProxyCommand as `$SHELL -c "exec ..."`, and with ProxyUseFDPass its stdin is a
# socket: bash then takes itself for a shell started by rshd and reads ~/.bashrc (bash's
# shell.c: `isnetconn (fileno (stdin)) && shell_level < 2`). On 2026-12-04 this machine's
# ~/.bashrc ran pyenv's init, and every multiplexer sample paid 100-150 ms for it (1.5-1.8x
# direct; README, "The ProxyCommand's shell"). The paths are compared here, not ~/.bashrc:
# ssh runs its ProxyCommands with /bin/sh, which reads no start-up file for `-c`.
export SHELL=/bin/sh

work=$(mktemp -d /tmp/idmux-bench.XXXXXX)
mkdir -p "$ROOT/target/bench"
cluster_pid="" bot_pids="" bastion_pid="" py_pid="" node_pid="" nginx_pid=""
stunnel_srv_pid="" stunnel_cli_pid=""

# Kill one process and the processes whose parent it is (sshd's per-connection children), by id.
kill_tree() {
  local pid=$1 kids
  [ -n "$pid" ] || return 0
  kids=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
  kill "$pid" 2>/dev/null || true
  # shellcheck disable=SC2086
  [ -z "$kids" ] || kill $kids 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$py_pid" ]; then
    # The harness runs in its own process group (its pid): ssh clients, ProxyCommands, wrappers.
    kill -- -"$py_pid" 2>/dev/null || true
    kill "$py_pid" 2>/dev/null || true
  fi
  for p in $bot_pids; do kill "$p" 2>/dev/null || true; done
  kill_tree "$bastion_pid"
  kill_tree "$node_pid"
  kill_tree "$nginx_pid"
  for p in $stunnel_cli_pid $stunnel_srv_pid; do kill "$p" 2>/dev/null || true; done
  [ -n "$cluster_pid" ] && kill "$cluster_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    for f in cluster.log bot-grpc.log bot-ssh.log bot-nginx.log nginx/error.log bastion.log \
      stunnel/server.log stunnel/client.log; do
      [ -s "$work/$f" ] && { echo "--- $f (last lines)" >&2; tail -n 15 "$work/$f" >&2; }
    done
  fi
  if [ "$keep" = 1 ]; then echo "bench: work dir kept: $work" >&2; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The C helpers: the TCP_NODELAY shim for the "direct NODELAY" path and the socket-hop timer
# of the relay-cost table (benches/nodelay.c, benches/hop.c), built into the work dir.
cc -shared -fPIC -O2 -Wall -o "$work/nodelay.so" benches/nodelay.c -ldl
cc -O2 -Wall -o "$work/hop" benches/hop.c

user=$(id -un)
cluster="bench.idmux"
port=$(free_port)
proxy="127.0.0.1:$port"
dev="$work/cluster"

echo "bench: dev cluster $cluster with 1 node, proxy on $proxy" >&2
"$IDMUX" cluster start --data-dir "$dev" --listen "$proxy" --name "$cluster" --nodes 1 > "$work/cluster.log" 2>&1 &
cluster_pid=$!
for _ in $(seq 200); do grep -q "ready on" "$work/cluster.log" 2>/dev/null && break; sleep 0.1; done
grep -q "ready on" "$work/cluster.log" || { echo "bench: the cluster did not start" >&2; exit 1; }

node_addr=$("$IDMUX" cluster nodes ls --data-dir "$dev" --format json \
  | python3 -c 'import json,sys; print([n for n in json.load(sys.stdin) if n["name"]=="node-1"][0]["addr"])')
node_host=${node_addr%:*} node_port=${node_addr##*:}
node_pid=$(cat "$dev/nodes/node-1/sshd.pid" 2>/dev/null || true)
echo "bench: node-1 sshd on $node_addr" >&2

echo "bench: stdio destination (idmux cluster auth sign --mode stdio)" >&2
"$IDMUX" cluster bots add bench-stdio --logins "$user" --data-dir "$dev" > /dev/null
"$IDMUX" cluster auth sign --data-dir "$dev" --bot bench-stdio --ttl 4h --mode stdio \
  --destination-dir "$work/stdio" > /dev/null

# The stdio paths: the destination's ssh_config with the ProxyCommand's transport pinned.
for t in grpc ssh; do
  sed -e "/ssh-proxy-command/s|\$| --transport=$t|" "$work/stdio/ssh_config" > "$work/stdio-$t.ssh_config"
  grep -q -- "--transport=$t" "$work/stdio-$t.ssh_config" || { echo "bench: no ProxyCommand in $work/stdio/ssh_config" >&2; exit 1; }
done

# nginx in front of the proxy as an L7 load balancer: it ends TLS with its own certificate and
# passes everything (WebSocket upgrades included) to the proxy, so the daemon behind it detects
# the ALPN connection upgrade and runs TLS inside WebSocket frames inside nginx's TLS.
echo "bench: nginx (L7 load balancer) in front of the proxy" >&2
lb="$work/nginx"
mkdir -p "$lb"/{client_body,proxy,fastcgi,uwsgi,scgi}
ossl() { openssl "$@" 2>>"$lb/openssl.log"; }
ossl req -x509 -new -nodes -days 2 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
  -subj "/CN=idmux bench load balancer CA" -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign,cRLSign -keyout "$lb/ca.key" -out "$lb/ca.pem"
ossl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -subj "/CN=127.0.0.1" \
  -keyout "$lb/key.pem" -out "$lb/cert.csr"
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$lb/cert.ext"
ossl x509 -req -days 2 -sha256 -in "$lb/cert.csr" -CA "$lb/ca.pem" -CAkey "$lb/ca.key" \
  -CAcreateserial -extfile "$lb/cert.ext" -out "$lb/cert.pem"
lbport=$(free_port)
cat > "$lb/nginx.conf" <<EOF
$([ "$(id -u)" = 0 ] && echo "user root;")
worker_processes 1;
pid $lb/nginx.pid;
error_log $lb/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $lb/client_body;
    proxy_temp_path $lb/proxy;
    fastcgi_temp_path $lb/fastcgi;
    uwsgi_temp_path $lb/uwsgi;
    scgi_temp_path $lb/scgi;
    map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
    server {
        listen 127.0.0.1:$lbport ssl;
        ssl_certificate $lb/cert.pem;
        ssl_certificate_key $lb/key.pem;
        location / {
            proxy_pass https://$proxy;
            proxy_http_version 1.1;
            proxy_set_header Host \$http_host;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $dev/ca.pem;
            proxy_ssl_name localhost;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_buffering off;
            proxy_request_buffering off;
        }
    }
}
EOF
/usr/sbin/nginx -p "$lb" -c "$lb/nginx.conf" -e "$lb/error.log" -g 'daemon off;' > "$lb/stdout.log" 2>&1 &
nginx_pid=$!
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1',$lbport),0.2)" 2>/dev/null && break
  sleep 0.1
done
kill -0 "$nginx_pid" 2>/dev/null || { echo "bench: nginx did not start" >&2; exit 1; }

# stunnel4, the plain C TLS relay the daemon is compared with: a stunnel server in front of the
# node's sshd and a stunnel client daemon on loopback that ssh connects to, so each ssh session
# is one TLS 1.3 connection relayed by the client, as the daemon relays each session over its
# TLS connection to the proxy. TLS_AES_128_GCM_SHA256 is what idmux negotiates with the dev proxy,
# which chooses as Go's TLS server (Teleport's) does. The certificate is nginx's above.
echo "bench: stunnel4 server (in front of the node's sshd) and client (on loopback)" >&2
st="$work/stunnel"
mkdir -p "$st"
st_sport=$(free_port)
st_cport=$(free_port)
st_common="foreground = yes
pid =
debug = 4
sslVersionMin = TLSv1.3
ciphersuites = TLS_AES_128_GCM_SHA256"
cat > "$st/server.conf" <<EOF
$st_common
[ssh]
accept = 127.0.0.1:$st_sport
connect = $node_addr
cert = $lb/cert.pem
key = $lb/key.pem
EOF
cat > "$st/client.conf" <<EOF
$st_common
[ssh]
client = yes
accept = 127.0.0.1:$st_cport
connect = 127.0.0.1:$st_sport
CAfile = $lb/ca.pem
verifyChain = yes
checkIP = 127.0.0.1
EOF
/usr/bin/stunnel4 "$st/server.conf" > "$st/server.log" 2>&1 &
stunnel_srv_pid=$!
/usr/bin/stunnel4 "$st/client.conf" > "$st/client.log" 2>&1 &
stunnel_cli_pid=$!
for p in $st_sport $st_cport; do
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$p),0.2)" 2>/dev/null && break
    sleep 0.1
  done
done
kill -0 "$stunnel_srv_pid" 2>/dev/null && kill -0 "$stunnel_cli_pid" 2>/dev/null \
  || { echo "bench: stunnel did not start" >&2; exit 1; }

# One bot daemon per transport, each with its own data and destination dirs, and one behind
# nginx (gRPC).
declare -A bot_pid
echo "bench: bot daemon behind nginx (idmux start --proxy-server nginx, fdpass multiplexer)" >&2
token=$("$IDMUX" cluster bots add "bench-bot-nginx" --logins "$user" --format json --data-dir "$dev" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token_id"])')
"$IDMUX" start --data-dir="$work/bot-data-nginx" --destination-dir="$work/mux-nginx" \
  --token="$token" --join-method=token --proxy-server="127.0.0.1:$lbport" --ca-path="$lb/ca.pem" \
  --transport=grpc > "$work/bot-nginx.log" 2>&1 &
bot_pid[nginx]=$!
bot_pids="$bot_pids ${bot_pid[nginx]}"
for t in grpc ssh; do
  echo "bench: bot daemon (idmux start --transport $t, fdpass multiplexer)" >&2
  token=$("$IDMUX" cluster bots add "bench-bot-$t" --logins "$user" --format json --data-dir "$dev" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token_id"])')
  "$IDMUX" start --data-dir="$work/bot-data-$t" --destination-dir="$work/mux-$t" \
    --token="$token" --join-method=token --proxy-server="$proxy" --ca-path="$dev/ca.pem" \
    --transport="$t" > "$work/bot-$t.log" 2>&1 &
  bot_pid[$t]=$!
  bot_pids="$bot_pids ${bot_pid[$t]}"
done
for t in grpc ssh nginx; do
  d="$work/mux-$t"
  for _ in $(seq 300); do
    [ -s "$d/ssh_config" ] && [ -S "$d/v1.sock" ] && [ -S "$d/agent.sock" ] && break
    sleep 0.1
  done
  [ -S "$d/v1.sock" ] || { echo "bench: the $t daemon did not come up" >&2; exit 1; }
  grep -q ProxyUseFDPass "$d/ssh_config" || { echo "bench: $d/ssh_config is not in fdpass mode" >&2; exit 1; }
done
grep -q "proxy path: ALPN connection upgrade" "$work/bot-nginx.log" \
  || { echo "bench: the daemon behind nginx did not detect the connection upgrade" >&2; exit 1; }

echo "bench: bastion sshd for ProxyJump" >&2
for _ in 1 2 3 4 5; do
  bport=$(free_port)
  sed -e "s|^ListenAddress .*|ListenAddress 127.0.0.1:$bport|" \
      -e "s|^PidFile .*|PidFile $work/bastion.pid|" \
      -e "s|^# sshd_config of idmux dev node.*|# bastion for scripts/bench.sh (copy of node-1's sshd_config)|" \
      "$dev/nodes/node-1/sshd_config" > "$work/bastion_sshd_config"
  /usr/sbin/sshd -D -e -f "$work/bastion_sshd_config" > "$work/bastion.log" 2>&1 &
  bastion_pid=$!
  up=0
  for _ in $(seq 50); do
    kill -0 "$bastion_pid" 2>/dev/null || break
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$bport),0.2)" 2>/dev/null; then up=1; break; fi
    sleep 0.1
  done
  [ "$up" = 1 ] && break
  kill "$bastion_pid" 2>/dev/null || true; wait "$bastion_pid" 2>/dev/null || true; bastion_pid=""
done
[ -n "$bastion_pid" ] || { echo "bench: the bastion sshd did not start" >&2; exit 1; }
echo "bench: bastion sshd on 127.0.0.1:$bport" >&2

# direct and ProxyJump: the stdio destination's key + cert and known_hosts; the node (and the
# bastion, which serves the node's host key and certificate) checked as node-1.<cluster>.
cat > "$work/bench_ssh_config" <<EOF
# written by scripts/bench.sh
Host bench-node
    HostName $node_host
    Port $node_port
Host bench-bastion
    HostName 127.0.0.1
    Port $bport
Host bench-stunnel
    HostName 127.0.0.1
    Port $st_cport
Host bench-*
    User $user
    HostKeyAlias node-1.$cluster
    IdentityFile $work/stdio/key
    CertificateFile $work/stdio/key-cert.pub
    IdentitiesOnly yes
    UserKnownHostsFile $work/stdio/known_hosts
EOF

python3 - "$work/bench.json" <<EOF
import json, sys
json.dump({
    "work": "$work", "quick": bool($quick), "user": "$user", "cluster": "$cluster",
    "proxy": "$proxy", "node_addr": "$node_addr", "bastion_port": $bport,
    "bench_ssh_config": "$work/bench_ssh_config",
    "nodelay_so": "$work/nodelay.so", "hop": "$work/hop",
    "stunnel_client_pid": $stunnel_cli_pid, "stunnel_server_pid": $stunnel_srv_pid,
    # The server side, put on its own core for the client-side figure (measure.py).
    "cluster_pid": $cluster_pid, "node_pid": int("${node_pid:-0}") or None,
    # Per idmux path (keys as in measure.py's PATHS): its ssh_config and daemon.
    "paths": {
        "stdio-grpc": {"ssh_config": "$work/stdio-grpc.ssh_config"},
        "stdio-ssh": {"ssh_config": "$work/stdio-ssh.ssh_config"},
        "fdpass-grpc": {"ssh_config": "$work/mux-grpc/ssh_config", "daemon_pid": ${bot_pid[grpc]}},
        "fdpass-ssh": {"ssh_config": "$work/mux-ssh/ssh_config", "daemon_pid": ${bot_pid[ssh]}},
        "fdpass-nginx": {"ssh_config": "$work/mux-nginx/ssh_config", "daemon_pid": ${bot_pid[nginx]}},
    },
}, open(sys.argv[1], "w"), indent=2)
EOF

echo "bench: measuring ($([ "$quick" = 1 ] && echo quick || echo full) run)" >&2
python3 benches/measure.py run --config "$work/bench.json" \
  --json "$ROOT/target/bench/results.json" --md "$ROOT/BENCHMARKS.md" &
py_pid=$!
wait "$py_pid"
py_pid=""
