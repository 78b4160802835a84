#!/bin/sh
# The main job (`npm run demo`): Switchyard as it runs on an edge server, on
# an embedded default that needs no outside service. A reference control
# plane watches a desired-state file and pushes it over TLS; the agent
# applies it to the dispatcher (BPF sk_lookup) and the firewall of a network
# namespace of its own. Two services listen on loopback only; connections to
# addresses neither ever bound land where the bindings say. A carve-out is
# pushed through the control plane, an HTTPS-only range refuses plaintext,
# a bad push is refused by the agent's guard, and the data plane serves on
# while the agent is killed. Touches nothing outside the namespace, a bpffs
# mount and a directory it creates (all removed on exit).
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, BPF, firewall)" >&2; exit 1; }
sh scripts/setup.sh

ns="switchyard-demo-$$"
bpffs=$(mktemp -d /tmp/switchyard-demo-bpffs.XXXXXX)
work=$(mktemp -d /tmp/switchyard-demo.XXXXXX)
chmod 700 "$work"
cleanup() {
  set +e # everything below is attempted, whatever fails
  for f in "$work"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
  sleep 0.2
  ip netns del "$ns" 2>/dev/null || true
  umount "$bpffs" 2>/dev/null || true
  rm -rf "$bpffs" "$work"
}
trap cleanup EXIT INT TERM

sy() { ./bin/switchyard "$@" --netns "/run/netns/$ns" --bpffs "$bpffs"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ switchyard %s\n' "$*"; sy "$@"; }
# A free port on loopback, from the kernel.
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
wait_for() { # description, command...
  what=$1; shift
  for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "demo: $what did not happen within 30 s; logs in $work" >&2
  tail -n 20 "$work"/*.log >&2
  exit 1
}
# The agent's and the control plane's JSON log lines, shortened for reading.
log_tail() { # file, lines
  tail -n "$2" "$1" | node -e '
    const keep = ["version", "type", "ms", "changes", "reason", "code", "message", "findings", "dispatcherMs", "firewallMs", "why", "bindings", "event"];
    for (const line of require("fs").readFileSync(0, "utf8").split("\n")) {
      if (!line) continue;
      try {
        const o = JSON.parse(line);
        const fields = keep.filter((k) => o[k] !== undefined && o[k] !== null).map((k) => `${k}=${typeof o[k] === "object" ? JSON.stringify(o[k]) : o[k]}`);
        console.log(`  [${o.component}] ${o.msg} ${fields.join(" ")}`);
      } catch { console.log(`  ${line}`); }
    }'
}
cp_status() { printf '$ switchyard control-plane status --url https://127.0.0.1:%s --ca ca.pem --token-file admin-token\n' "$cp_port"; ./bin/switchyard control-plane status --url "https://127.0.0.1:$cp_port" --ca "$work/ca.pem" --token-file "$work/admin-token"; }
applied() { # version: the control plane has edge-1's ACK for it
  ./bin/switchyard control-plane status --url "https://127.0.0.1:$cp_port" --ca "$work/ca.pem" --token-file "$work/admin-token" --json |
    node -e 'const a = JSON.parse(require("fs").readFileSync(0, "utf8")); process.exit(a.agents.some((x) => x.applied && x.applied.version === Number(process.argv[1])) ? 0 : 1)' "$1"
}

start_service() { # name specs... ; prints its pid
  name=$1; shift
  ip netns exec "$ns" node --no-deprecation test/fixtures/service.mjs "$name" "$@" >"$work/$name.out" 2>&1 &
  echo $! >"$work/$name.pid"
  for _ in $(seq 100); do grep -q '^ready' "$work/$name.out" && break; sleep 0.1; done
  sed -n 's/^ready //p' "$work/$name.out"
}
probe() {
  result=$(ip netns exec "$ns" node test/fixtures/probe.mjs "[{\"proto\":\"tcp\",\"addr\":\"$1\",\"port\":$2}]" | tr -d '[]"')
  printf '  connect %-24s → %s\n' "$1 port $2" "$result"
}

step "a network namespace with 192.0.2.0/24 and 2001:db8::/32 routed to lo, and a bpffs at $bpffs"
ip netns add "$ns"
mount -t bpf bpf "$bpffs"
ip -n "$ns" link set lo up
ip -n "$ns" route add local 192.0.2.0/24 dev lo
ip -n "$ns" -6 route add local 2001:db8::/32 dev lo

step "the channel's secrets: a CA the agent pins, the control plane's certificate, one token per agent"
ssl() { openssl "$@" >/dev/null 2>&1; }
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
# shellcheck disable=SC2086 # $ec is a list of options
ssl req -x509 $ec -keyout "$work/ca.key" -out "$work/ca.pem" -days 1 -subj /CN=switchyard-demo-ca
# shellcheck disable=SC2086
ssl req $ec -keyout "$work/cp.key" -out "$work/cp.csr" -subj /CN=localhost
echo 'subjectAltName=IP:127.0.0.1,DNS:localhost' >"$work/ext"
ssl x509 -req -in "$work/cp.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -out "$work/cp.pem" -days 1 -extfile "$work/ext"
agent_token=$(openssl rand -hex 24)
printf '{"edge-1": "%s"}\n' "$agent_token" >"$work/tokens.json"
printf '%s\n' "$agent_token" >"$work/agent-token"
openssl rand -hex 24 >"$work/admin-token"
chmod 600 "$work"/*
echo "  $work: ca.pem, cp.pem, cp.key, tokens.json (edge-1), agent-token, admin-token (all 0600)"

step "the desired state: cdn owns 192.0.2.0/24 and 2001:db8:1::/48 on every port; 192.0.2.32/27 is HTTPS-only"
cat >"$work/desired.json" <<'JSON'
{
  "bindings": [
    {"label": "cdn", "protocol": "tcp", "prefix": "192.0.2.0/24", "port": 0},
    {"label": "cdn", "protocol": "tcp", "prefix": "2001:db8:1::/48", "port": 0},
    {"label": "spectrum", "protocol": "tcp", "prefix": "192.0.2.240/28", "port": 0}
  ],
  "services": {"cdn": {"tcp": [80, 443]}, "spectrum": {"tcp": ["1-65535"]}},
  "https_only": {"prefixes": ["192.0.2.32/27"]}
}
JSON
sed 's/^/  /' "$work/desired.json"

step "start the control plane (watches desired.json, serves agents over WSS)"
cp_port=$(free_port)
metrics_port=$(free_port)
echo "\$ switchyard control-plane --state desired.json --listen 127.0.0.1:$cp_port --cert cp.pem --key cp.key --tokens tokens.json --admin-token-file admin-token"
./bin/switchyard control-plane --state "$work/desired.json" --listen "127.0.0.1:$cp_port" --cert "$work/cp.pem" --key "$work/cp.key" \
  --tokens "$work/tokens.json" --admin-token-file "$work/admin-token" >"$work/control-plane.log" 2>&1 &
echo $! >"$work/control-plane.pid"
wait_for "the control plane listening" grep -q '"msg":"listening"' "$work/control-plane.log"
log_tail "$work/control-plane.log" 2

step "start the agent (it loads the dispatcher into the namespace, applies what it is pushed, acknowledges)"
cat >"$work/agent.json" <<JSON
{"agent_id": "edge-1", "state_dir": "$work/state",
 "control_plane": {"url": "wss://127.0.0.1:$cp_port/", "ca_file": "$work/ca.pem", "token_file": "$work/agent-token"},
 "netns": "/run/netns/$ns", "bpffs": "$bpffs", "heartbeat_seconds": 2, "metrics_listen": "127.0.0.1:$metrics_port",
 "admin_socket": "$work/admin.sock", "registration_socket": "$work/register.sock"}
JSON
sed 's/^/  /' "$work/agent.json"
echo "\$ switchyard agent --config agent.json"
./bin/switchyard agent --config "$work/agent.json" >"$work/agent.log" 2>&1 &
echo $! >"$work/agent.pid"
wait_for "version 1 acknowledged" applied 1
log_tail "$work/agent.log" 8
cp_status

step "two services on loopback only: cdn (IPv4+IPv6) and spectrum (IPv4); their sockets registered with the dispatcher"
cdn=$(start_service cdn tcp4 tcp6)
spectrum=$(start_service spectrum tcp4)
for pid in $cdn $spectrum; do
  ip netns exec "$ns" ss -Hltnp | grep "pid=$pid," | while read -r _ _ _ local _; do
    addr=${local%:*}; port=${local##*:}; addr=$(echo "$addr" | tr -d '[]')
    name=$([ "$pid" = "$cdn" ] && echo cdn || echo spectrum)
    show register-pid "$pid" "$name" tcp "$addr" "$port"
  done
done

step "connections land where the bindings say (nothing listens on these addresses)"
probe 192.0.2.10 443
probe 192.0.2.200 443
probe 192.0.2.241 8080
probe 2001:db8:1::5 443
probe 192.0.2.10 8443   # bound to cdn, but cdn's policy allows 80 and 443 only: the firewall drops it
probe 192.0.2.40 80     # inside the HTTPS-only range: refused before a byte is sent
probe 192.0.2.40 443

step "push a carve-out through the control plane: 192.0.2.200 port 443 goes to spectrum"
cp "$work/desired.json" "$work/v1.json"
node -e '
  const fs = require("fs"), f = process.argv[1], d = JSON.parse(fs.readFileSync(f, "utf8"));
  d.bindings.push({ label: "spectrum", protocol: "tcp", prefix: "192.0.2.200/32", port: 443 });
  fs.writeFileSync(f + ".tmp", JSON.stringify(d, null, 2)); fs.renameSync(f + ".tmp", f);' "$work/desired.json"
echo '  + {"label": "spectrum", "protocol": "tcp", "prefix": "192.0.2.200/32", "port": 443}'
wait_for "version 2 acknowledged" applied 2
echo '$ switchyard diff v1.json desired.json   # what the control plane logged: exactly what changes hands'
./bin/switchyard diff "$work/v1.json" "$work/desired.json" | sed 's/^/  /'
log_tail "$work/control-plane.log" 1
log_tail "$work/agent.log" 6
probe 192.0.2.200 443
probe 192.0.2.200 80
probe 192.0.2.201 443

step "bad states: one that fails verification is refused; one that withdraws every cdn binding is held for an operator; nothing changes"
cp "$work/desired.json" "$work/good.json"
edit() { node -e "const fs = require('fs'), f = process.argv[1], d = JSON.parse(fs.readFileSync(f, 'utf8')); $1; fs.writeFileSync(f + '.tmp', JSON.stringify(d, null, 2)); fs.renameSync(f + '.tmp', f);" "$work/desired.json"; }
edit 'd.bindings.push({ label: "spectrum", protocol: "tcp", prefix: "192.0.2.40/32", port: 80 })'
echo '  + {"label": "spectrum", "protocol": "tcp", "prefix": "192.0.2.40/32", "port": 80}   (port 80 inside the HTTPS-only range)'
printf '$ switchyard verify desired.json\n'
./bin/switchyard verify "$work/desired.json" | sed 's/^/  /'
wait_for "the refusal" grep -q "refused by verification" "$work/control-plane.log"
log_tail "$work/control-plane.log" 1
cp "$work/good.json" "$work/desired.json.tmp" && mv "$work/desired.json.tmp" "$work/desired.json"
wait_for "back to version 2" grep -q '"msg":"unchanged"' "$work/control-plane.log"
edit 'd.bindings = d.bindings.filter((b) => b.label !== "cdn")'
echo '  - every cdn binding'
wait_for "the hold" grep -q "held, not published" "$work/control-plane.log"
log_tail "$work/control-plane.log" 1
cp_status
probe 192.0.2.10 443
cp "$work/good.json" "$work/desired.json.tmp" && mv "$work/desired.json.tmp" "$work/desired.json"
echo "  (desired.json put back: the same content as version 2, so nothing is held any more and version 2 stays)"

step "a local override while the agent runs: 192.0.2.10 port 443 to spectrum on this machine only"
printf '$ switchyard bind spectrum tcp 192.0.2.10 443   (directly, behind the agent'"'"'s back)\n'
sy bind spectrum tcp 192.0.2.10 443 --admin-socket "$work/admin.sock" || true
printf '$ switchyard local bind spectrum tcp 192.0.2.10 443 --socket admin.sock\n'
./bin/switchyard local bind spectrum tcp 192.0.2.10 443 --socket "$work/admin.sock"
probe 192.0.2.10 443
printf '$ switchyard agent status --socket admin.sock\n'
./bin/switchyard agent status --socket "$work/admin.sock"
sleep 2.5   # a heartbeat carries the override's count to the control plane
cp_status
printf '$ switchyard local clear --socket admin.sock\n'
./bin/switchyard local clear --socket "$work/admin.sock"
probe 192.0.2.10 443

step "inspect: what the kernel holds, and why a packet goes where it goes"
show bindings
show lookup tcp 192.0.2.200 443
show lookup tcp 192.0.2.10 8443
show firewall status
echo "\$ curl http://127.0.0.1:$metrics_port/metrics   (excerpt)"
node -e 'require("http").get(process.argv[1], (r) => { let t = ""; r.on("data", (d) => (t += d)); r.on("end", () => console.log(t.split("\n").filter((l) => /^switchyard_(lookups_total|bindings|applied_version|nacks_total|control_plane_connected)/.test(l)).map((l) => "  " + l).join("\n"))); })' "http://127.0.0.1:$metrics_port/metrics"

step "kill -9 the agent and stop the control plane: the data plane serves on"
kill -9 "$(cat "$work/agent.pid")"
kill "$(cat "$work/control-plane.pid")"
sleep 0.3
probe 192.0.2.200 443
probe 192.0.2.10 443
echo "\$ switchyard agent --config agent.json   (the control plane still down)"
./bin/switchyard agent --config "$work/agent.json" >"$work/agent.log" 2>&1 &
echo $! >"$work/agent.pid"
wait_for "the last known good state restored" grep -q 'last known good state restored' "$work/agent.log"
grep -E '"msg":"(kernel updated|last known good state restored|control plane)"' "$work/agent.log" | head -n 3 >"$work/restart.log"
log_tail "$work/restart.log" 3
probe 192.0.2.200 443

step "done: the demo stops its processes, removes the firewall rules, the namespace and the bpffs mount"
