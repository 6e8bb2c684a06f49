#!/usr/bin/env python3
"""Splits raw pair files into a development half and a test half, once, before any tuning:
stratified by kind, each kind's pairs ordered by a salted SHA-256 of the line, the first half
to dev.tsv and the rest to test.tsv. Usage: split.py OUT_DIR RAW.tsv [RAW.tsv ...]"""
import hashlib
import sys
from collections import defaultdict

SALT = b"boardroom-semantic-split-v1\n"


def main():
    out, raws = sys.argv[1], sys.argv[2:]
    by_kind = defaultdict(list)
    for path in raws:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if line and not line.startswith("#"):
                    assert len(line.split("\t")) == 4, line
                    by_kind[line.split("\t")[0]].append(line)
    halves = {"dev": [], "test": []}
    for kind in sorted(by_kind):
        lines = sorted(by_kind[kind], key=lambda l: hashlib.sha256(SALT + l.encode()).hexdigest())
        cut = (len(lines) + 1) // 2
        halves["dev"] += lines[:cut]
        halves["test"] += lines[cut:]
    header = "# kind\texpect\tprompt A\tprompt B   (hit: the same answer is right; miss: another answer is needed)\n"
    for name, lines in halves.items():
        with open(f"{out}/{name}.tsv", "w", encoding="utf-8") as f:
            f.write(header + "".join(l + "\n" for l in lines))
        print(f"{name}: {len(lines)} pairs")


if __name__ == "__main__":
    main()
