#!/usr/bin/env bash
# Two builds of `boardroom` against each other in one run: the users scenario against each
# binary's `serve` (every service in one process, PostgreSQL and Redis, the mock model at 200 ms
# to the first token and 50 tokens/s), alternating A, B, A, B, each on a fresh database. Prints
# per run the suite's CPU per user-round, peak RSS and the p99s, and B's ratios to A.
# Usage: bench/compare.sh A_BIN B_BIN [users, default 200] [duration, default 40s] [think, default 3s]
# With A_ENV or B_ENV ("NAME=VALUE ..."), that side's suite runs with those settings: e.g.
# A_ENV=BOARDROOM_CONVERSATION__MEMORY__ENABLED=false bench/compare.sh BIN BIN (the memory's cost).
# DB_QUERY=?... among a side's settings is appended to its database URL (B_ENV="DB_QUERY=?sslmode=disable").
# With COST_SECS=N, bench/cost.sh measures N seconds of each run (from COST_AFTER, default 15 s,
# after the start): the CPU per round of PostgreSQL and Redis as well as the suite's. RUNS=N
# alternates N runs of each (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1
B=$2
USERS=${3:-200}
DURATION=${4:-40s}
THINK=${5:-3s}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
REDIS=${BENCH_REDIS:-redis://127.0.0.1:6379}
mkdir -p bench/out
BENCH_LOG=$(mktemp)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -f "$BENCH_LOG"' EXIT
source bench/lib.sh

run() { # label binary index [NAME=VALUE ...]; the same generator (A's) for both
  local label=$1 bin=$2 index=$3 cost=
  shift 3
  rm -f "bench/out/compare-$label-$index-cost.json"
  if [ -n "${COST_SECS:-}" ]; then
    # The CPU of PostgreSQL and Redis per round too, over a window after the ramp.
    (sleep "${COST_AFTER:-15}" && PERF=0 BENCH_DB_URL="$PG/boardroom_bench" \
      bench/cost.sh "$COST_SECS" "bench/out/compare-$label-$index-cost" >/dev/null) &
    cost=$!
  fi
  users_run "bench/out/compare-$label-$index.json" "$bin" "$A" "$USERS" "$DURATION" "$THINK" "$@"
  if [ -n "$cost" ]; then wait "$cost" || true; fi
}

# A_ENV / B_ENV: settings for one side only (the same binary twice compares a setting).
# shellcheck disable=SC2086
for index in $(seq "${RUNS:-2}"); do
  run A "$A" "$index" ${A_ENV:-}
  run B "$B" "$index" ${B_ENV:-}
done

python3 - "$USERS" "${RUNS:-2}" <<'PY'
import json, sys
runs = range(1, int(sys.argv[2]) + 1)
def load(label, i):
    r = json.load(open(f"bench/out/compare-{label}-{i}.json"))
    rounds = r["steps"]["RunTurn"]["count"]
    suite = r["processes"]["suite"]
    return dict(errors=r["errors"], rounds=rounds,
                cpu_ms=suite["mean_cpu_percent"] / 100 * r["duration_s"] / max(rounds, 1) * 1e3,
                turn_p99=r["steps"]["RunTurn"]["p99_ms"],
                non_llm_p99=max(s["p99_ms"] for n, s in r["steps"].items() if n != "RunTurn"),
                rss=suite["peak_rss_mb"])
rows = {(l, i): load(l, i) for l in "AB" for i in runs}
print(f"{sys.argv[1]} users")
print("| run | errors | user-rounds | CPU ms / round | RunTurn p99 ms | worst non-LLM p99 ms | peak RSS MB |")
print("|---|---|---|---|---|---|---|")
for (l, i), r in rows.items():
    print(f"| {l} #{i} | {r['errors']} | {r['rounds']} | {r['cpu_ms']:.2f} | {r['turn_p99']:.0f} | {r['non_llm_p99']:.2f} | {r['rss']:.1f} |")
import os
costs = {k: json.load(open(p)) for k in rows
         if os.path.exists(p := f"bench/out/compare-{k[0]}-{k[1]}-cost.json")}
if costs:
    print("\nCPU per round over the window of bench/cost.sh (ms):\n")
    print("| run | suite | PostgreSQL | Redis | suite + PostgreSQL + Redis | generator |")
    print("|---|---|---|---|---|---|")
    for (l, i), c in costs.items():
        c["all_ms"] = c["suite_ms"] + c["postgres_ms"] + c["redis_ms"]
        print(f"| {l} #{i} | {c['suite_ms']:.2f} | {c['postgres_ms']:.2f} | {c['redis_ms']:.2f} | {c['all_ms']:.2f} | {c['load_ms']:.2f} |")
    if len(costs) == len(rows):
        cm = lambda l, k: sum(costs[(l, i)][k] for i in runs) / len(runs)
        print("B / A: " + ", ".join(f"{k} {cm('B', k) / cm('A', k):.2f}" for k in ["suite_ms", "postgres_ms", "redis_ms", "all_ms"]))
    print()
mean = lambda l, k: sum(rows[(l, i)][k] for i in runs) / len(runs)
print("B / A: " + ", ".join(f"{label} {mean('B', k) / mean('A', k):.2f}" for k, label in
      [("cpu_ms", "CPU per round"), ("non_llm_p99", "worst non-LLM p99"), ("turn_p99", "RunTurn p99"), ("rss", "peak RSS")]))
PY
