#!/usr/bin/env bash
# A surge and its end: BASE users throughout (what the machine holds) and SURGE more from
# SURGE_AT for SURGE_FOR, against a release `boardroom serve` (every service in one process,
# PostgreSQL and Redis, the mock model at 200 ms to the first token and 50 tokens/s), each
# mode on a fresh database. Modes as bench/overload.sh's (bench/lib.sh, `mode_settings`):
# `on` (the defaults: the servers' queues, the pools and the turn gate), `starts` (and the
# start gate), `calls` (the turn gate off: the servers' queues and the pools only). Per mode and phase
# (before the surge, during it, after it) it prints the users' view: calls completed, the worst
# non-LLM p99 and RunTurn's (retries included), attempts retried, calls failed after their
# retries and calls that succeeded after retries; each attempt on its own (the admitted ones'
# p99, the share refused, the time to a refusal); and the servers' refusals over the run.
# Usage: bench/surge.sh [base, default 2000] [surge, default 6000]
#        (DURATION=140s THINK=20s RAMP=20s SURGE_AT=40s SURGE_FOR=40s MODES='on calls';
#        SURGE_BIN: a built binary instead of building this tree's)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-2000}
SURGE=${2:-6000}
DURATION=${DURATION:-140s}
THINK=${THINK:-20s}
export RAMP=${RAMP:-20s}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
REDIS=${BENCH_REDIS:-redis://127.0.0.1:6379}
BIN=${SURGE_BIN:-target/release/boardroom}
[ -n "${SURGE_BIN:-}" ] || cargo build --release --bin boardroom >/dev/null 2>&1
mkdir -p bench/out
BENCH_LOG=$(mktemp)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -f "$BENCH_LOG"' EXIT
source bench/lib.sh

export LOAD_ARGS="--surge-users $SURGE --surge-at ${SURGE_AT:-40s} --surge-for ${SURGE_FOR:-40s}"
MODES=${MODES:-on calls}
for mode in $MODES; do
  read -ra extra <<<"$(mode_settings "$mode")"
  # The machine's CPU by second, by process, while the run goes on.
  python3 bench/cpu_by_second.py "bench/out/surge-$BASE-$SURGE-$mode.cpu.json" &
  SCRAPE_TO="bench/out/surge-$BASE-$SURGE-$mode.prom" \
    users_run "bench/out/surge-$BASE-$SURGE-$mode.json" "$BIN" "$BIN" "$BASE" "$DURATION" "$THINK" "${extra[@]}"
  wait
done
python3 bench/surge_report.py "$BASE" "$SURGE" $MODES
