#!/usr/bin/env bash
# GetSession through each cache level, in one run, on the seeded bench database (see
# bench/session-load.sh): L1 warm; L1 cold + L2 (Redis) warm (an L1 of 1 byte); no cache
# (every call reads PostgreSQL). 64 streams, 1000 random sessions, round-robin.
# Usage: bench/session-cache-levels.sh [duration, default 10s]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
DB_URL="$PG/boardroom_bench"
REDIS=${BENCH_REDIS:-redis://127.0.0.1:6379}
cargo build --release --bin boardroom >/dev/null 2>&1
BIN=target/release/boardroom
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
psql -At "$DB_URL" -c "SELECT json_agg(json_build_object('id', id::text)) FROM (SELECT id FROM sessions ORDER BY random() LIMIT 1000) s" >"$OUT/ids.json"
GET=boardroom.session.v1.SessionService/GetSession

run() { # name, then extra environment assignments
  local name=$1; shift
  env BOARDROOM_DATABASE__URL="$DB_URL" BOARDROOM_DATABASE__MIGRATE_ON_START=false BOARDROOM_TELEMETRY__LOG_LEVEL=warn \
      BOARDROOM_SESSION__CACHE__TTL_MS=600000 "$@" $BIN serve --service session 2>"$OUT/server.log" &
  local pid=$!
  for _ in $(seq 100); do curl -sf 127.0.0.1:9091/readyz >/dev/null && break; sleep 0.1; done
  $BIN load 127.0.0.1:50051 --call $GET -D "$OUT/ids.json" -c 64 -n 5000 >/dev/null   # warm what can be warmed
  $BIN load 127.0.0.1:50051 --call $GET -D "$OUT/ids.json" -c 64 -z "$DURATION" --connections 4 --cpus 1 --skipFirst 2000 --format json >"$OUT/r.json"
  python3 - "$name" "$OUT/r.json" <<'PY'
import json, sys
name, r = sys.argv[1], json.load(open(sys.argv[2]))
p = {d["percentage"]: d["latency"] / 1e6 for d in r["latencyDistribution"]}
print(f"| {name} | {r['rps']:.0f} | {p[50.0]:.2f} | {p[99.0]:.2f} |")
PY
  kill $pid; wait $pid 2>/dev/null || true
}

echo "| GetSession, 64 streams | RPS | p50 ms | p99 ms |"
echo "|---|---|---|---|"
run "L1 warm" BOARDROOM_REDIS__URL=$REDIS
run "L1 cold, L2 (Redis) warm" BOARDROOM_REDIS__URL=$REDIS BOARDROOM_SESSION__CACHE__MAX_BYTES=1
run "no cache (PostgreSQL)" BOARDROOM_SESSION__CACHE__ENABLED=false
