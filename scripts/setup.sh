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
# The control plane's PostgreSQL store is tested against clusters the tests
# start themselves (initdb in a temporary directory): the server binaries only.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"
if [ -n "$need" ]; then
  echo "setup: installing Debian packages:$need"
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing packages ($need); run as root or install them" >&2
    exit 1
  fi
  case "$need" in
    *postgresql*)
      # No cluster of the package's own: Debian's postinst would create and
      # start "main" (a service on the host the tests never asked for).
      if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        mkdir -p /etc/postgresql-common
        echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf
      fi
      ;;
  esac
  apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $need >/dev/null
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "setup: building (bpf, native addon, TypeScript)"
npm run --silent build
