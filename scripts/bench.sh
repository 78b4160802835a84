#!/bin/sh
# The benchmark command (`npm run bench [-- --quick]`): set-up, then the
# measurements pinned to one CPU. Never part of `npm test`.
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench: needs root (BPF, network namespaces)" >&2; exit 1; }
sh scripts/setup.sh
make -s -C bench/bpf
cpu=$(( $(nproc) - 1 ))
exec taskset -c "$cpu" node --max-old-space-size=16384 --expose-gc dist/bench/run.js "$@"
