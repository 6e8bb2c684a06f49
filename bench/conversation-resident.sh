#!/usr/bin/env bash
# 1000 threads with 100-turn histories held by one `boardroom serve` (the whole suite, on
# PostgreSQL and Redis), then one turn on each, 50 streams at once (mock model: 200 ms to the
# first token, 50 tokens/s): the suite's peak RSS and the latency of every streamed event.
# The database `boardroom_resident` is created and seeded on first use.
# Usage: bench/conversation-resident.sh [threads, default 1000] [concurrency, default 50]
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-1000}
CONCURRENCY=${2:-50}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
DB_URL="$PG/boardroom_resident"
REDIS=${BENCH_REDIS:-redis://127.0.0.1:6379}
cargo build --release --bin boardroom >/dev/null 2>&1
cargo bench -p boardroom-conversation --bench resident --no-run >/dev/null 2>&1
BIN=target/release/boardroom
psql -At "$PG/postgres" -c "SELECT 1 FROM pg_database WHERE datname = 'boardroom_resident'" | grep -q 1 \
  || psql -q "$PG/postgres" -c "CREATE DATABASE boardroom_resident"
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
env BOARDROOM_DATABASE__URL="$DB_URL" BOARDROOM_REDIS__URL="$REDIS" BOARDROOM_TELEMETRY__LOG_LEVEL=warn \
    BOARDROOM_LLM__DEPLOYMENTS__MOCK__TTFT_MS=200 \
    BOARDROOM_LLM__DEPLOYMENTS__MOCK__TOKENS_PER_SECOND=50 \
    $BIN serve 2>"$OUT/server.log" &
PID=$!
for _ in $(seq 300); do curl -sf 127.0.0.1:9092/readyz >/dev/null && break; sleep 0.1; done
RESIDENT_DATABASE_URL="$DB_URL" RESIDENT_CONVERSATION=127.0.0.1:50052 RESIDENT_PID=$PID \
RESIDENT_THREADS=$THREADS RESIDENT_CONCURRENCY=$CONCURRENCY \
  cargo bench -p boardroom-conversation --bench resident 2>/dev/null | grep -v "^$"
kill $PID; wait $PID 2>/dev/null || true
grep -iE "error|panic" "$OUT/server.log" | head -5 || true
