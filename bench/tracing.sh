#!/usr/bin/env bash
# What tracing costs: the users scenario against a release `boardroom serve` (every service in
# one process, PostgreSQL and Redis, the mock model at 200 ms to the first token and 50
# tokens/s), run in turn with no exporter (`off`, the default: trace-only spans are not even
# built), exporting every trace to a real OTLP/gRPC receiver (`all`: the test kit's
# otlp-receiver) and exporting one trace in ten (`tenth`: OTEL_TRACES_SAMPLER=traceidratio,
# ARG=0.1), each mode twice, alternating. Prints, per run and per mode, the suite's CPU per
# user-round and the p99 of RunTurn and of the non-LLM steps, and each mode's ratio to off.
# Usage: bench/tracing.sh [users, default 100] [duration, default 40s] [think, default 2s]
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-100}
DURATION=${2:-40s}
THINK=${3:-2s}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
REDIS=${BENCH_REDIS:-redis://127.0.0.1:6379}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
# BENCH_BOARDROOM and BENCH_OTLP_RECEIVER, when set, name builds to use instead.
BIN=${BENCH_BOARDROOM:-$CARGO_TARGET_DIR/release/boardroom}
RECEIVER=${BENCH_OTLP_RECEIVER:-$CARGO_TARGET_DIR/release/otlp-receiver}
[ -n "${BENCH_BOARDROOM:-}" ] || cargo build --release --bin boardroom >/dev/null 2>&1
[ -n "${BENCH_OTLP_RECEIVER:-}" ] || cargo build --release -p boardroom-testkit --bin otlp-receiver >/dev/null 2>&1
mkdir -p bench/out
BENCH_LOG=$(mktemp)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -f "$BENCH_LOG"' EXIT
source bench/lib.sh

run() { # mode index
  local mode=$1 index=$2 otlp=() receiver=
  if [ "$mode" != off ]; then
    "$RECEIVER" 127.0.0.1:4317 >"bench/out/tracing-$mode-$index.spans" 2>/dev/null &
    receiver=$!
    otlp=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317)
  fi
  if [ "$mode" = tenth ]; then
    otlp+=(OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.1)
  fi
  users_run "bench/out/tracing-$mode-$index.json" "$BIN" "$BIN" "$USERS" "$DURATION" "$THINK" "${otlp[@]}"
  if [ -n "$receiver" ]; then kill "$receiver"; wait "$receiver" 2>/dev/null || true; fi
}

for index in 1 2; do
  run off "$index"
  run all "$index"
  run tenth "$index"
done

python3 - "$USERS" <<'PY'
import json, sys
users = sys.argv[1]
def load(mode, i):
    r = json.load(open(f"bench/out/tracing-{mode}-{i}.json"))
    rounds = r["steps"]["RunTurn"]["count"]
    suite = r["processes"]["suite"]
    cpu_s = suite["mean_cpu_percent"] / 100 * r["duration_s"]
    non_llm = max(s["p99_ms"] for n, s in r["steps"].items() if n != "RunTurn")
    spans = None
    if mode != "off":
        spans = sum(json.loads(open(f"bench/out/tracing-{mode}-{i}.spans").read())["spans"].values())
    return dict(errors=r["errors"], rounds=rounds, cpu_ms=cpu_s / max(rounds, 1) * 1e3,
                turn_p99=r["steps"]["RunTurn"]["p99_ms"], non_llm_p99=non_llm,
                rss=suite["peak_rss_mb"], spans=spans)
rows = {(m, i): load(m, i) for m in ("off", "all", "tenth") for i in (1, 2)}
print(f"{users} users; CPU ms per user-round of the whole suite, p99s in ms")
print("| run | errors | user-rounds | CPU ms / round | RunTurn p99 | worst non-LLM p99 | peak RSS MB | spans received |")
print("|---|---|---|---|---|---|---|---|")
for (m, i), r in rows.items():
    print(f"| {m} #{i} | {r['errors']} | {r['rounds']} | {r['cpu_ms']:.2f} | {r['turn_p99']:.0f} | {r['non_llm_p99']:.2f} | {r['rss']:.1f} | {r['spans'] or ''} |")
mean = lambda m, k: sum(rows[(m, i)][k] for i in (1, 2)) / 2
for mode in ("all", "tenth"):
    ratios = ", ".join(f"{label} {mean(mode, k) / mean('off', k):.2f}" for k, label in
                       [("cpu_ms", "CPU per round"), ("non_llm_p99", "worst non-LLM p99"), ("turn_p99", "RunTurn p99")])
    print(f"{mode} / off: {ratios}")
PY
