#!/bin/sh
# Installs what Switchyard needs on a fresh Debian machine, then builds the
# BPF object, the native addon and the TypeScript. Safe to run again: it
# installs only what is missing.
set -eu
cd "$(dirname "$0")/.."

need=""
command -v clang >/dev/null 2>&1 || need="$need clang llvm"
[ -f /usr/include/bpf/libbpf.h ] || need="$need libbpf-dev"
command -v bpftool >/dev/null 2>&1 || need="$need bpftool"
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v iptables-nft-restore >/dev/null 2>&1 || need="$need iptables"
command -v ipset >/dev/null 2>&1 || need="$need ipset"
command -v nsenter >/dev/null 2>&1 || need="$need util-linux"
command -v openssl >/dev/null 2>&1 || need="$need openssl"   # test certificates for the control-plane channel
command -v make >/dev/null 2>&1 || need="$need make"
command -v g++ >/dev/null 2>&1 || need="$need g++"
command -v python3 >/dev/null 2>&1 || need="$need python3"
if [ -n "$need" ]; then
  echo "setup: installing Debian packages:$need"
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing packages ($need); run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "setup: building (bpf, native addon, TypeScript)"
npm run --silent build
