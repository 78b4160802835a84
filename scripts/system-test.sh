#!/bin/sh
# `npm run test:system`: Switchyard as its users run it. Builds the Debian
# package three times (this version; a newer build of the same tree; a
# build of the next ABI, its map layout changed), bootstraps a minimal Debian root with debootstrap (Debian
# packages only; cached between runs), boots it with systemd-nspawn --boot
# --private-network on a bpffs instance of its own, installs the package
# with apt-get and checks the shipped units under a real systemd
# (test/system/system.test.ts says what is checked).
#
#   SYSTEST_SUITES  Debian releases to boot, each in turn (default: bookworm
#                   trixie: systemd 252 and 257)
#   SYSTEST_CACHE   where the bootstrapped roots are kept
#                   (default: /var/cache/switchyard-systest)
#
# Exits 0 when every check passed, 1 when one failed, 77 when it cannot run
# here (not root, no systemd-nspawn or debootstrap to be had, no BPF in the
# kernel), with the reason on stderr.
set -eu
cd "$(dirname "$0")/.."
started=$(date +%s)

skip() { echo "test:system: skipped: $*" >&2; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root (systemd-nspawn, bpffs, debootstrap)"
[ "$(uname -m)" = x86_64 ] || skip "the package is amd64 only"
need=""
command -v systemd-nspawn >/dev/null 2>&1 || need="$need systemd-container"
command -v debootstrap >/dev/null 2>&1 || need="$need debootstrap"
if [ -n "$need" ]; then
  echo "test:system: installing Debian packages:$need"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null; } ||
    skip "could not install$need"
fi
probe_dir=$(mktemp -d /tmp/switchyard-systest-probe.XXXXXX)
if ! mount -t bpf bpf "$probe_dir" 2>/dev/null; then rmdir "$probe_dir"; skip "cannot mount a bpf filesystem"; fi
umount "$probe_dir"; rmdir "$probe_dir"

suites=${SYSTEST_SUITES:-bookworm trixie}
cache=${SYSTEST_CACHE:-/var/cache/switchyard-systest}
# What the root holds besides the minimal base: systemd as PID 1, and what
# the package depends on (so apt-get install ./…deb needs no network: the
# container has none).
include=systemd,systemd-sysv,dbus,iptables,ipset,iproute2,libbpf1,procps
mkdir -p "$cache"
root_of() { echo "$cache/$1-$(printf '%s %s' "$1" "$include" | sha256sum | cut -c1-12)"; }
for suite in $suites; do
  root=$(root_of "$suite")
  if [ -f "$root/.complete" ]; then
    echo "test:system: cached root $root"
    continue
  fi
  echo "test:system: debootstrap $suite into $root (cached for the next runs)"
  rm -rf "$root.tmp"
  t0=$(date +%s)
  debootstrap --variant=minbase --include="$include" "$suite" "$root.tmp" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 ||
    { tail -n 20 "$cache/debootstrap.log" >&2; echo "test:system: debootstrap $suite failed" >&2; exit 1; }
  rm -rf "$root" && mv "$root.tmp" "$root"
  touch "$root/.complete"
  echo "test:system: debootstrap $suite took $(($(date +%s) - t0)) s"
done

version=$(node -p 'require("./package.json").version')
out=$(mktemp -d /tmp/switchyard-systest-debs.XXXXXX)
trap 'rm -rf "$out"' EXIT
OUT="$out" sh scripts/package.sh
# The newer build: the same tree under a later version, as an upgrade brings.
OUT="$out" SWITCHYARD_VERSION="$version+systest1" SKIP_LINTIAN=1 sh scripts/package.sh >/dev/null
# A build of the next ABI: the dispatcher's trace map 8 bytes longer, in the
# BPF object and in user space alike, and the ABI version bumped (what a
# release that changes a pinned map's layout does), from a copy of this tree.
next="$out/next-abi"
mkdir -p "$next"
git ls-files -z | xargs -0 cp --parents -t "$next"
abi=$(sed -n 's/^export const ABI_VERSION = \([0-9]*\);$/\1/p' src/trie/layout.ts)
[ -n "$abi" ] || { echo "test:system: no ABI_VERSION in src/trie/layout.ts" >&2; exit 1; }
patch_once() { # file from to
  node -e '
    const fs = require("fs"), [file, from, to] = process.argv.slice(1), text = fs.readFileSync(file, "utf8");
    if (text.split(from).length !== 2) { console.error(`${file}: expected ${JSON.stringify(from)} exactly once`); process.exit(1); }
    fs.writeFileSync(file, text.replace(from, to));' "$next/$1" "$2" "$3"
}
patch_once src/trie/layout.ts "export const ABI_VERSION = $abi;" "export const ABI_VERSION = $((abi + 1));"
patch_once src/trie/layout.ts 'assignErr: 20, size: 24 }' 'assignErr: 20, size: 32 }'
patch_once bpf/switchyard.h "#define SY_ABI_VERSION $abi" "#define SY_ABI_VERSION $((abi + 1))"
patch_once bpf/switchyard.h "$(printf '\t__s32 assign_err;\n};')" "$(printf '\t__s32 assign_err;\n\t__u32 reserved[2];\n};')"
(cd "$next" && OUT="$out" SWITCHYARD_VERSION="$version+systest2" SKIP_LINTIAN=1 sh scripts/package.sh >/dev/null)

status=0
for suite in $suites; do
  echo "test:system: Debian $suite"
  t0=$(date +%s)
  SYSTEST_ROOT=$(root_of "$suite") SYSTEST_SUITE="$suite" SYSTEST_DEB="$out/switchyard_${version}_amd64.deb" \
    SYSTEST_DEB_NEXT="$out/switchyard_${version}+systest1_amd64.deb" SYSTEST_DEB_ABI="$out/switchyard_${version}+systest2_amd64.deb" \
    npx vitest run --project system || status=1
  cp build/system-test.json "build/system-test-$suite.json" 2>/dev/null || true
  echo "test:system: Debian $suite: $(($(date +%s) - t0)) s"
done
echo "test:system: $(($(date +%s) - started)) s in all"
exit "$status"
