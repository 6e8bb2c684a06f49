#!/usr/bin/env python3
"""Unit-tests the alerts of the PrometheusRule with `promtool test rules`.

    rules.py                    # k8s/base/prometheusrule.yaml against k8s/tests/alerts.test.yaml
    rules.py --rules FILE       # another PrometheusRule (e.g. a deliberately broken copy)
    rules.py --self-test        # proves that the tests and the coverage check can fail

The PrometheusRule's `spec` (its `groups:`) is written to rules.yaml in a temporary directory,
the test file is copied beside it (its rule_files must be exactly [rules.yaml]) and promtool
runs there. Before that, every alert of the rule file must have at least one case in
alert_rule_test that expects it to fire (non-empty exp_alerts) and one that expects silence
(empty exp_alerts); a missing one is reported by name and fails the run (exit 1).

Python 3.11 standard library plus PyYAML; promtool on PATH (scripts/test installs it).
"""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RULES = ROOT / "k8s/base/prometheusrule.yaml"
DEFAULT_TESTS = ROOT / "k8s/tests/alerts.test.yaml"
RULES_NAME = "rules.yaml"


def load_groups(path: Path) -> list[dict]:
    """The `spec.groups` of the (single) PrometheusRule in `path`."""
    with open(path, encoding="utf-8") as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        raise SystemExit(f"rules: {path} must hold exactly one PrometheusRule, found {len(rules)}")
    groups = (rules[0].get("spec") or {}).get("groups")
    if not isinstance(groups, list) or not groups:
        raise SystemExit(f"rules: {path}: spec.groups must be a non-empty list")
    return groups


def alert_names(groups: list[dict]) -> list[str]:
    return [r["alert"] for g in groups for r in g.get("rules") or [] if r.get("alert")]


def coverage(alerts: list[str], tests: dict) -> list[str]:
    """One line per alert without a firing or without a silent case."""
    firing: set[str] = set()
    silent: set[str] = set()
    for group in tests.get("tests") or []:
        for case in group.get("alert_rule_test") or []:
            (firing if case.get("exp_alerts") else silent).add(case.get("alertname"))
    problems = []
    for alert in alerts:
        missing = [kind for kind, seen in (("firing", firing), ("silent", silent)) if alert not in seen]
        if missing:
            problems.append(f"alert {alert} has no {' and no '.join(missing)} test case in alert_rule_test")
    for name in sorted((firing | silent) - set(alerts)):
        problems.append(f"alert_rule_test names {name}, which the rule file does not define")
    return problems


def run_promtool(groups: list[dict], tests_path: Path) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="boardroom-rules-") as tmp:
        with open(Path(tmp) / RULES_NAME, "w", encoding="utf-8") as fh:
            yaml.safe_dump({"groups": groups}, fh, sort_keys=False)
        shutil.copyfile(tests_path, Path(tmp) / tests_path.name)
        return subprocess.run(["promtool", "test", "rules", tests_path.name],
                              cwd=tmp, capture_output=True, text=True, check=False)


def check(groups: list[dict], tests_path: Path, tests: dict, quiet: bool = False) -> tuple[int, str]:
    """(exit code, promtool's output); prints the findings unless `quiet`."""
    say = (lambda *a: None) if quiet else print
    if tests.get("rule_files") != [RULES_NAME]:
        say(f"FAIL {tests_path.name}: rule_files must be [{RULES_NAME}] (the extracted spec)")
        return 1, ""
    problems = coverage(alert_names(groups), tests)
    for p in problems:
        say(f"FAIL {p}")
    proc = run_promtool(groups, tests_path)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        say(output)
        say(f"rules: FAIL promtool test rules exited {proc.returncode}")
    if problems or proc.returncode != 0:
        return 1, output
    say(f"rules: promtool test rules: {tests_path.name} passed; "
        f"{len(alert_names(groups))} alerts, each with a firing and a silent case")
    return 0, output


def failed_alerts(output: str) -> set[str]:
    return set(re.findall(r"alertname: (\w+),", output))


def self_test(groups: list[dict], tests_path: Path, tests: dict) -> int:
    passed, failed = 0, 0

    def verdict(ok: bool, title: str, detail: str = "") -> None:
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
            print(f"self-test: FAIL {title}{': ' + detail if detail else ''}")

    rc, _ = check(groups, tests_path, tests, quiet=True)
    if rc != 0:
        print("self-test: the unmodified rules and tests must pass first")
        return 1
    # No alert can fire: every alert's firing case must fail, by name.
    never = copy.deepcopy(groups)
    for g in never:
        for r in g["rules"]:
            if r.get("alert"):
                r["expr"] = f"({r['expr'].strip()}) > +Inf"
    rc, out = check(never, tests_path, tests, quiet=True)
    missed = set(alert_names(groups)) - failed_alerts(out)
    verdict(rc != 0 and not missed, "alerts that never fire", f"no failing case for {sorted(missed)}")
    # One threshold moved: 1 % -> 2.5 % makes the 1.96 % case of BoardroomRpcErrorRateHigh silent.
    moved = copy.deepcopy(groups)
    rule = next(r for g in moved for r in g["rules"] if r.get("alert") == "BoardroomRpcErrorRateHigh")
    if ") > 0.01\n" not in rule["expr"]:
        verdict(False, "threshold moved", "could not find `) > 0.01` in BoardroomRpcErrorRateHigh")
    else:
        rule["expr"] = rule["expr"].replace(") > 0.01\n", ") > 0.025\n")
        rc, out = check(moved, tests_path, tests, quiet=True)
        verdict(rc != 0 and "BoardroomRpcErrorRateHigh" in failed_alerts(out), "threshold moved")
    # `for` dropped: the silent cases that are too short for `for` must fail.
    hasty = copy.deepcopy(groups)
    rule = next(r for g in hasty for r in g["rules"] if r.get("alert") == "BoardroomLlmCircuitOpen")
    rule.pop("for")
    rc, out = check(hasty, tests_path, tests, quiet=True)
    verdict(rc != 0 and "BoardroomLlmCircuitOpen" in failed_alerts(out), "`for` removed")
    # Coverage: an alert without a silent case, and one without any case.
    for title, alert, keep in (("no silent case", "BoardroomCacheL2Down", lambda c: bool(c.get("exp_alerts"))),
                               ("no case at all", "BoardroomHpaAtMax", lambda c: False)):
        trimmed = copy.deepcopy(tests)
        for group in trimmed["tests"]:
            group["alert_rule_test"] = [c for c in group.get("alert_rule_test") or []
                                        if c.get("alertname") != alert or keep(c)]
        found = coverage(alert_names(groups), trimmed)
        verdict(any(alert in p for p in found), f"coverage, {title}", f"got {found or 'nothing'}")
    print(f"self-test (rules): {passed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", type=Path, default=DEFAULT_RULES, help="file holding the PrometheusRule")
    parser.add_argument("--tests", type=Path, default=DEFAULT_TESTS, help="promtool unit tests")
    parser.add_argument("--self-test", action="store_true", help="break the rules and tests and check that it is caught")
    args = parser.parse_args(argv)
    if shutil.which("promtool") is None:
        print("rules: FAIL promtool is not installed (scripts/test installs it from Debian's prometheus package)")
        return 1
    groups = load_groups(args.rules)
    with open(args.tests, encoding="utf-8") as fh:
        tests = yaml.safe_load(fh)
    if args.self_test:
        return self_test(groups, args.tests, tests)
    return check(groups, args.tests, tests)[0]


if __name__ == "__main__":
    sys.exit(main())
