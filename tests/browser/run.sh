#!/usr/bin/env bash
# The browser test of the status page: starts `jobwatch simulate` and `jobwatch serve`
# (a temporary SQLite file, free loopback ports, a token, a signing secret, a webhook
# schedule short enough that a delivery to a dead port ends `dead` in a second), runs
# tests/browser/status-page.mjs against them in Debian's headless Chromium, and stops
# both on exit.
#
# Needs /usr/bin/chromium (`apt-get install -y chromium`) and `npm ci` in
# tests/browser (.ci/run does both). Environment: JOBWATCH_BIN (default: build and use
# the debug binary), SCREENSHOT (also save a picture of the page there),
# BROWSER_TEST_KEEP (keep the temporary directory: logs, database).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -x /usr/bin/chromium ]; then
  echo "tests/browser/run.sh: /usr/bin/chromium is missing: apt-get install -y chromium" >&2
  exit 1
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "tests/browser/run.sh: run \`npm ci\` in tests/browser first" >&2
  exit 1
fi

source .ci/lib.sh browser BROWSER_TEST_KEEP


sim_port="$(free_port)"
api_port="$(free_port)"
dead_port="$(free_port)" # nothing listens here: deliveries to it end dead
token="browser-$RANDOM$RANDOM"

start_simulator 1s 3s

cat >"$work/jobwatch.toml" <<EOF
[api]
listen = "127.0.0.1:$api_port"
token = "$token"
shutdown_grace = "2s"

[store]
url = "sqlite://$work/jobwatch.db"

[upstream]
base_url = "http://127.0.0.1:$sim_port"
max_requests_per_second = 200.0
burst = 50

[poller]
initial_interval = "300ms"
max_interval = "1s"

[webhooks]
signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
allow_private_targets = true
request_timeout = "2s"
retry_schedule = ["200ms"]

[log]
level = "warn"
EOF

start_daemon

shot=()
if [ -n "${SCREENSHOT:-}" ]; then
  shot=(--screenshot "$SCREENSHOT")
fi
node tests/browser/status-page.mjs --url "$base" --token "$token" \
  --dead-url "http://127.0.0.1:$dead_port/hook" "${shot[@]}"
