"""The table of bench/overload.sh: per users count and admission mode, from the users' JSON
report and the servers' metrics (Prometheus text) scraped at the end of the run."""
import json
import os
import re
import sys

SAMPLE = re.compile(r'^(\w+)\{(.*)\} (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(path):
    for line in open(path):
        m = SAMPLE.match(line.strip())
        if m:
            yield m.group(1), dict(LABEL.findall(m.group(2))), float(m.group(3))


def quantile(buckets, q):
    """The upper bound of the bucket holding quantile q of cumulative (le, count) pairs."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return float("nan")
    for le, count in buckets:
        if count >= q * total:
            return le
    return float("inf")


def merged(prom, status, streaming):
    """Cumulative buckets of the session and conversation services' calls that ended with
    `status` (summed over methods): the streamed turns (RunTurn, JoinTurn) or the others."""
    acc = {}
    for name, labels, value in samples(prom):
        if name != "rpc_server_call_duration_seconds_bucket":
            continue
        if labels.get("rpc_grpc_status_code") != status:
            continue
        if labels.get("server") not in ("session", "conversation"):
            continue
        if (labels.get("rpc_method") in ("RunTurn", "JoinTurn")) != streaming:
            continue
        if labels.get("rpc_service", "").startswith("grpc."):
            continue
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        acc[le] = acc.get(le, 0) + value
    return sorted(acc.items())


def counter(prom, name, **want):
    """The sum of a counter's samples whose labels include `want`."""
    return sum(v for n, labels, v in samples(prom)
               if n == name and all(labels.get(k) == x for k, x in want.items()))


print("| users | admission | admitted calls | turns completed | turns refused by the gate | p99 of admitted non-streaming calls ms | refused | time to refuse p50 / p99 ms | errors after retries | retried | worst non-LLM step p99 ms (with retries) | RunTurn p99 ms | suite CPU % |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for users in sys.argv[1:]:
    for mode in os.environ.get("MODES", "on off").split():
        prom = f"bench/out/overload-{users}-{mode}.prom"
        report = json.load(open(f"bench/out/overload-{users}-{mode}.json"))
        ok_unary = merged(prom, "0", False)
        ok_stream = merged(prom, "0", True)
        refused = merged(prom, "14", False)
        refused_stream = merged(prom, "14", True)
        admitted = (ok_unary[-1][1] if ok_unary else 0) + (ok_stream[-1][1] if ok_stream else 0)
        n_refused = (refused[-1][1] if refused else 0) + (refused_stream[-1][1] if refused_stream else 0)
        every_refusal = [(le, a + b) for (le, a), (_, b) in zip(refused, refused_stream)] if refused and refused_stream else (refused or refused_stream)
        share = n_refused / max(admitted + n_refused, 1)
        steps = report["steps"]
        worst = max(s["p99_ms"] for name, s in steps.items() if name != "RunTurn")
        retried = report["retried_attempts"]
        cpu = report["processes"]["suite"]["mean_cpu_percent"]
        turns = counter(prom, "conversation_turns_total", outcome="completed")
        gated = counter(prom, "admission_work_refused_total", gate="turns")
        print(f"| {users} | {mode} | {admitted:.0f} | {turns:.0f} | {gated:.0f} | {quantile(ok_unary, 0.99) * 1e3:.1f} | {share:.1%} | "
              f"{quantile(every_refusal, 0.5) * 1e3:.1f} / {quantile(every_refusal, 0.99) * 1e3:.1f} | "
              f"{report['errors']} | {retried} | {worst:.1f} | {steps['RunTurn']['p99_ms']:.0f} | {cpu:.0f} |")
