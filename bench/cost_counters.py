#!/usr/bin/env python3
"""Round trips per user-round, from counters read before and after a window: gRPC calls
served by each service (rpc_server_requests_total), database statements by name
(db_client_operation_duration_seconds_count), Redis commands (INFO commandstats) and
PostgreSQL transactions (pg_stat_database of the suite's database).
Usage: cost_counters.py snapshot DATABASE_URL > before.json
       cost_counters.py report before.json after.json   (rounds = completed turns between)"""
import json
import re
import subprocess
import sys
import urllib.request

ADMIN_PORTS = [9091, 9092, 9093, 9094]


def metrics():
    out = {}
    for port in ADMIN_PORTS:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            m = re.match(r'(rpc_server_requests_total|db_client_operation_duration_seconds_count|conversation_turns_total)\{(.*)\} (\S+)$', line)
            if not m:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            if m.group(1) == "rpc_server_requests_total":
                key = f"grpc {labels.get('server')} {labels.get('rpc_method')}"
            elif m.group(1) == "conversation_turns_total":
                key = f"turns {labels.get('outcome')}"
            else:
                key = f"db {labels.get('db_operation_name')}"
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def redis():
    text = subprocess.run(["redis-cli", "info", "commandstats"], capture_output=True, text=True).stdout
    return {f"redis {m.group(1)}": float(m.group(2)) for m in re.finditer(r"cmdstat_(\S+?):calls=(\d+)", text)}


def postgres(url):
    db = url.rsplit("/", 1)[-1].split("?")[0]
    base = url.rsplit("/", 1)[0] + "/postgres"
    q = f"SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{db}'"
    out = subprocess.run(["psql", "-At", base, "-c", q], capture_output=True, text=True).stdout.strip()
    return {"postgres transactions": float(out or 0)}


def main():
    if sys.argv[1] == "snapshot":
        print(json.dumps({**metrics(), **redis(), **postgres(sys.argv[2])}))
        return
    a, b = (json.load(open(p)) for p in sys.argv[2:4])
    rounds = b.get("turns completed", 0) - a.get("turns completed", 0)
    rows = []
    for key in sorted(b):
        delta = b[key] - a.get(key, 0)
        if delta > 0 and not key.startswith("turns"):
            rows.append((key.split(" ", 1)[0], key.split(" ", 1)[1], delta / max(rounds, 1)))
    for kind, title in [("grpc", "gRPC calls served"), ("db", "database statements (by name)"),
                        ("postgres", "PostgreSQL transactions"), ("redis", "Redis commands")]:
        chosen = [r for r in rows if r[0] == kind]
        total = sum(r[2] for r in chosen)
        detail = ", ".join(f"{name} {per:.2f}" for _, name, per in sorted(chosen, key=lambda r: -r[2]) if per >= 0.05)
        print(f"| {title} | {total:.2f} | {detail} |")


main()
