"""The machine's CPU by second while a users run goes on (bench/surge.sh): how busy both cores
were, and the share of the suite (`serve`), the load generator (`load`), PostgreSQL (every
backend) and Redis, each in % of one core. Second 0 is when the generator started.
Usage: python3 bench/cpu_by_second.py OUT.json (runs until the generator exits)."""
import json
import os
import sys
import time

TCK = os.sysconf("SC_CLK_TCK")


def processes():
    """pid → (group, utime + stime) for the processes of interest."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        ticks = int(fields[11]) + int(fields[12])
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        args = [a.decode(errors="replace") for a in cmdline if a]
        if len(args) > 1 and args[1] == "serve":
            group = "suite"
        elif len(args) > 1 and args[1] == "load":
            group = "generator"
        elif comm == "postgres":
            group = "postgres"
        elif comm == "redis-server":
            group = "redis"
        else:
            continue
        found[pid] = (group, ticks)
    return found


def machine():
    """(busy, total) jiffies of every core."""
    values = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


out = sys.argv[1]
while not any(g == "generator" for g, _ in processes().values()):
    time.sleep(0.05)
t0 = time.monotonic()
rows = []
before, (busy0, total0) = processes(), machine()
while True:
    time.sleep(1.0)
    now, (busy1, total1) = processes(), machine()
    if not any(g == "generator" for g, _ in now.values()):
        break
    shares = {"suite": 0.0, "generator": 0.0, "postgres": 0.0, "redis": 0.0}
    for pid, (group, ticks) in now.items():
        # A process that started within the second counts from zero.
        shares[group] += (ticks - before.get(pid, (group, 0))[1]) / TCK * 100
    cores = os.cpu_count() or 1
    rows.append({"second": round(time.monotonic() - t0),
                 "machine_busy_percent": (busy1 - busy0) / max(total1 - total0, 1) * 100 * cores,
                 **{k: round(v, 1) for k, v in shares.items()}})
    before, busy0, total0 = now, busy1, total1
json.dump(rows, open(out, "w"))
