#!/usr/bin/env bash
# Faults under load: the users scenario (bench/users.sh) against a release `boardroom serve`
# on a PostgreSQL and a Redis of its own (started here on free ports, so the machine's are
# never touched), with one fault injected FAULT_AT seconds into the run:
#   none      no fault: the baseline of the same setup
#   redis     Redis killed (SIGKILL) and started again 5 s later
#   postgres  PostgreSQL restarted (fast shutdown: every connection cut, then started again,
#             after PG_DOWN seconds, default 0)
#   sigterm   a second conversation instance on 127.0.0.2 shares the calls (the generator
#             balances over both, following their health); it gets SIGTERM (the servers wait
#             SHUTDOWN_DELAY_MS, default 2000, between NOT_SERVING and closing the listener)
#   llm       the model is the fake OpenAI-compatible upstream, failing 20 % of its calls
#             (500/502/503 at random) for the whole run
# The users follow the contract's retry policy (UNAVAILABLE and a turn that failed without
# storing anything are retried with the same request id, within 15 s). Reported: calls that
# failed after it, attempts that were retried, the seconds they happened in, and the writes
# the users were told succeeded that cannot be read back at the end (lost writes).
# SPLIT=1 runs each service in its own process (each sampled for RSS/CPU on its own).
# Usage: bench/faults.sh FAULT [users, default 1000] [duration, default 60s] [think, default 20s]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
FAULT=${1:?usage: bench/faults.sh none|redis|postgres|sigterm|llm [users] [duration] [think]}
USERS=${2:-1000}
DURATION=${3:-60s}
THINK=${4:-20s}
RAMP=${RAMP:-10s}
FAULT_AT=${FAULT_AT:-25}
case $FAULT in none | redis | postgres | sigterm | llm) ;; *) echo "unknown fault $FAULT" >&2; exit 2 ;; esac

cargo build --release --bin boardroom >/dev/null 2>&1
cargo build --release -p boardroom-testkit --bin fake-openai >/dev/null 2>&1
BIN=target/release/boardroom
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d /tmp/boardroom-faults.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -f "$WORK/redis.pid" ] && kill "$(cat "$WORK/redis.pid")" 2>/dev/null || true
  as_postgres "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# PostgreSQL of its own (initdb refuses root: run it as postgres then).
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || PGBIN=$(dirname "$(command -v initdb)")
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
PGPORT=$(free_port)
as_postgres "$PGBIN/initdb" -D "$WORK/pg" -A trust -U postgres >/dev/null
pg_start() {
  as_postgres "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w \
    -o "-p $PGPORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
}
pg_start

# Redis of its own.
RPORT=$(free_port)
redis_start() {
  redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log" --dir "$WORK"
  for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && return; sleep 0.05; done
}
redis_start

export BOARDROOM_DATABASE__URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
export BOARDROOM_REDIS__URL="redis://127.0.0.1:$RPORT"
export BOARDROOM_TELEMETRY__LOG_LEVEL=warn
# NOT_SERVING 2 s before the listener closes: time for clients to hear it.
export BOARDROOM_SERVER__SHUTDOWN_DELAY_MS=${SHUTDOWN_DELAY_MS:-2000}
if [ "$FAULT" = llm ]; then
  FAKE_PORT=$(free_port)
  target/release/fake-openai "127.0.0.1:$FAKE_PORT" --error-percent 20 --latency-ms 200 \
    --tokens 24 --tokens-per-second 50 >/dev/null 2>"$WORK/fake.log" &
  PIDS+=($!)
  export BOARDROOM_LLM__DEPLOYMENTS__MOCK__PROVIDER=openai
  export BOARDROOM_LLM__DEPLOYMENTS__MOCK__MODEL=fake
  export BOARDROOM_LLM__DEPLOYMENTS__MOCK__BASE_URL="http://127.0.0.1:$FAKE_PORT/v1"
else
  export BOARDROOM_LLM__DEPLOYMENTS__MOCK__TTFT_MS=200
  export BOARDROOM_LLM__DEPLOYMENTS__MOCK__TOKENS_PER_SECOND=50
fi
WATCH=()
if [ -n "${SPLIT:-}" ]; then
  # One process per service (each sampled on its own), on their default addresses.
  $BIN migrate 2>"$WORK/migrate.log"
  for service in session cache llm-gateway conversation; do
    $BIN serve --service "$service" 2>"$WORK/$service.log" &
    PIDS+=($!)
    WATCH+=(--pid "$service=$!")
  done
else
  $BIN serve 2>"$WORK/suite.log" &
  PIDS+=($!)
  WATCH+=(--pid "suite=$!")
fi
for port in 9091 9092 9093 9094; do
  for _ in $(seq 300); do curl -sf "127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "127.0.0.1:$port/readyz" >/dev/null || { echo "the service on admin port $port is not ready" >&2; for f in "$WORK"/*.log; do echo "== $f"; grep -v "^ " "$f" | tail -n 5; done >&2; exit 1; }
done
CONVERSATION=127.0.0.1:50052
if [ "$FAULT" = sigterm ]; then
  BOARDROOM_CONVERSATION__LISTEN__GRPC_ADDR=127.0.0.2:50052 BOARDROOM_CONVERSATION__LISTEN__ADMIN_ADDR=127.0.0.2:9092 \
    $BIN serve --service conversation 2>"$WORK/second.log" &
  SECOND=$!
  PIDS+=("$SECOND")
  for _ in $(seq 300); do curl -sf 127.0.0.2:9092/readyz >/dev/null && break; sleep 0.1; done
  CONVERSATION=127.0.0.1:50052,127.0.0.2:50052
  WATCH+=(--pid "conversation-2=$SECOND")
fi

mkdir -p bench/out
REPORT=bench/out/faults-$FAULT.json
$BIN load 127.0.0.1:50051 --scenario users --users "$USERS" -z "$DURATION" --think "$THINK" --ramp "$RAMP" \
  --conversation-host "$CONVERSATION" "${WATCH[@]}" --html "bench/out/faults-$FAULT.html" >"$REPORT" &
LOAD=$!
START=$(date +%s.%N)
EVENTS=()
sleep "$FAULT_AT"
case $FAULT in
  redis)
    kill -9 "$(cat "$WORK/redis.pid")"
    EVENTS+=("$(at) s: Redis killed (SIGKILL)")
    sleep 5
    redis_start
    EVENTS+=("$(at) s: Redis started again (empty)")
    ;;
  postgres)
    EVENTS+=("$(at) s: PostgreSQL restart begins (fast shutdown)")
    as_postgres "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null
    EVENTS+=("$(at) s: PostgreSQL down")
    sleep "${PG_DOWN:-0}"
    pg_start
    EVENTS+=("$(at) s: PostgreSQL up")
    ;;
  sigterm)
    kill -TERM "$SECOND"
    EVENTS+=("$(at) s: SIGTERM to the second conversation instance")
    code=0
    wait "$SECOND" || code=$?
    EVENTS+=("$(at) s: it exited ($code)")
    ;;
esac
wait "$LOAD"
printf '%s\n' "${EVENTS[@]}"
python3 bench/fault_report.py "$REPORT"
# Recovered without a restart: every service ready, and every cache's Redis level back up.
for port in 9091 9092 9093 9094; do
  ready=$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$port/readyz" || true)
  l2=$(curl -s "127.0.0.1:$port/metrics" | grep '^cache_l2_up' | awk '{printf "%s=%s ", $1, $2}' | sed 's/cache_l2_up{cache=//g; s/}//g')
  echo "admin :$port readyz $ready; cache_l2_up: ${l2:-none}"
done
for log in "$WORK"/*.log; do
  case $(basename "$log") in pg.log | redis.log | fake.log | migrate.log) continue ;; esac
  echo "$(basename "$log"): $(grep -c '"level":"ERROR"' "$log" || true) errors, $(grep -c '"level":"WARN"' "$log" || true) warnings logged; by message:"
  grep -E '"level":"(ERROR|WARN)"' "$log" | grep -o '"message":"[^"]\{0,80\}' | sort | uniq -c | sort -rn | head -5 || true
done
