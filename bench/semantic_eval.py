#!/usr/bin/env python3
"""The semantic cache as a client sees it: for each pair of a TSV set (kind, hit|miss, a, b),
ask `a` and then `b` through the OpenAI-compatible front door with the real `openai` SDK, each
pair in a scope of its own (a system message naming the pair), temperature 0, and read
`x-boardroom-cache` of `b`'s answer: `semantic` means b got a's answer. Prints the share of
paraphrases served and of look-alikes served, overall and by kind, as JSON and as a table.

Usage: semantic_eval.py BASE_URL MODEL SET.tsv [SET.tsv ...]
"""
import json
import sys
import uuid
from collections import defaultdict

from openai import OpenAI


def pairs(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            kind, expect, a, b = line.rstrip("\n").split("\t")
            yield kind, expect == "hit", a, b


def main():
    base_url, model, sets = sys.argv[1], sys.argv[2], sys.argv[3:]
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)
    run = uuid.uuid4().hex[:8]
    report = {}
    for path in sets:
        by_kind = defaultdict(lambda: [0, 0])
        served = {True: [0, 0], False: [0, 0]}
        wrong = []
        for i, (kind, hit, a, b) in enumerate(pairs(path)):
            scope = [{"role": "system", "content": f"eval {run} pair {i}"}]
            outcomes = []
            for prompt in (a, b):
                raw = client.chat.completions.with_raw_response.create(
                    model=model, temperature=0,
                    messages=scope + [{"role": "user", "content": prompt}])
                raw.parse()
                outcomes.append(raw.headers.get("x-boardroom-cache", "?"))
            if outcomes[0] != "miss":
                sys.exit(f"pair {i}: the first prompt was not a miss ({outcomes[0]}): {a}")
            got = outcomes[1] == "semantic"
            served[hit][0] += got
            served[hit][1] += 1
            by_kind[kind][0] += got
            by_kind[kind][1] += 1
            if got != hit:
                wrong.append((kind, a, b))
        name = path.rsplit("/", 1)[-1]
        report[name] = {
            "paraphrases_served": served[True],
            "lookalikes_served": served[False],
            "by_kind": dict(by_kind),
        }
        pct = lambda n, d: 100.0 * n / d if d else 0.0
        print(f"\n{name}: paraphrases served {served[True][0]}/{served[True][1]} "
              f"({pct(*served[True]):.1f} %), look-alikes served {served[False][0]}/{served[False][1]} "
              f"({pct(*served[False]):.1f} %)", file=sys.stderr)
        for kind, (n, d) in sorted(by_kind.items()):
            print(f"  {kind}: {n}/{d} served", file=sys.stderr)
        # Held-out sets: their mistakes are not listed (they must not be read while tuning).
        if not any(held in name for held in ("test", "fresh", "holdout")):
            for kind, a, b in wrong:
                print(f"  wrong [{kind}]: {a} | {b}", file=sys.stderr)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
