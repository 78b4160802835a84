#!/bin/sh
# The soak (`npm run soak -- --seconds N [--rate R]`): set-up, then load and
# disturbances in fresh namespaces (bench/soak.ts). Never part of `npm test`.
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "soak: needs root (BPF, network namespaces)" >&2; exit 1; }
sh scripts/setup.sh
exec node dist/bench/soak.js "$@"
