#!/usr/bin/env bash
# The session service under load, side by side with its echo baseline (the same server stack
# answering GetSession with a constant, no database or cache), in one run:
#   GetSession (warm cache) and ListSessions at 64 and 1000 concurrent streams; RPS, p99 and
#   the ratio to the echo baseline; the peak RSS of the session service.
# Needs the database seeded by `cargo bench -p boardroom-session --bench list_queries`.
# Usage: bench/session-load.sh [duration, default 10s]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
DB_URL="$PG/boardroom_bench"
cargo build --release --bin boardroom >/dev/null 2>&1
BIN=target/release/boardroom
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

BOARDROOM_DATABASE__URL=$DB_URL BOARDROOM_DATABASE__MIGRATE_ON_START=false BOARDROOM_DATABASE__MAX_CONNECTIONS=16 \
BOARDROOM_TELEMETRY__LOG_LEVEL=warn BOARDROOM_SERVER__MAX_PENDING=100000 BOARDROOM_SESSION__CACHE__TTL_MS=600000 \
  $BIN serve --service session 2>"$OUT/session.log" &
SESSION_PID=$!
BOARDROOM_SESSION__LISTEN__GRPC_ADDR=127.0.0.1:50061 BOARDROOM_SESSION__LISTEN__ADMIN_ADDR=127.0.0.1:9101 \
BOARDROOM_TELEMETRY__LOG_LEVEL=warn BOARDROOM_SERVER__MAX_PENDING=100000 \
  $BIN serve --service session-echo 2>"$OUT/echo.log" &
for port in 9091 9101; do
  for _ in $(seq 100); do curl -sf "127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
done

# 1000 real session ids and 1000 users, as round-robin request data.
psql -At "$DB_URL" -c "SELECT json_agg(json_build_object('id', id::text)) FROM (SELECT id FROM sessions ORDER BY random() LIMIT 1000) s" >"$OUT/ids.json"
psql -At "$DB_URL" -c "SELECT json_agg(json_build_object('user_id', u, 'page_size', 20)) FROM (SELECT 'user-' || g AS u FROM generate_series(1, 1000) g) s" >"$OUT/users.json"

load() { # host call data-file concurrency
  $BIN load "$1" --call "$2" -D "$3" -c "$4" -z "$DURATION" --connections 4 --cpus 1 --skipFirst 2000 --format json
}
summary() { # name json
  python3 - "$1" "$2" <<'PY'
import json, sys
name, r = sys.argv[1], json.load(open(sys.argv[2]))
p = {d["percentage"]: d["latency"] / 1e6 for d in r["latencyDistribution"]}
codes = ",".join(f"{k}={v}" for k, v in r["statusCodeDistribution"].items())
print(f"| {name} | {r['rps']:.0f} | {p[50.0]:.2f} | {p[99.0]:.2f} | {codes} |")
PY
}
GET=boardroom.session.v1.SessionService/GetSession
LIST=boardroom.session.v1.SessionService/ListSessions

# Warm the Get cache with every id (the TTL is raised above so that the whole run measures
# the warm path; expiry under load is the refresh-ahead work of the tiered cache).
$BIN load 127.0.0.1:50051 --call $GET -D "$OUT/ids.json" -c 64 -n 5000 --format json >/dev/null

echo "| run | RPS | p50 ms | p99 ms | codes |"
echo "|---|---|---|---|---|"
for c in 64 1000; do
  load 127.0.0.1:50061 $GET "$OUT/ids.json" $c >"$OUT/echo-$c.json"
  summary "echo GetSession c=$c" "$OUT/echo-$c.json"
  load 127.0.0.1:50051 $GET "$OUT/ids.json" $c >"$OUT/get-$c.json"
  summary "session GetSession (warm) c=$c" "$OUT/get-$c.json"
  load 127.0.0.1:50051 $LIST "$OUT/users.json" $c >"$OUT/list-$c.json"
  summary "session ListSessions (page 20) c=$c" "$OUT/list-$c.json"
  python3 - "$OUT/get-$c.json" "$OUT/list-$c.json" "$OUT/echo-$c.json" $c <<'PY'
import json, sys
get, lst, echo = (json.load(open(f))["rps"] for f in sys.argv[1:4])
print(f"| ratio c={sys.argv[4]} | GetSession/echo {get/echo:.2f} | ListSessions/echo {lst/echo:.2f} | | |")
PY
done
# Open loop: 1000 streams held open, paced to a fixed rate; latency counts from each call's
# scheduled time, so queueing is charged.
for rate in 10000 20000; do
  $BIN load 127.0.0.1:50061 --call $GET -D "$OUT/ids.json" -c 1000 -z "$DURATION" --rps $rate --connections 4 --cpus 1 --skipFirst 2000 --format json >"$OUT/echo-open.json"
  summary "echo GetSession c=1000 @ $rate/s" "$OUT/echo-open.json"
  $BIN load 127.0.0.1:50051 --call $GET -D "$OUT/ids.json" -c 1000 -z "$DURATION" --rps $rate --connections 4 --cpus 1 --skipFirst 2000 --format json >"$OUT/get-open.json"
  summary "session GetSession (warm) c=1000 @ $rate/s" "$OUT/get-open.json"
done
$BIN load 127.0.0.1:50051 --call $LIST -D "$OUT/users.json" -c 1000 -z "$DURATION" --rps 2000 --connections 4 --cpus 1 --skipFirst 2000 --format json >"$OUT/list-open.json"
summary "session ListSessions c=1000 @ 2000/s" "$OUT/list-open.json"
echo
grep -E "VmHWM|VmRSS" /proc/$SESSION_PID/status | sed 's/^/session service /'
