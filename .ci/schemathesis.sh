#!/usr/bin/env bash
# Fuzz the live daemon against its own OpenAPI document with schemathesis: every
# operation gets a bounded number of generated requests (valid and invalid), and the
# run fails on any 5xx, any status, content type, header or body the document does
# not declare, invalid input that is accepted, and a /v1 route that ignores the token.
#
# It starts `jobwatch simulate` (jobs that run for minutes, so the fuzzer's watches
# stay running) and `jobwatch serve` (a temporary SQLite file, free loopback ports,
# a token, a signing secret, api.max_wait = 1s so `?wait` stays short), and stops
# both on exit.
#
# GET /v1/events is left out: it is a stream that stays open until the client
# leaves, and a fuzzer waits for the end of each answer. Its answers (the 400s of
# every bad filter and Last-Event-ID, the 401, the stream itself) are checked by
# tests/it/events.rs instead.
#
# Webhook URLs come from the fuzzer, so they name arbitrary hosts: every delivery is
# sent through an HTTP proxy on a loopback port where nothing listens, so nothing
# leaves this machine (the per-watch URL check is off for that reason, and the
# upstream and the fuzzer talk to 127.0.0.1 directly).
#
# Environment: JOBWATCH_BIN (default: build and use target/debug/jobwatch),
# SCHEMATHESIS_MAX_EXAMPLES (default 50), SCHEMATHESIS_SEED (default fixed, so CI
# runs are reproducible; set another to explore), SCHEMATHESIS (the command),
# SCHEMATHESIS_KEEP (keep the temporary directory: logs, database).
set -euo pipefail
cd "$(dirname "$0")/.."

max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-50}"
seed="${SCHEMATHESIS_SEED:-20261129}"

source .ci/lib.sh schemathesis SCHEMATHESIS_KEEP


# The command: $SCHEMATHESIS, else the module in python3 (where .ci/run installs
# .ci/requirements.txt; through python3, as a fresh console script may not be on
# PATH yet), else one on PATH, else a private virtualenv.
if [ -n "${SCHEMATHESIS:-}" ]; then
  st=("$SCHEMATHESIS")
elif python3 -c 'import schemathesis' >/dev/null 2>&1; then
  st=(python3 -c 'import sys; from schemathesis.cli import schemathesis as main; sys.argv[0] = "schemathesis"; main()')
elif command -v schemathesis >/dev/null 2>&1; then
  st=(schemathesis)
else
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet --disable-pip-version-check -r .ci/requirements.txt
  st=("$work/venv/bin/schemathesis")
fi

sim_port="$(free_port)"
api_port="$(free_port)"
dead_port="$(free_port)" # nothing listens here: the deliveries' proxy
token="schemathesis-$RANDOM$RANDOM"

start_simulator 10m 20m

cat >"$work/jobwatch.toml" <<EOF
[api]
listen = "127.0.0.1:$api_port"
token = "$token"
max_wait = "1s"
max_ids_per_request = 20
shutdown_grace = "2s"

[store]
url = "sqlite://$work/jobwatch.db"

[upstream]
base_url = "http://127.0.0.1:$sim_port"
max_requests_per_second = 200.0
burst = 50
request_timeout = "5s"

[poller]
initial_interval = "500ms"
max_interval = "5s"
not_found_grace = "10m"

[webhooks]
signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
allow_private_targets = true
request_timeout = "2s"
retry_schedule = ["1s", "2s"]

[log]
level = "warn"
EOF

start_daemon \
  HTTP_PROXY="http://127.0.0.1:$dead_port" HTTPS_PROXY="http://127.0.0.1:$dead_port" \
  ALL_PROXY="http://127.0.0.1:$dead_port" NO_PROXY="127.0.0.1,localhost" \
  http_proxy="http://127.0.0.1:$dead_port" https_proxy="http://127.0.0.1:$dead_port" \
  all_proxy="http://127.0.0.1:$dead_port" no_proxy="127.0.0.1,localhost"

echo "schemathesis $("${st[@]}" --version | awk '{print $NF}') against $base/openapi.json: $max_examples examples per operation, seed $seed"
# From the temporary directory: schemathesis keeps a cache (.schemathesis/) where it runs.
cd "$work"
"${st[@]}" run "$base/openapi.json" \
  --url "$base" \
  --header "Authorization: Bearer $token" \
  --exclude-path /v1/events \
  --checks all \
  --mode all \
  --max-examples "$max_examples" \
  --seed "$seed" \
  --workers 1 \
  --request-timeout 10 \
  --suppress-health-check too_slow,filter_too_much \
  --generation-database none \
  --no-color
