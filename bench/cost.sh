#!/usr/bin/env bash
# The CPU cost of a user-round while a users load runs (bench/users.sh, bench/soak.sh): over a
# window, the CPU time of the suite (`boardroom serve`), PostgreSQL (every backend, and what the
# postmaster reaped), Redis and the load generator, from /proc, divided by the turns completed
# in the window (conversation_turns_total{outcome="completed"}: one per user-round); then a
# profile of the suite (perf, cpu-clock samples: this machine has no hardware counters) summed
# by category (bench/cost_profile.py); and the round trips per user-round (gRPC calls, database
# statements and transactions, Redis commands: bench/cost_counters.py).
# Usage: bench/cost.sh [seconds, default 60] [output prefix, default bench/out/cost]
#        (BENCH_DB_URL: the suite's database, default that of bench/soak.sh; PERF=0: no profile;
#        the figures are also written as JSON to PREFIX.json)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
OUT=${2:-bench/out/cost}
mkdir -p "$(dirname "$OUT")"
# Whatever the binary is called (bench/compare.sh runs copies such as /tmp/old): its first
# argument is the subcommand.
SUITE=$(pgrep -f '^[^ ]+ serve( |$)' | head -1 || true)
LOAD=$(pgrep -f '^[^ ]+ load( |$)' | head -1 || true)
if [ -z "$SUITE" ]; then
  echo "bench/cost.sh: no running \`serve\` process" >&2
  exit 1
fi
TCK=$(getconf CLK_TCK)
# utime+stime of the given processes (and, with "reaped", their reaped children's).
ticks() {
  local total=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    # Fields after the command (which may hold spaces): 14-17 are utime stime cutime cstime.
    total=$((total + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13 + $14 + $15}')))
  done
  echo "$total"
}
turns() {
  curl -sf 127.0.0.1:9092/metrics | awk '/^conversation_turns_total\{outcome="completed"\}/ {print $2}'
}
DB_URL=${BENCH_DB_URL:-postgres://postgres@127.0.0.1:5432/boardroom_soak}
python3 bench/cost_counters.py snapshot "$DB_URL" >"$OUT.before.json"
read -r s0 p0 r0 l0 t0 < <(echo "$(ticks "$SUITE") $(ticks $(pgrep -x postgres || true)) $(ticks $(pgrep -x redis-server || true)) $(ticks ${LOAD:-}) $(turns)")
if [ "${PERF:-1}" = 0 ]; then
  sleep "$SECS"
else
  perf record -q -e cpu-clock -F 499 -p "$SUITE" -o "$OUT.perf.data" -- sleep "$SECS" 2>/dev/null
fi
read -r s1 p1 r1 l1 t1 < <(echo "$(ticks "$SUITE") $(ticks $(pgrep -x postgres || true)) $(ticks $(pgrep -x redis-server || true)) $(ticks ${LOAD:-}) $(turns)")
python3 bench/cost_counters.py snapshot "$DB_URL" >"$OUT.after.json"
python3 - "$TCK" "$SECS" "$s0" "$s1" "$p0" "$p1" "$r0" "$r1" "$l0" "$l1" "$t0" "$t1" "$OUT.json" >"$OUT.md" <<'PY'
import json, sys
tck, secs = int(sys.argv[1]), float(sys.argv[2])
s0, s1, p0, p1, r0, r1, l0, l1 = map(int, sys.argv[3:11])
t0, t1 = float(sys.argv[11]), float(sys.argv[12])
rounds = t1 - t0
# The same figures for scripts (bench/compare.sh COST_SECS=...).
json.dump({"rounds": rounds, **{k: (b - a) * 1000 / tck / max(rounds, 1) for k, a, b in
           [("suite_ms", s0, s1), ("postgres_ms", p0, p1), ("redis_ms", r0, r1), ("load_ms", l0, l1)]}},
          open(sys.argv[13], "w"))
print(f"Window: {secs:.0f} s, {rounds:.0f} user-rounds ({rounds / secs:.1f} per second).\n")
print("| process | CPU (share of one core) | ms of CPU per user-round |")
print("|---|---|---|")
total = 0.0
for name, a, b in [("suite (boardroom serve)", s0, s1), ("PostgreSQL", p0, p1), ("Redis", r0, r1), ("load generator", l0, l1)]:
    ms = (b - a) * 1000 / tck
    if name != "load generator":
        total += ms
    print(f"| {name} | {ms / 1000 / secs * 100:.1f} % | {ms / max(rounds, 1):.2f} |")
print(f"| **suite + PostgreSQL + Redis** | {total / 1000 / secs * 100:.1f} % | **{total / max(rounds, 1):.2f}** |")
print(f"\nSUITE_MS_PER_ROUND={(s1 - s0) * 1000 / tck / max(rounds, 1):.3f}")
PY
SUITE_MS=$(awk -F= '/^SUITE_MS_PER_ROUND/ {print $2}' "$OUT.md")
sed -i '/^SUITE_MS_PER_ROUND/d' "$OUT.md"
{
  echo
  echo "Round trips per user-round:"
  echo
  echo "| what | per round | by name |"
  echo "|---|---|---|"
  python3 bench/cost_counters.py report "$OUT.before.json" "$OUT.after.json"
  if [ "${PERF:-1}" != 0 ]; then
    echo
    echo "Where the suite's CPU goes (perf, $SECS s of cpu-clock samples at 499 Hz):"
    echo
    perf report -i "$OUT.perf.data" --stdio --no-children --sort dso,sym 2>/dev/null | python3 bench/cost_profile.py "$SUITE_MS"
  fi
} >>"$OUT.md"
cat "$OUT.md"
