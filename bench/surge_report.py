"""The table of bench/surge.sh: per mode and phase of the surge, from the users' JSON report;
and the servers' refusals over the whole run, from their metrics scraped at its end."""
import json
import os
import re
import sys

SAMPLE = re.compile(r'^(\w+)(?:\{(.*)\})? (\S+)$')


def refusals(path):
    """Refusals by kind over the run: the turn gate, the servers' queues, the pools."""
    totals = {"turn gate": 0.0, "start gate": 0.0, "server queues": 0.0, "pools": 0.0}
    names = {"rpc_server_shed_total": "server queues", "db_client_refused_total": "pools"}
    gates = {'gate="turns"': "turn gate", 'gate="starts"': "start gate"}
    try:
        for line in open(path):
            m = SAMPLE.match(line.strip())
            if not m:
                continue
            if m.group(1) == "admission_work_refused_total":
                kind = next((k for g, k in gates.items() if g in (m.group(2) or "")), None)
            else:
                kind = names.get(m.group(1))
            if kind:
                totals[kind] += float(m.group(3))
    except FileNotFoundError:
        pass
    return totals


base, surge, modes = sys.argv[1], sys.argv[2], sys.argv[3:]


def report(mode):
    """The users' JSON report of `mode`'s run."""
    return json.load(open(f"bench/out/surge-{base}-{surge}-{mode}.json"))


def phases():
    """(mode, its report, a phase) for every mode's every phase, in order."""
    for mode in modes:
        r = report(mode)
        for p in r["phases"]:
            yield mode, r, p


print(f"{base} users throughout, {surge} more during the surge\n")
print("| mode | phase | seconds | calls completed | turns completed | worst non-LLM p99 ms | RunTurn p99 ms "
      "| attempts retried | failed after retries | succeeded after retries |")
print("|---|---|---|---|---|---|---|---|---|---|")
for mode, r, p in phases():
    steps = p["steps"]
    to = min(p["to_s"], int(r["duration_s"]))
    worst = max((s["p99_ms"] for n, s in steps.items() if n != "RunTurn"), default=0)
    turn = steps.get("RunTurn", {"ok": 0, "p99_ms": 0})
    calls = sum(s["ok"] for s in steps.values())
    print(f"| {mode} | {p['phase']} | {p['from_s']}–{to} | {calls:,} | {turn['ok']:,} | {worst:.1f} "
          f"| {turn['p99_ms']:,.0f} | {p['retried']:,} | {p['failed']:,} | {p['recovered']:,} |")
print()
for mode in modes:
    r = report(mode)
    lost = r["writes"]["lost"]
    ref = refusals(f"bench/out/surge-{base}-{surge}-{mode}.prom")
    print(f"{mode}: refused over the run: " + ", ".join(f"{k} {v:,.0f}" for k, v in ref.items())
          + f"; errors {r['errors']:,}; writes lost: {lost}")

# Each attempt on its own (not counting earlier attempts or the waits between them): what the
# calls the servers admitted cost, and how fast and how often they refused the rest.
print("\nEach attempt on its own, by phase: admitted attempts' p99 (the worst of the reads and "
      "writes, and RunTurn's), the share refused and the p99 time to a refusal\n")
print("| mode | phase | worst non-LLM admitted p99 ms (step) | RunTurn admitted p99 ms "
      "| non-LLM refused | RunTurn refused | refusal p99 ms |")
print("|---|---|---|---|---|---|---|")
for mode, r, p in phases():
    att = {n: s["attempts"] for n, s in p["steps"].items() if s.get("attempts")}
    reads = {n: a for n, a in att.items() if n != "RunTurn"}
    worst = max(reads.items(), key=lambda kv: kv[1]["admitted_p99_ms"], default=(None, None))
    turn = att.get("RunTurn") or {"admitted_p99_ms": 0, "refused_share": 0, "refused": 0}
    admitted = sum(a["admitted"] for a in reads.values())
    refused = sum(a["refused"] for a in reads.values())
    share = refused / (admitted + refused) if admitted + refused else 0
    refusal = max((a["refused_p99_ms"] for a in att.values()), default=0)
    w = f"{worst[1]['admitted_p99_ms']:.1f} ({worst[0]})" if worst[0] else "–"
    print(f"| {mode} | {p['phase']} | {w} | {turn['admitted_p99_ms']:,.0f} "
          f"| {share:.1%} | {turn['refused_share']:.1%} | {refusal:.1f} |")

# The machine's CPU per phase (bench/cpu_by_second.py): whether the cores were full, and whose.
print("\nCPU by phase, mean % of one core (the machine has "
      f"{os.cpu_count()} cores)\n")
print("| mode | phase | machine busy | suite | generator | PostgreSQL | Redis |")
print("|---|---|---|---|---|---|---|")
for mode, r, p in phases():
    try:
        rows = json.load(open(f"bench/out/surge-{base}-{surge}-{mode}.cpu.json"))
    except FileNotFoundError:
        continue
    inside = [row for row in rows if p["from_s"] <= row["second"] - 1 < p["to_s"]]
    if not inside:
        continue
    mean = lambda k: sum(row[k] for row in inside) / len(inside)
    print(f"| {mode} | {p['phase']} | {mean('machine_busy_percent'):.0f} | {mean('suite'):.0f} "
          f"| {mean('generator'):.0f} | {mean('postgres'):.0f} | {mean('redis'):.0f} |")
