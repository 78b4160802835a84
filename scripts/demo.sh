#!/bin/sh
# The main job (`npm run demo`): a self-contained tour of the dispatcher in a
# network namespace of its own. Two services listen on loopback only; the
# dispatcher hands them connections to addresses neither ever bound, by the
# bindings below, including a /32 port-443 carve-out from a /24.
# Touches nothing outside the namespace and a bpffs mount it creates.
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, BPF)" >&2; exit 1; }
sh scripts/setup.sh

ns="switchyard-demo-$$"
bpffs=$(mktemp -d /tmp/switchyard-demo-bpffs.XXXXXX)
work=$(mktemp -d /tmp/switchyard-demo.XXXXXX)
cleanup() {
  for f in "$work"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
  ip netns del "$ns" 2>/dev/null || true
  umount "$bpffs" 2>/dev/null || true
  rm -rf "$bpffs" "$work"
}
trap cleanup EXIT INT TERM

sy() { ./bin/switchyard "$@" --netns "/run/netns/$ns" --bpffs "$bpffs"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ switchyard %s\n' "$*"; sy "$@"; }

start_service() { # name specs... ; prints its pid
  name=$1; shift
  ip netns exec "$ns" node --no-deprecation test/fixtures/service.mjs "$name" "$@" >"$work/$name.out" 2>&1 &
  echo $! >"$work/$name.pid"
  for _ in $(seq 100); do grep -q '^ready' "$work/$name.out" && break; sleep 0.1; done
  sed -n 's/^ready //p' "$work/$name.out"
}

step "a network namespace with 192.0.2.0/24 and 2001:db8::/32 routed to lo, and a bpffs at $bpffs"
ip netns add "$ns"
mount -t bpf bpf "$bpffs"
ip -n "$ns" link set lo up
ip -n "$ns" route add local 192.0.2.0/24 dev lo
ip -n "$ns" -6 route add local 2001:db8::/32 dev lo

step "load the dispatcher (state pinned in bpffs, outlives this script's processes)"
show load

step "two services on loopback: cdn (IPv4+IPv6) and spectrum (IPv4)"
cdn=$(start_service cdn tcp4 tcp6)
spectrum=$(start_service spectrum tcp4)
ip netns exec "$ns" ss -ltnp | sed -n '1p;/node/p'
for pid in $cdn $spectrum; do
  ip netns exec "$ns" ss -Hltnp | grep "pid=$pid," | while read -r _ _ _ local _; do
    addr=${local%:*}; port=${local##*:}; addr=$(echo "$addr" | tr -d '[]')
    name=$([ "$pid" = "$cdn" ] && echo cdn || echo spectrum)
    show register-pid "$pid" "$name" tcp "$addr" "$port"
  done
done

step "bindings: cdn owns 192.0.2.0/24 on every port, spectrum carves out 192.0.2.200:443"
show bind cdn tcp 192.0.2.0/24 0
show bind spectrum tcp 192.0.2.200 443
show bind cdn tcp 2001:db8:1::/48 0
show bindings

probe() {
  result=$(ip netns exec "$ns" node test/fixtures/probe.mjs "[{\"proto\":\"tcp\",\"addr\":\"$1\",\"port\":$2}]" | tr -d '[]"')
  printf '  connect %-22s → %s\n' "$1 port $2" "$result"
}
step "connections land where the bindings say (no service listens on these addresses)"
probe 192.0.2.10 80
probe 192.0.2.10 443
probe 192.0.2.200 80
probe 192.0.2.200 443
probe 2001:db8:1::5 443
probe 2001:db8:2::1 80   # routed here but bound to no one: the kernel decides (nothing listens)

step "the loaded program explains its decision (BPF_PROG_TEST_RUN)"
show lookup tcp 192.0.2.200 443
show lookup tcp 192.0.2.201 443

step "move the carve-out back: unbind spectrum; 192.0.2.200:443 now goes to cdn"
show unbind spectrum tcp 192.0.2.200 443
probe 192.0.2.200 443

step "a bound prefix without a socket is refused, never handed to someone else"
show bind reserved tcp 192.0.2.128/28 0
probe 192.0.2.130 443

step "the firewall follows the bindings: service policies, and an HTTPS-only range closed at the transport layer"
cat >"$work/state.json" <<'JSON'
{
  "bindings": [
    {"label": "cdn", "protocol": "tcp", "prefix": "192.0.2.0/24", "port": 0},
    {"label": "spectrum", "protocol": "tcp", "prefix": "192.0.2.200/32", "port": 443},
    {"label": "cdn", "protocol": "tcp", "prefix": "2001:db8:1::/48", "port": 0}
  ],
  "services": {"cdn": {"tcp": [80, 443]}, "spectrum": {"tcp": [443]}},
  "https_only": {"prefixes": ["192.0.2.32/27"]}
}
JSON
sed 's/^/  /' "$work/state.json"
show load-bindings "$work/state.json"
show firewall apply "$work/state.json"
show firewall apply "$work/state.json"
probe 192.0.2.10 80
probe 192.0.2.10 8443   # bound to cdn, but cdn's policy has no 8443: dropped (timeout)
probe 192.0.2.40 80     # HTTPS-only: refused before a byte is sent
probe 192.0.2.40 443
probe 192.0.2.200 443
show lookup tcp 192.0.2.10 8443
show firewall status "$work/state.json"
show firewall cleanup

step "status: program, link, table, sockets and per-destination counters"
show status

step "unload (the demo cleans up its namespace and bpffs mount on exit)"
show unload
