"""The summary of a users-scenario JSON report under a fault (bench/faults.sh, bench/scale.sh):
failed calls after retries, retried attempts, lost writes, the per-step table, the seconds with
retries or failures, and each sampled process's RSS and CPU."""
import json
import sys

r = json.load(open(sys.argv[1]))
w = r["writes"]
print(f"{r['users']} users, {r['duration_s']:.0f} s: {r['errors']} failed calls, {r['retried_attempts']} retried attempts")
if r["advisor_failures"]:
    print(f"advisors that failed within completed turns (the contract lets a turn complete without them): {r['advisor_failures']}")
print(f"writes acknowledged: {w['acknowledged']}; lost: {sum(w['lost'].values())} {w['lost']}; "
      f"stored but never acknowledged: {w['unacknowledged_turns_stored']} turns; unverified: {w['unverified']}")
own = r.get("read_your_writes")
if own:
    print(f"lists read with the token of the user's own write: {own['checked']}, missing it: {own['missed']}")
print("| step | calls | p50 ms | p99 ms | max ms | failed | retried |")
print("|---|---|---|---|---|---|---|")
for name, s in r["steps"].items():
    retried = r["retried"].get(name, {})
    print(f"| {name} | {s['count']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['max_ms']:.0f} | {s['failures'] or ''} | {retried or ''} |")
if r["timeline"]:
    print("seconds with retried/failed: " + ", ".join(f"{s}s {a}/{f}" for s, a, f in r["timeline"]))
cpu = 0.0
for name, p in sorted(r["processes"].items()):
    cpu += p["mean_cpu_percent"]
    print(f"{name}: peak RSS {p['peak_rss_mb']:.1f} MB, mean CPU {p['mean_cpu_percent']:.0f} %")
if len(r["processes"]) > 1:
    print(f"all sampled processes: mean CPU {cpu:.0f} % of a core")
