#!/usr/bin/env bash
# The main job on the dev cluster, end to end:
#   start a cluster with a node -> add a bot -> idmux start (join + outputs) ->
#   ssh -F DEST/ssh_config root@node-1.<cluster> -> scp both ways -> stop everything.
# Installs openssh-client/-server if missing and builds idmux. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --quiet --bins
IDMUX="$PWD/target/debug/idmux"

work=$(mktemp -d /tmp/idmux-demo.XXXXXX)
cluster_pid="" bot_pid=""
cleanup() {
  [ -n "$bot_pid" ] && kill "$bot_pid" 2>/dev/null || true
  [ -n "$cluster_pid" ] && kill "$cluster_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

user=$(id -un)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
proxy="127.0.0.1:$port"
cluster="dev.idmux"

echo "== 1. start a dev cluster ($cluster) with one sshd node on $proxy"
"$IDMUX" cluster start --data-dir "$work/cluster" --listen "$proxy" --name "$cluster" --nodes 1 > "$work/cluster.log" 2>&1 &
cluster_pid=$!
for _ in $(seq 100); do grep -q "ready on" "$work/cluster.log" 2>/dev/null && break; sleep 0.1; done
cat "$work/cluster.log"
curl -s --cacert "$work/cluster/ca.pem" "https://$proxy/webapi/ping" | head -c 120; echo " ..."

echo "== 2. add a bot that may log in as $user"
token=$("$IDMUX" cluster bots add demo --roles=access --logins="$user" --format=json --data-dir "$work/cluster" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token_id"])')
echo "token: $token"

echo "== 3. idmux start: join with the token, write $work/machine-id"
"$IDMUX" start --data-dir="$work/bot-data" --destination-dir="$work/machine-id" \
  --token="$token" --join-method=token --proxy-server="$proxy" --ca-path="$work/cluster/ca.pem" \
  > "$work/bot.log" 2>&1 &
bot_pid=$!
for _ in $(seq 100); do [ -s "$work/machine-id/ssh_config" ] && break; sleep 0.1; done
[ -s "$work/machine-id/ssh_config" ] || { cat "$work/bot.log"; echo "demo: the bot wrote no ssh_config" >&2; exit 1; }
ls "$work/machine-id"

echo "== 4. ssh -F $work/machine-id/ssh_config $user@node-1.$cluster 'hostname; whoami'"
ssh -F "$work/machine-id/ssh_config" -o BatchMode=yes "$user@node-1.$cluster" 'hostname; whoami'

echo "== 5. scp both ways"
head -c 1048576 /dev/urandom > "$work/payload"
scp -F "$work/machine-id/ssh_config" -q "$work/payload" "$user@node-1.$cluster:$work/payload.remote"
scp -F "$work/machine-id/ssh_config" -q "$user@node-1.$cluster:$work/payload.remote" "$work/payload.back"
cmp "$work/payload" "$work/payload.back" && echo "scp: 1 MiB up and back, identical"

echo "== demo OK; stopping the bot and the cluster"
