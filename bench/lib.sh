# Sourced by the benches that run the users scenario against a release `boardroom serve`
# (every service in one process, PostgreSQL and Redis, the mock model at 200 ms to the first
# token and 50 tokens/s). Needs PG, REDIS and BENCH_LOG set.

# users_run OUT SERVE_BIN LOAD_BIN USERS DURATION THINK [NAME=VALUE ...]: a fresh database,
# `SERVE_BIN serve` with the extra environment, the scenario from LOAD_BIN with the suite's
# RSS/CPU sampled (ramp RAMP, default 5s; LOAD_ARGS: more of its flags), its JSON report to
# OUT, then the suite stopped.
users_run() {
  local out=$1 bin=$2 load=$3 users=$4 duration=$5 think=$6 query= kv
  shift 6
  # DB_QUERY=?... among the settings: appended to the database URL (e.g. ?sslmode=disable).
  for kv in "$@"; do case $kv in DB_QUERY=*) query=${kv#DB_QUERY=} ;; esac; done
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS boardroom_bench" -c "CREATE DATABASE boardroom_bench" 2>/dev/null
  # The side's own settings last, so that they override these defaults.
  env BOARDROOM_DATABASE__URL="$PG/boardroom_bench$query" BOARDROOM_REDIS__URL="$REDIS" \
      BOARDROOM_TELEMETRY__LOG_LEVEL=warn \
      BOARDROOM_LLM__DEPLOYMENTS__MOCK__TTFT_MS=200 BOARDROOM_LLM__DEPLOYMENTS__MOCK__TOKENS_PER_SECOND=50 \
      "$@" "$bin" serve 2>"$BENCH_LOG" &
  local pid=$!
  for _ in $(seq 300); do curl -sf 127.0.0.1:9092/readyz >/dev/null && break; sleep 0.1; done
  # shellcheck disable=SC2086  # LOAD_ARGS: more flags for the generator (bench/surge.sh)
  "$load" load 127.0.0.1:50051 --scenario users --users "$users" -z "$duration" --think "$think" \
    --ramp "${RAMP:-5s}" --pid "suite=$pid" ${LOAD_ARGS:-} >"$out"
  # SCRAPE_TO=FILE keeps the four admin ports' metrics as the run left them.
  if [ -n "${SCRAPE_TO:-}" ]; then
    for port in 9091 9092 9093 9094; do curl -sf "127.0.0.1:$port/metrics"; done >"$SCRAPE_TO"
  fi
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

# The fault benches' clock: set START=$(date +%s.%N) when the load starts; `at` prints the
# seconds since, for the events' timestamps.
at() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.1f}')" "$(date +%s.%N)" "$START"; }

# mode_settings MODE: the settings of an overload bench's mode (bench/overload.sh,
# bench/surge.sh): on (the defaults: the servers' queues, the pools and the turn gate), starts
# (and the start gate, off by default, at 3 ms), calls (the servers' queues and the pools: the
# gates on the scheduling delay off), server (the servers' own queues only), off (none).
mode_settings() {
  local turns=BOARDROOM_CONVERSATION__TURN_ADMISSION_TARGET_MS=0
  case $1 in
    starts) echo "BOARDROOM_SESSION__START_ADMISSION_TARGET_MS=3" ;;
    calls) echo "$turns" ;;
    server) echo "$turns BOARDROOM_DATABASE__ADMISSION_TARGET_MS=0" ;;
    off) echo "$turns BOARDROOM_SERVER__ADMISSION_TARGET_MS=0 BOARDROOM_DATABASE__ADMISSION_TARGET_MS=0" ;;
  esac
}
