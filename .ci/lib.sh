# Shared by .ci/schemathesis.sh and tests/browser/run.sh, which each run a real
# daemon for an outside checker: a work directory removed on exit (kept when the
# variable named by $2 is set), the processes started into `pids` stopped on exit
# (with the daemon's log on a failure), free loopback ports, the binary, starting
# the simulator and the daemon, and the wait for /readyz. Usage, from the
# repository's root: `source .ci/lib.sh NAME KEEP_VAR`.

work="$(mktemp -d "${TMPDIR:-/tmp}/jobwatch-$1.XXXXXX")"
keep_var="$2"
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ]; then
    echo "-- daemon log (last 40 lines)"
    tail -n 40 "$work/serve.log" 2>/dev/null || true
  fi
  if [ -n "${!keep_var:-}" ]; then
    echo "-- kept $work"
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT INT TERM

# $JOBWATCH_BIN, else the debug binary, built now.
if [ -z "${JOBWATCH_BIN:-}" ]; then
  cargo build --quiet --locked --bin jobwatch
  JOBWATCH_BIN="${CARGO_TARGET_DIR:-target}/debug/jobwatch"
fi

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Wait up to 10 s for $1/readyz to answer 200; fail if it never does.
wait_ready() {
  for _ in $(seq 1 100); do
    if curl -fsS "$1/readyz" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  curl -fsS "$1/readyz" >/dev/null
}

# Start `jobwatch simulate` on $sim_port, its jobs running $1 to $2 (log in $work).
start_simulator() {
  "$JOBWATCH_BIN" simulate --listen "127.0.0.1:$sim_port" \
    --min-running "$1" --max-running "$2" >"$work/simulate.log" 2>&1 &
  pids+=($!)
}

# Start `jobwatch serve` on $work/jobwatch.toml (its API on $api_port), with the
# environment's NAME=VALUE pairs given as arguments, and wait until it is ready;
# sets $base to its URL.
start_daemon() {
  env "$@" "$JOBWATCH_BIN" serve --config "$work/jobwatch.toml" >"$work/serve.log" 2>&1 &
  pids+=($!)
  base="http://127.0.0.1:$api_port"
  wait_ready "$base"
}
