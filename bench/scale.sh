#!/usr/bin/env bash
# Scale-out under faults: two instances of every service, on 127.0.0.1 and 127.0.0.2 (each
# service in its own process), on a Redis Cluster (3 primaries, 3 replicas) and a PostgreSQL
# primary with a streaming replica, all started here on free ports (the machine's own servers
# are never touched). Every conversation instance is balanced over both session services and
# both gateways; the users scenario is balanced over both instances by the services' own
# client and follows the contract's retries. One fault FAULT_AT seconds into the run:
#   none          the baseline of the same setup
#   redis         a Redis primary SIGKILLed (its replica takes over)
#   session | cache | llm-gateway | conversation
#                 SIGKILL (no drain) of that service's instance on 127.0.0.2
#   replica-stop  the PostgreSQL replica stopped (immediate shutdown)
#   replica-lag   the replica's replay delayed 2 s (recovery_min_apply_delay): past the 1 s
#                 bound, so skipped
#   replica-behind  delayed 500 ms: within the bound, so it serves the token-less reads while
#                 the users' reads with their own write's token must still see it
# Reported: failed calls (after retries), retried attempts, acknowledged writes that cannot be
# read back at the end (lost), the per-step table, and each process's CPU and RSS.
# Usage: bench/scale.sh FAULT [users, default 500] [duration, default 40s] [think, default 5s]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
FAULT=${1:?usage: bench/scale.sh none|redis|session|cache|llm-gateway|conversation|replica-stop|replica-lag|replica-behind [users] [duration] [think]}
USERS=${2:-500}
DURATION=${3:-40s}
THINK=${4:-5s}
RAMP=${RAMP:-5s}
FAULT_AT=${FAULT_AT:-15}
case $FAULT in none | redis | session | cache | llm-gateway | conversation | replica-stop | replica-lag | replica-behind) ;; *) echo "unknown fault $FAULT" >&2; exit 2 ;; esac

BIN=${BENCH_BOARDROOM:-target/release/boardroom}
[ -n "${BENCH_BOARDROOM:-}" ] || cargo build --release --bin boardroom >/dev/null 2>&1
free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "${1:-127.0.0.1}"; }
WORK=$(mktemp -d /tmp/boardroom-scale.XXXXXX)
chmod 755 "$WORK"
PIDS=()
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || PGBIN=$(dirname "$(command -v initdb)")
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for dir in "$WORK"/redis-*; do [ -f "$dir/pid" ] && kill -9 "$(cat "$dir/pid")" 2>/dev/null || true; done
  as_postgres "$PGBIN/pg_ctl" -D "$WORK/replica" -m immediate stop >/dev/null 2>&1 || true
  as_postgres "$PGBIN/pg_ctl" -D "$WORK/primary" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] && chown postgres "$WORK"

# PostgreSQL: a primary and a streaming replica of it.
PGPORT=$(free_port)
REPLICA_PORT=$(free_port)
as_postgres "$PGBIN/initdb" -D "$WORK/primary" -A trust -U postgres >/dev/null
pg_start() { # DIR PORT
  as_postgres "$PGBIN/pg_ctl" -D "$WORK/$1" -l "$WORK/$1.log" -w \
    -o "-p $2 -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=400" start >/dev/null
}
pg_start primary "$PGPORT"
as_postgres "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PGPORT" -U postgres -D "$WORK/replica" -R -X stream
pg_start replica "$REPLICA_PORT"

# Redis Cluster: six nodes, three primaries with a replica each.
RPORTS=()
for _ in 1 2 3 4 5 6; do
  port=$(free_port)
  while [ "$port" -gt 55535 ]; do port=$(free_port); done
  RPORTS+=("$port")
  mkdir -p "$WORK/redis-$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
    --dir "$WORK/redis-$port" --pidfile "$WORK/redis-$port/pid" --logfile "$WORK/redis-$port/log"
done
for port in "${RPORTS[@]}"; do
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${RPORTS[@]}") --cluster-replicas 1 --cluster-yes >/dev/null
until redis-cli -p "${RPORTS[0]}" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
until [ "$(for p in "${RPORTS[@]}"; do redis-cli -p "$p" info replication | grep -c master_link_status:up; done | awk '{s+=$1} END {print s}')" = 3 ]; do sleep 0.1; done
SEEDS=$(printf 'node=127.0.0.1:%s&' "${RPORTS[@]:1}")

export BOARDROOM_DATABASE__URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
export BOARDROOM_DATABASE__REPLICA_URLS="[\"postgres://postgres@127.0.0.1:$REPLICA_PORT/postgres\"]"
export BOARDROOM_REDIS__URL="redis-cluster://127.0.0.1:${RPORTS[0]}?${SEEDS%&}"
export BOARDROOM_TELEMETRY__LOG_LEVEL=warn
export BOARDROOM_SERVER__SHUTDOWN_DELAY_MS=2000
export BOARDROOM_CONVERSATION__TURN_LEASE_MS=${TURN_LEASE_MS:-1500}
export BOARDROOM_LLM__DEPLOYMENTS__MOCK__TTFT_MS=200
export BOARDROOM_LLM__DEPLOYMENTS__MOCK__TOKENS_PER_SECOND=50

# Every service twice: listen addresses per instance.
declare -A GRPC ADMIN
for ip in 127.0.0.1 127.0.0.2; do
  for service in session cache llm-gateway conversation; do
    GRPC[$service@$ip]=$ip:$(free_port "$ip")
    ADMIN[$service@$ip]=$ip:$(free_port "$ip")
  done
done
export BOARDROOM_CONVERSATION__SESSION_ADDRESSES="[\"http://${GRPC[session@127.0.0.1]}\",\"http://${GRPC[session@127.0.0.2]}\"]"
export BOARDROOM_CONVERSATION__LLM_ADDRESSES="[\"http://${GRPC[llm-gateway@127.0.0.1]}\",\"http://${GRPC[llm-gateway@127.0.0.2]}\"]"
$BIN migrate 2>"$WORK/migrate.log"
declare -A PID
WATCH=()
for ip in 127.0.0.1 127.0.0.2; do
  for service in session cache llm-gateway conversation; do
    prefix=$(echo "$service" | tr a-z- A-Z_ | sed 's/LLM_GATEWAY/LLM/')
    env "BOARDROOM_${prefix}__LISTEN__GRPC_ADDR=${GRPC[$service@$ip]}" \
        "BOARDROOM_${prefix}__LISTEN__ADMIN_ADDR=${ADMIN[$service@$ip]}" \
        BOARDROOM_LLM__OPENAI_API__ADDR="$ip:$(free_port "$ip")" \
        BOARDROOM_DATABASE__MIGRATE_ON_START=false \
        "$BIN" serve --service "$service" 2>"$WORK/$service@$ip.log" &
    PID[$service@$ip]=$!
    PIDS+=($!)
    WATCH+=(--pid "$service@$ip=$!")
  done
done
for key in "${!ADMIN[@]}"; do
  for _ in $(seq 300); do curl -sf "${ADMIN[$key]}/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "${ADMIN[$key]}/readyz" >/dev/null || { echo "$key is not ready" >&2; tail -n 5 "$WORK/$key.log" >&2; exit 1; }
done

# CPU of every server, before and after the run (bench/proc_cpu.py: PostgreSQL's exited
# backends included), for the cost of a user-round per component.
SERVERS=("pg-primary=$(head -1 "$WORK/primary/postmaster.pid")" "pg-replica=$(head -1 "$WORK/replica/postmaster.pid")")
for port in "${RPORTS[@]}"; do SERVERS+=("redis:$port=$(cat "$WORK/redis-$port/pid")"); done
for key in "${!PID[@]}"; do SERVERS+=("$key=${PID[$key]}"); done
python3 bench/proc_cpu.py "${SERVERS[@]}" >"$WORK/cpu-before"

mkdir -p bench/out
REPORT=bench/out/scale-$FAULT.json
$BIN load "${GRPC[session@127.0.0.1]},${GRPC[session@127.0.0.2]}" --scenario users --users "$USERS" -z "$DURATION" \
  --think "$THINK" --ramp "$RAMP" --conversation-host "${GRPC[conversation@127.0.0.1]},${GRPC[conversation@127.0.0.2]}" \
  "${WATCH[@]}" --html "bench/out/scale-$FAULT.html" >"$REPORT" &
LOAD=$!
START=$(date +%s.%N)
EVENTS=()
sleep "$FAULT_AT"
case $FAULT in
  redis)
    victim=$(redis-cli -p "${RPORTS[0]}" cluster nodes | awk '$3 ~ /master/ && $9 != "" {split($2, a, "[:@]"); print a[2]; exit}')
    kill -9 "$(cat "$WORK/redis-$victim/pid")"
    EVENTS+=("$(at) s: Redis primary :$victim killed (SIGKILL)")
    other=$(printf '%s\n' "${RPORTS[@]}" | grep -v "^$victim$" | head -1)
    # Promoted: the victim is marked failed and the cluster covers every slot again.
    until redis-cli -p "$other" cluster nodes | grep "127.0.0.1:$victim@" | grep -q ',fail ' \
      && redis-cli -p "$other" cluster info | grep -q cluster_state:ok; do sleep 0.05; done
    EVENTS+=("$(at) s: its replica promoted (cluster_state:ok)")
    ;;
  session | cache | llm-gateway | conversation)
    kill -9 "${PID[$FAULT@127.0.0.2]}"
    EVENTS+=("$(at) s: SIGKILL to $FAULT@127.0.0.2")
    ;;
  replica-stop)
    as_postgres "$PGBIN/pg_ctl" -D "$WORK/replica" -m immediate stop >/dev/null
    EVENTS+=("$(at) s: PostgreSQL replica stopped")
    ;;
  replica-lag | replica-behind)
    delay=$([ "$FAULT" = replica-lag ] && echo 2s || echo 500ms)
    echo "recovery_min_apply_delay = '$delay'" >>"$WORK/replica/postgresql.auto.conf"
    as_postgres "$PGBIN/pg_ctl" -D "$WORK/replica" reload >/dev/null
    EVENTS+=("$(at) s: PostgreSQL replica replaying $delay late")
    ;;
esac
wait "$LOAD"
python3 bench/proc_cpu.py "${SERVERS[@]}" >"$WORK/cpu-after"
printf '%s\n' "${EVENTS[@]}"
python3 bench/fault_report.py "$REPORT"
python3 - "$REPORT" "$WORK/cpu-before" "$WORK/cpu-after" <<'PY'
import json, math, sys
r = json.load(open(sys.argv[1]))
rounds = r["steps"]["RunTurn"]["count"]
read = lambda path: {k: float(v) for k, v in (line.split() for line in open(path))}
before, after = read(sys.argv[2]), read(sys.argv[3])
used = {k: after[k] - before[k] for k in before if not math.isnan(after.get(k, math.nan))}
groups = {}
for name, seconds in used.items():
    group = name.split(":")[0].split("@")[0]
    groups[group] = groups.get(group, 0.0) + seconds
print(f"CPU per user-round ({rounds} rounds), ms: " + ", ".join(
    f"{g} {1000 * s / rounds:.2f}" for g, s in sorted(groups.items())))
suite = sum(s for g, s in groups.items() if not g.startswith(("pg-", "redis")))
print(f"the four services: {1000 * suite / rounds:.2f} ms; PostgreSQL primary {1000 * groups.get('pg-primary', 0) / rounds:.2f} ms")
PY
for key in $(printf '%s\n' "${!ADMIN[@]}" | sort); do
  metrics=$(curl -s --max-time 2 "${ADMIN[$key]}/metrics" || true)
  [ -n "$metrics" ] || { echo "$key: down"; continue; }
  l2=$(echo "$metrics" | grep -E '^cache_l2_(up|tracked_nodes)' | sed 's/{cache="\([^"]*\)"}/[\1]/' | awk '{printf "%s=%s ", $1, $2}' || true)
  lag=$(echo "$metrics" | grep '^db_replica_' | sed 's/{replica="[^"]*"}//' | awk '{printf "%s=%s ", $1, $2}' || true)
  echo "$key: ${l2:-no caches} ${lag}"
done
