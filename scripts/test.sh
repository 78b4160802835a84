#!/bin/sh
# The test command (`npm test`): set-up, then unit tests everywhere and the
# network-namespace integration tests when run as root.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
[ "$(id -u)" = 0 ] || echo "test: not root, integration tests will be skipped"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
status=0
npx vitest run --project unit --project integration --reporter=default --reporter=json --outputFile="$results" || status=$?
# One closing line in the plain "N passed, N failed" form.
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests + r.numTodoTests} skipped`);
' "$results" || true
exit "$status"
