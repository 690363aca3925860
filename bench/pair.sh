#!/usr/bin/env bash
# Two jobwatch binaries side by side: both daemons at once, each with N never-ending
# watches on a fixed 5 s cadence, against one simulator, so that whatever else the
# machine does in the window costs both alike. Prints each one's CPU-ms per 1,000
# polls over the window and their ratio (BENCHMARKS.md, session 15: one after the
# other, a change of a few per cent was lost in the machine's drift).
#
#   bench/pair.sh BASE_BINARY NEW_BINARY [WATCHES=2000] [WINDOW_SECONDS=60]
#
# Loopback only; stops both daemons and the simulator by itself.
set -euo pipefail
a=$1 b=$2 n=${3:-2000} window=${4:-60}
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$((20000 + RANDOM % 10000))
"$a" simulate --listen "127.0.0.1:$port" --token tok >"$dir/sim.log" 2>&1 &
pids+=($!)

start() { # binary, port, name
  env JOBWATCH__UPSTREAM__BASE_URL="http://127.0.0.1:$port" JOBWATCH__UPSTREAM__TOKEN=tok \
    JOBWATCH__POLLER__INITIAL_INTERVAL=5s JOBWATCH__POLLER__MAX_INTERVAL=5s \
    JOBWATCH__POLLER__JITTER=0.02 JOBWATCH__UPSTREAM__MAX_REQUESTS_PER_SECOND=1000000 \
    JOBWATCH__UPSTREAM__BURST=10000 JOBWATCH__LOG__LEVEL=warn \
    JOBWATCH__API__LISTEN="127.0.0.1:$2" JOBWATCH__STORE__URL="sqlite://$dir/$3.db" \
    "$1" serve >"$dir/$3.log" 2>&1 &
  pids+=($!)
}
start "$a" $((port + 1)) a
start "$b" $((port + 2)) b
pid_a=${pids[1]} pid_b=${pids[2]}
for p in $((port + 1)) $((port + 2)); do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/readyz" >/dev/null && break; sleep 0.1; done
done

# The ids in ten chunks over one cadence, as `bench --operating-point` posts them,
# with the daemon's own client (`jobwatch watch`).
for chunk in $(seq 0 9); do
  for side in "a $a $((port + 1))" "b $b $((port + 2))"; do
    read -r prefix binary daemon <<<"$side"
    seq -f "running-$prefix-%07g" $((chunk * n / 10)) $(((chunk + 1) * n / 10 - 1)) |
      "$binary" watch --server "http://127.0.0.1:$daemon" --kind copy - >/dev/null
  done
  sleep 0.5
done
sleep 15

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
polls() {
  curl -sf "http://127.0.0.1:$1/metrics" | awk '/^jobwatch_upstream_polls_total/ {s += $2} END {print s + 0}'
}
a0=$(cpu "$pid_a") b0=$(cpu "$pid_b") pa0=$(polls $((port + 1))) pb0=$(polls $((port + 2)))
sleep "$window"
a1=$(cpu "$pid_a") b1=$(cpu "$pid_b") pa1=$(polls $((port + 1))) pb1=$(polls $((port + 2)))
tick_ms=$((1000 / $(getconf CLK_TCK)))
python3 - "$a" "$b" $(((a1 - a0) * tick_ms)) $((pa1 - pa0)) $(((b1 - b0) * tick_ms)) $((pb1 - pb0)) <<'PY'
import os, sys
a, b, ca, pa, cb, pb = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
ra, rb = ca * 1000 / max(pa, 1), cb * 1000 / max(pb, 1)
print(f"{os.path.basename(a)}: {ra:.1f} CPU-ms per 1,000 polls ({pa} polls)   "
      f"{os.path.basename(b)}: {rb:.1f} ({pb} polls)   second / first: {rb / max(ra, 1e-9):.3f}")
PY
