"""The table of bench/surge.sh: per mode and phase of the surge, from the users' JSON report;
and the servers' refusals over the whole run, from their metrics scraped at its end."""
import json
import re
import sys

SAMPLE = re.compile(r'^(\w+)(?:\{(.*)\})? (\S+)$')


def refusals(path):
    """Refusals by kind over the run: the turn gate, the servers' queues, the pools."""
    totals = {"turn gate": 0.0, "server queues": 0.0, "pools": 0.0}
    names = {"admission_work_refused_total": "turn gate", "rpc_server_shed_total": "server queues",
             "db_client_refused_total": "pools"}
    try:
        for line in open(path):
            m = SAMPLE.match(line.strip())
            if m and m.group(1) in names:
                totals[names[m.group(1)]] += float(m.group(3))
    except FileNotFoundError:
        pass
    return totals


base, surge, modes = sys.argv[1], sys.argv[2], sys.argv[3:]
print(f"{base} users throughout, {surge} more during the surge\n")
print("| mode | phase | seconds | calls completed | turns completed | worst non-LLM p99 ms | RunTurn p99 ms "
      "| attempts retried | failed after retries | succeeded after retries |")
print("|---|---|---|---|---|---|---|---|---|---|")
for mode in modes:
    r = json.load(open(f"bench/out/surge-{base}-{surge}-{mode}.json"))
    for p in r["phases"]:
        steps = p["steps"]
        to = min(p["to_s"], int(r["duration_s"]))
        worst = max((s["p99_ms"] for n, s in steps.items() if n != "RunTurn"), default=0)
        turn = steps.get("RunTurn", {"ok": 0, "p99_ms": 0})
        calls = sum(s["ok"] for s in steps.values())
        print(f"| {mode} | {p['phase']} | {p['from_s']}–{to} | {calls:,} | {turn['ok']:,} | {worst:.1f} "
              f"| {turn['p99_ms']:,.0f} | {p['retried']:,} | {p['failed']:,} | {p['recovered']:,} |")
print()
for mode in modes:
    r = json.load(open(f"bench/out/surge-{base}-{surge}-{mode}.json"))
    lost = r["writes"]["lost"]
    ref = refusals(f"bench/out/surge-{base}-{surge}-{mode}.prom")
    print(f"{mode}: refused over the run: " + ", ".join(f"{k} {v:,.0f}" for k, v in ref.items())
          + f"; errors {r['errors']:,}; writes lost: {lost}")
