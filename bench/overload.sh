#!/usr/bin/env bash
# Overload: the users scenario at each USERS against a release `boardroom serve` (every service
# in one process, PostgreSQL and Redis, the mock model at 200 ms to the first token and 50
# tokens/s), with admission by queueing delay on (the default: the servers' own queues, the
# database pools' and the turn gate's scheduling delay) and off (`server.admission_target_ms`,
# `database.admission_target_ms` and `conversation.turn_admission_target_ms` 0: only the fixed
# concurrency limits and the pool's acquire timeout), each on a fresh database.
# After each run the four admin ports are scraped, and per run it prints, server-side: the calls
# admitted and the p99 of the non-streaming ones, the share refused (UNAVAILABLE), the time to
# refuse a call (p50/p99, from its arrival); and from the users: errors after retries, retried
# attempts, the non-LLM steps' worst p99 (retries included), the suite's CPU.
# Usage: bench/overload.sh USERS [USERS ...]   (DURATION=60s THINK=20s RAMP=20s MODES='on off';
#        OVERLOAD_BIN: a built binary to run, suite and generator, instead of building this tree's)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60s}
THINK=${THINK:-20s}
export RAMP=${RAMP:-20s}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
REDIS=${BENCH_REDIS:-redis://127.0.0.1:6379}
BIN=${OVERLOAD_BIN:-target/release/boardroom}
[ -n "${OVERLOAD_BIN:-}" ] || cargo build --release --bin boardroom >/dev/null 2>&1
mkdir -p bench/out
BENCH_LOG=$(mktemp)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -f "$BENCH_LOG"' EXIT
source bench/lib.sh

# MODES: on (the defaults), starts, calls, server, off (see `mode_settings` in bench/lib.sh).
MODES=${MODES:-on off}
for users in "$@"; do
  for mode in $MODES; do
    read -ra extra <<<"$(mode_settings "$mode")"
    SCRAPE_TO="bench/out/overload-$users-$mode.prom" \
      users_run "bench/out/overload-$users-$mode.json" "$BIN" "$BIN" "$users" "$DURATION" "$THINK" "${extra[@]}"
  done
done
python3 bench/overload_report.py "$@"
