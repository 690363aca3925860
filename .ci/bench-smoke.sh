#!/usr/bin/env bash
# A small `jobwatch bench` so that the benchmark cannot rot: about 2,000 watches,
# short jobs, a short rate-limited run. It checks that the run completes, that
# every watch ended and its webhook arrived (`--check` exits 1 otherwise), and
# that the report is whole; it does not judge speed (BENCHMARKS.md does that, on
# a quiet machine). Uses the debug binary that `cargo test` already built (a release build would add minutes to CI); bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked --quiet
bin=target/debug/jobwatch
report=$(mktemp)
trap 'rm -f "$report"' EXIT

timeout 180 "$bin" bench \
  --watches 2000 \
  --min-running 1s --max-running 4s \
  --ceiling-duration 2s \
  --max-time 90s \
  --limited-watches 2000 --limited-rate 200 \
  --limited-duration 8s --limited-settle 3s \
  --check --json >"$report"

python3 - "$report" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
lat, rl = r["latency"], r["rate_limited"]
problems = []
if lat["delivered"] != r["watches"]:
    problems.append(f"{lat['delivered']} of {r['watches']} watches delivered")
if lat["rejected"]:
    problems.append(f"{lat['rejected']} webhooks refused: {lat['first_problem']}")
if not r["poll"]["polls"] or not r["ceiling"]["per_second"]:
    problems.append("no polls or no ceiling measured")
if not rl or not rl["requests"]:
    problems.append("the rate-limited run sent nothing")
if problems:
    sys.exit("bench smoke failed: " + "; ".join(problems))
print(
    f"bench smoke: {lat['delivered']}/{r['watches']} delivered; "
    f"ingest {r['ingest']['ids_per_second']:.0f} ids/s, "
    f"{r['poll']['sustained_per_second']:.0f} polls/s, "
    f"peak RSS {r['memory']['peak_rss_mib']:.1f} MiB, "
    f"p99 poll->hook {lat['beyond_cadence_ms']['p99']:.0f} ms, "
    f"rate-limited {rl['fraction_of_limit']*100:.0f}% of {rl['limit_per_second']}/s"
)
EOF
