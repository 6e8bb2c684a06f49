"""CPU seconds used so far by each process tree named on the command line (NAME=PID): the
process, the children it has reaped (cutime/cstime: PostgreSQL's exited backends) and its live
children. Prints `NAME SECONDS` per line."""
import os
import sys

TICK = os.sysconf("SC_CLK_TCK")


def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command: state ppid ... utime(12) stime(13) cutime(14) cstime(15) (0-based here).
    return int(fields[1]), [int(x) for x in fields[11:15]]


def tree(root):
    total = sum(stat(root)[1])
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid, times = stat(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if ppid == root:
                total += sum(times)
    return total / TICK


for arg in sys.argv[1:]:
    name, pid = arg.split("=")
    try:
        print(name, f"{tree(int(pid)):.2f}")
    except FileNotFoundError:
        print(name, "nan")
