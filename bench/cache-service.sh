#!/usr/bin/env bash
# The cache service against Redis itself, in one run on the same machine: Get and Set of
# 256-byte values over 1000 keys at 64 concurrent clients, through `boardroom load` to the
# cache service (Redis as L2) and through `redis-benchmark` to Redis; RPS, p50, p99, and the
# ratio of the service's RPS to Redis's. Get runs twice: L1 warm (the service's hot path),
# and with L1 off (1-byte L1: every Get is a Redis round trip behind the gRPC hop). The echo
# baseline (the same gRPC server stack answering with a constant) shows what gRPC itself costs.
# Usage: bench/cache-service.sh [duration, default 10s]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
REDIS_HOST=${BENCH_REDIS_HOST:-127.0.0.1}
REDIS_PORT=${BENCH_REDIS_PORT:-6379}
cargo build --release --bin boardroom >/dev/null 2>&1
BIN=target/release/boardroom
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
NS="bench$$"
python3 - "$OUT" "$NS" <<'PY'
import base64, json, sys
out, ns = sys.argv[1], sys.argv[2]
value = base64.b64encode(b"v" * 256).decode()
json.dump([{"namespace": ns, "key": f"k{i}"} for i in range(1000)], open(f"{out}/get.json", "w"))
json.dump([{"namespace": ns, "entry": {"key": f"k{i}", "value": value, "ttl": "600s"}} for i in range(1000)],
          open(f"{out}/set.json", "w"))
PY

service() { # extra environment assignments
  env BOARDROOM_REDIS__URL="redis://$REDIS_HOST:$REDIS_PORT" BOARDROOM_REDIS__POOL_SIZE=8 \
      BOARDROOM_TELEMETRY__LOG_LEVEL=warn BOARDROOM_SERVER__MAX_PENDING=100000 "$@" \
      $BIN serve --service cache 2>"$OUT/server.log" &
  SERVICE_PID=$!
  for _ in $(seq 100); do curl -sf 127.0.0.1:9093/readyz >/dev/null && break; sleep 0.1; done
}

load() { # name, method, data file[, host, full method]
  local name=$1 method=$2 data=$3 host=${4:-127.0.0.1:50053} call=${5:-boardroom.cache.v1.CacheService/$2}
  $BIN load "$host" --call "$call" -D "$data" \
    -c 64 --connections 4 -z "$DURATION" --cpus 1 --skipFirst 2000 --format json >"$OUT/r.json"
  python3 - "$name" "$OUT/r.json" >>"$OUT/ours.txt" <<'PY'
import json, sys
name, r = sys.argv[1], json.load(open(sys.argv[2]))
p = {d["percentage"]: d["latency"] / 1e6 for d in r["latencyDistribution"]}
errors = sum(v for k, v in r.get("statusCodeDistribution", {}).items() if k != "OK")
print(f"{name}|{r['rps']:.0f}|{p[50.0]:.2f}|{p[99.0]:.2f}|{errors}")
PY
}

BOARDROOM_TELEMETRY__LOG_LEVEL=warn BOARDROOM_SERVER__MAX_PENDING=100000 $BIN serve --service session-echo 2>"$OUT/echo.log" &
ECHO_PID=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:9091/readyz >/dev/null && break; sleep 0.1; done
echo '[{"id":"0192f0c0-0000-7000-8000-000000000000"}]' >"$OUT/echo.json"
load "echo baseline (gRPC stack, constant answer)" Get "$OUT/echo.json" 127.0.0.1:50051 boardroom.session.v1.SessionService/GetSession
kill $ECHO_PID; wait $ECHO_PID 2>/dev/null || true

service
load "Set" Set "$OUT/set.json"
load "Get, L1 warm" Get "$OUT/get.json"
kill $SERVICE_PID; wait $SERVICE_PID 2>/dev/null || true
service BOARDROOM_CACHE__L1_MAX_BYTES=1
$BIN load 127.0.0.1:50053 --call boardroom.cache.v1.CacheService/Set -D "$OUT/set.json" -c 64 -n 5000 >/dev/null
load "Get, L1 off (Redis)" Get "$OUT/get.json"
kill $SERVICE_PID; wait $SERVICE_PID 2>/dev/null || true

SECONDS_N=${DURATION%s}
redis-benchmark -h "$REDIS_HOST" -p "$REDIS_PORT" -c 64 -n $((SECONDS_N * 60000)) -d 256 -r 1000 -t set,get --csv \
  >"$OUT/redis.csv"
python3 - "$OUT/ours.txt" "$OUT/redis.csv" <<'PY'
import csv, sys
ours = [line.strip().split("|") for line in open(sys.argv[1]) if line.strip()]
redis = {row["test"]: row for row in csv.DictReader(open(sys.argv[2]))}
print("| 64 clients, 256-byte values | RPS | p50 ms | p99 ms | errors | RPS / Redis's |")
print("|---|---|---|---|---|---|")
for name, rps, p50, p99, errors in ours:
    base = redis["SET" if name == "Set" else "GET"]
    label = name if name.startswith("echo") else f"cache service {name}"
    print(f"| {label} | {rps} | {p50} | {p99} | {errors} | {float(rps) / float(base['rps']):.2f} |")
for test in ("SET", "GET"):
    row = redis[test]
    print(f"| redis-benchmark {test} | {float(row['rps']):.0f} | {float(row['p50_latency_ms']):.2f} | {float(row['p99_latency_ms']):.2f} | 0 | 1.00 |")
PY
