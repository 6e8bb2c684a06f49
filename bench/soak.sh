#!/usr/bin/env bash
# A soak: the users scenario against a release `boardroom serve` (the whole suite in one process,
# a fresh database `boardroom_soak`, Redis, the mock model at 200 ms to the first token and 50
# tokens/s) for a long run. Every 10 s it samples the suite's RSS, open file descriptors and OS
# threads, PostgreSQL's connections to the database, and from the four admin ports every cache's
# L1 bytes and entries, every in-process per-thread or per-turn structure (`*_resident_entries`,
# `*_resident_bytes`) and the recent windows' hits and misses. Then `bench/soak_report.py` prints
# each series' slope after the warm-up (least squares) and writes an HTML report with every series
# over time; the load tool's own HTML report (latency, throughput, RSS and CPU over time) too.
# Usage: bench/soak.sh [users, default 1000] [duration, default 30m] [think, default 20s]
#        [ramp, default 20s] [warm-up seconds left out of the slopes, default 300]
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-1000}
DURATION=${2:-30m}
THINK=${3:-20s}
RAMP=${4:-20s}
WARMUP=${5:-300}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
REDIS=${BENCH_REDIS:-redis://127.0.0.1:6379}
BIN=${SOAK_BIN:-target/release/boardroom}
[ -n "${SOAK_BIN:-}" ] || cargo build --release --bin boardroom >/dev/null 2>&1
psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS boardroom_soak" -c "CREATE DATABASE boardroom_soak"
mkdir -p bench/out
NAME="soak-$USERS-$DURATION"
SAMPLES="bench/out/$NAME.tsv"
LOG=$(mktemp)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -f "$LOG"' EXIT
env BOARDROOM_DATABASE__URL="$PG/boardroom_soak" BOARDROOM_REDIS__URL="$REDIS" BOARDROOM_TELEMETRY__LOG_LEVEL=warn \
    BOARDROOM_LLM__DEPLOYMENTS__MOCK__TTFT_MS=200 BOARDROOM_LLM__DEPLOYMENTS__MOCK__TOKENS_PER_SECOND=50 \
    "$BIN" serve 2>"$LOG" &
PID=$!
for _ in $(seq 300); do curl -sf 127.0.0.1:9092/readyz >/dev/null && break; sleep 0.1; done

# One line per sample: seconds since the load started, then NAME=VALUE fields.
sample() {
  local t=$1
  local rss fds threads conns
  rss=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$PID/status")
  fds=$(find "/proc/$PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$PID/status")
  conns=$(psql -At "$PG/postgres" -c "SELECT count(*) FROM pg_stat_activity WHERE datname = 'boardroom_soak'")
  printf '%s\trss_bytes=%s\topen_fds=%s\tos_threads=%s\tdb_connections=%s' "$t" "$rss" "$fds" "$threads" "$conns"
  for port in 9091 9092 9093 9094; do curl -sf "127.0.0.1:$port/metrics" || true; done \
    | awk '/^(cache_l1_bytes|cache_l1_entries|[a-z_]+_resident_(entries|bytes)|conversation_recent_window_total)[{ ]/ {
             name = $1; sub(/\{/, ":", name); gsub(/[}"]/, "", name); gsub(/,/, ";", name); seen[name] = $2
           }
           END { for (n in seen) printf "\t%s=%s", n, seen[n] }'
  printf '\n'
}

START=$(date +%s)
"$BIN" load 127.0.0.1:50051 --scenario users --users "$USERS" -z "$DURATION" --think "$THINK" --ramp "$RAMP" \
  --pid "suite=$PID" --html "bench/out/$NAME-load.html" >"bench/out/$NAME-load.json" &
LOAD=$!
: >"$SAMPLES"
while kill -0 "$LOAD" 2>/dev/null; do
  sample $(( $(date +%s) - START )) >>"$SAMPLES"
  # Sleep in short steps so the end of the load is noticed within a second.
  for _ in $(seq 10); do kill -0 "$LOAD" 2>/dev/null || break; sleep 1; done
done
wait "$LOAD"
SECONDS_TIMED=$(python3 -c "import sys; d = sys.argv[1]; print(float(d[:-1]) * {'s': 1, 'm': 60, 'h': 3600}[d[-1]])" "$DURATION")
python3 bench/soak_report.py "$SAMPLES" "bench/out/$NAME-load.json" "$WARMUP" "bench/out/$NAME.html" "$SECONDS_TIMED"
kill "$PID"; wait "$PID" 2>/dev/null || true
grep -E '"level":"(ERROR|WARN)"' "$LOG" | grep -v "QUIT command" | head -5 || true
