#!/usr/bin/env bash
# The users scenario against a release `boardroom serve` (the whole suite in one process) on
# PostgreSQL (a fresh database `boardroom_users`) and Redis, the mock model at a realistic pace
# (200 ms to the first token, 50 tokens/s). Prints the per-step table and the suite's RSS/CPU;
# writes the JSON and HTML reports to bench/out/.
# Usage: bench/users.sh [users, default 1000] [duration, default 60s] [think, default 20s] [ramp, default 20s]
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-1000}
DURATION=${2:-60s}
THINK=${3:-20s}
RAMP=${4:-20s}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
REDIS=${BENCH_REDIS:-redis://127.0.0.1:6379}
cargo build --release --bin boardroom >/dev/null 2>&1
BIN=target/release/boardroom
psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS boardroom_users" -c "CREATE DATABASE boardroom_users"
mkdir -p bench/out
LOG=$(mktemp)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -f "$LOG"' EXIT
env BOARDROOM_DATABASE__URL="$PG/boardroom_users" BOARDROOM_REDIS__URL="$REDIS" BOARDROOM_TELEMETRY__LOG_LEVEL=warn \
    BOARDROOM_LLM__DEPLOYMENTS__MOCK__TTFT_MS=200 BOARDROOM_LLM__DEPLOYMENTS__MOCK__TOKENS_PER_SECOND=50 \
    $BIN serve 2>"$LOG" &
PID=$!
for _ in $(seq 300); do curl -sf 127.0.0.1:9092/readyz >/dev/null && break; sleep 0.1; done
$BIN load 127.0.0.1:50051 --scenario users --users "$USERS" -z "$DURATION" --think "$THINK" --ramp "$RAMP" \
  --pid "suite=$PID" --html "bench/out/users-$USERS.html" >"bench/out/users-$USERS.json"
python3 - "bench/out/users-$USERS.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['users']} users, {r['duration_s']:.0f} s (ramp {r['ramp_s']:.0f} s, think {r['think_s']:.0f} s): {r['errors']} errors")
print("| step | calls | RPS | p50 ms | p95 ms | p99 ms | failures |")
print("|---|---|---|---|---|---|---|")
for name, s in r["steps"].items():
    print(f"| {name} | {s['count']} | {s['rps']:.1f} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s['p99_ms']:.2f} | {s['failures'] or ''} |")
for name, p in r["processes"].items():
    print(f"{name}: peak RSS {p['peak_rss_mb']:.1f} MB, mean CPU {p['mean_cpu_percent']:.0f} %")
PY
kill $PID; wait $PID 2>/dev/null || true
grep -E '"level":"(ERROR|WARN)"' "$LOG" | grep -v "QUIT command" | head -5 || true
