#!/usr/bin/env python3
"""Checks the Grafana dashboard and the ConfigMap that provisions it.

    dashboard.py [--dashboard FILE] [RENDERED.yaml...]   # exit 1 and one line per violation
    dashboard.py --self-test [RENDERED.yaml...]          # proves that each check can fail

The dashboard (k8s/monitoring/grafana-dashboard.json) must parse; use schemaVersion 39, a
`datasource` variable of type prometheus and `namespace`/`job` query variables; every panel
but a row needs a title, a description, a unit (s, percentunit, short, bytes or reqps; s for
every histogram_quantile) and queries with a non-empty expr on `${datasource}`, whose every
selector has namespace=~"$namespace" and job=~"$job", whose every range window is
$__rate_interval, and whose every metric is a family the services describe (FAMILIES in the
Rust sources). Each RENDERED.yaml (`kubectl kustomize k8s/overlays/<name>`) must hold the
ConfigMap boardroom-grafana-dashboard, labelled grafana_dashboard: "1", whose boardroom.json is
the dashboard file. Whether the queries return anything is live_queries.py's job.

Python 3.11 standard library plus PyYAML (for the renders).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import promql  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DASHBOARD = ROOT / "k8s/monitoring/grafana-dashboard.json"
# Where the services describe their metric families (`Family { name: "...", ... }`, today in
# each component's metrics module).
FAMILY_SOURCES = ("shared/*/src/**/*.rs", "services/*/src/**/*.rs")
FAMILY = re.compile(r'\bFamily\s*\{\s*name:\s*"([a-z_:][a-z0-9_:]*)"')
CONFIGMAP = "boardroom-grafana-dashboard"
CONFIGMAP_KEY = "boardroom.json"
SIDECAR_LABEL = ("grafana_dashboard", "1")
SCHEMA_VERSION = 39
UNITS = {"s", "percentunit", "short", "bytes", "reqps"}
DATASOURCE_UID = "${datasource}"
SCOPE = {"namespace": '"$namespace"', "job": '"$job"'}
RATE_WINDOW = "$__rate_interval"
# Metrics that no service describes but a dashboard may use (Prometheus's own).
NOT_OURS = {"up"}


def families(root: Path = ROOT) -> set[str]:
    names: set[str] = set()
    for pattern in FAMILY_SOURCES:
        for path in root.glob(pattern):
            names |= set(FAMILY.findall(path.read_text(encoding="utf-8")))
    return names


def check_dashboard(dash: dict, known: set[str]) -> list[str]:
    """One line per violation of the dashboard itself."""
    problems: list[str] = []
    if dash.get("schemaVersion") != SCHEMA_VERSION:
        problems.append(f"schemaVersion must be {SCHEMA_VERSION}, is {dash.get('schemaVersion')!r}")
    for key in ("uid", "title"):
        if not dash.get(key):
            problems.append(f"dashboard has no {key}")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    ds = variables.get("datasource") or {}
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("template variable `datasource` must be of type datasource with query prometheus")
    queries = {name: (sel, label) for name, sel, label in promql.variable_queries(dash)}
    for name in ("namespace", "job"):
        var = variables.get(name) or {}
        if var.get("type") != "query" or name not in queries or queries[name][1] != name or not queries[name][0]:
            problems.append(f"template variable `{name}` must be a query label_values(<selector>, {name})")
        elif deep_uid(var) != DATASOURCE_UID:
            problems.append(f"template variable `{name}` must query ${{datasource}}")
    ids: set = set()
    panels = promql.dashboard_panels(dash)
    if not [p for p in panels if p.get("type") != "row"]:
        problems.append("the dashboard has no panel")
    for panel in panels:
        title = panel.get("title") or ""
        where = f"panel {title or panel.get('id')!r}"
        if panel.get("id") in ids:
            problems.append(f"{where}: id {panel.get('id')} is used twice")
        ids.add(panel.get("id"))
        if not isinstance(panel.get("gridPos"), dict):
            problems.append(f"{where}: no gridPos")
        if panel.get("type") == "row":
            continue
        if not title.strip():
            problems.append(f"{where}: empty title")
        if not (panel.get("description") or "").strip():
            problems.append(f"{where}: empty description")
        unit = ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit")
        if unit not in UNITS:
            problems.append(f"{where}: unit {unit!r} is not one of {sorted(UNITS)}")
        if deep_uid(panel) != DATASOURCE_UID:
            problems.append(f"{where}: datasource must be {DATASOURCE_UID}")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{where}: no query")
        for target in targets:
            problems += [f"{where} [{target.get('refId')}]: {p}" for p in check_target(target, unit, known)]
    return problems


def deep_uid(obj: dict) -> str | None:
    ds = obj.get("datasource")
    return ds.get("uid") if isinstance(ds, dict) else ds


def check_target(target: dict, unit: str | None, known: set[str]) -> list[str]:
    expr = (target.get("expr") or "").strip()
    if not expr:
        return ["empty expr"]
    problems = []
    if deep_uid(target) not in (None, DATASOURCE_UID):
        problems.append(f"datasource must be {DATASOURCE_UID}")
    try:
        selectors = promql.selectors(expr)
        windows = promql.ranges(expr)
    except promql.PromQLError as err:
        return [f"cannot read the expr ({err}): {expr}"]
    if not selectors:
        problems.append(f"no metric selector in {expr}")
    for sel in selectors:
        for label, value in SCOPE.items():
            m = sel.matcher(label)
            if m is None or m.op != "=~" or m.value != value:
                problems.append(f"selector {sel} lacks {label}=~{value}")
        if sel.name and sel.name not in NOT_OURS and promql.base_metric(sel.name) not in known \
                and sel.name not in known:
            problems.append(f"metric {sel.name} is described by no service (typo?)")
    for window in windows:
        if window != RATE_WINDOW:
            problems.append(f"range window [{window}] must be [{RATE_WINDOW}]")
    if "histogram_quantile" in expr and unit != "s":
        problems.append(f"a histogram_quantile is in seconds: unit must be s, is {unit!r}")
    return problems


def check_render(docs: list[dict], dash: dict, label: str) -> list[str]:
    found = [d for d in docs if d.get("kind") == "ConfigMap" and (d.get("metadata") or {}).get("name") == CONFIGMAP]
    if len(found) != 1:
        return [f"[{label}] needs exactly one ConfigMap {CONFIGMAP}, found {len(found)}"]
    cm = found[0]
    problems = []
    key, value = SIDECAR_LABEL
    if ((cm.get("metadata") or {}).get("labels") or {}).get(key) != value:
        problems.append(f"[{label}] ConfigMap {CONFIGMAP} must be labelled {key}: {value!r} (the Grafana sidecar's selector)")
    text = (cm.get("data") or {}).get(CONFIGMAP_KEY)
    if text is None:
        problems.append(f"[{label}] ConfigMap {CONFIGMAP} has no key {CONFIGMAP_KEY}")
    else:
        try:
            if json.loads(text) != dash:
                problems.append(f"[{label}] ConfigMap {CONFIGMAP}: {CONFIGMAP_KEY} differs from the dashboard file")
        except json.JSONDecodeError as err:
            problems.append(f"[{label}] ConfigMap {CONFIGMAP}: {CONFIGMAP_KEY} is not JSON: {err}")
    return problems


def load_renders(paths: list[str]) -> dict[str, list[dict]]:
    import yaml  # only the renders need it
    out = {}
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            out[Path(path).stem] = [d for d in yaml.safe_load_all(fh) if isinstance(d, dict)]
    return out


def run(dash_text: str, renders: dict[str, list[dict]], known: set[str]) -> list[str]:
    try:
        dash = json.loads(dash_text)
    except json.JSONDecodeError as err:
        return [f"the dashboard is not JSON: {err}"]
    problems = check_dashboard(dash, known)
    for label, docs in renders.items():
        problems += check_render(docs, dash, label)
    return problems


# -- self-test: every check must be able to fail ------------------------------------------

def _panel(dash: dict, title: str) -> dict:
    return next(p for p in promql.dashboard_panels(dash) if p.get("title") == title)


def _set_expr(dash: dict, title: str, old: str, new: str) -> None:
    target = _panel(dash, title)["targets"][0]
    if old not in target["expr"]:
        raise KeyError(f"{old!r} not in the expr of {title!r}")
    target["expr"] = target["expr"].replace(old, new)


DASH_MUTATIONS: list[tuple[str, str, Callable[[dict], None]]] = [
    ("title removed", "empty title", lambda d: _panel(d, "L1 size").update(title="")),
    ("description removed", "empty description", lambda d: _panel(d, "Turns running").pop("description")),
    ("unit removed", "unit None", lambda d: _panel(d, "Circuit open")["fieldConfig"]["defaults"].pop("unit")),
    ("unit unknown", "unit 'ms'", lambda d: _panel(d, "Turn overhead p99")["fieldConfig"]["defaults"].update(unit="ms")),
    ("histogram not in seconds", "unit must be s",
     lambda d: _panel(d, "Turn overhead p99")["fieldConfig"]["defaults"].update(unit="short")),
    ("expr emptied", "empty expr", lambda d: _panel(d, "Active requests")["targets"][0].update(expr="")),
    ("no query", "no query", lambda d: _panel(d, "Active requests").update(targets=[])),
    ("metric misspelt", "metric rpc_server_request_total is described by no service",
     lambda d: _set_expr(d, "Request rate by RPC", "rpc_server_requests_total", "rpc_server_request_total")),
    ("fixed window", "range window [5m]", lambda d: _set_expr(d, "Turns by outcome", "$__rate_interval", "5m")),
    ("job scope dropped", 'lacks job=~"$job"', lambda d: _set_expr(d, "L1 entries", ', job=~"$job"', "")),
    ("fixed datasource", "datasource must be", lambda d: _panel(d, "L1 entries").update(datasource={"uid": "prom"})),
    ("schema version", "schemaVersion must be 39", lambda d: d.update(schemaVersion=36)),
    ("namespace variable removed", "template variable `namespace`",
     lambda d: d["templating"]["list"].pop(next(i for i, v in enumerate(d["templating"]["list"]) if v["name"] == "namespace"))),
    ("datasource variable wrong", "template variable `datasource`",
     lambda d: d["templating"]["list"][0].update(query="loki")),
]


def self_test(dash_text: str, renders: dict[str, list[dict]], known: set[str]) -> int:
    clean = run(dash_text, renders, known)
    if clean:
        print("self-test: the unmodified dashboard and renders must pass first:", *clean, sep="\n  ")
        return 1
    base = json.loads(dash_text)
    passed, failed = 0, 0

    def verdict(title: str, expected: str, found: list[str]) -> None:
        nonlocal passed, failed
        if any(expected in p for p in found):
            passed += 1
        else:
            failed += 1
            print(f"self-test: FAIL {title}: expected a violation containing {expected!r}, got {found or 'none'}")

    for title, expected, mutate in DASH_MUTATIONS:
        dash = copy.deepcopy(base)
        try:
            mutate(dash)
        except (KeyError, IndexError, StopIteration) as err:
            failed += 1
            print(f"self-test: FAIL {title}: could not mutate the dashboard ({err!r})")
            continue
        verdict(title, expected, run(json.dumps(dash), {}, known))
    verdict("not JSON", "is not JSON", run(dash_text.rstrip()[:-1], {}, known))
    for label, docs in renders.items():
        def cm(docs: list[dict]) -> dict:
            return next(d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == CONFIGMAP)
        broken = copy.deepcopy(docs)
        cm(broken)["metadata"]["labels"].pop(SIDECAR_LABEL[0])
        verdict(f"[{label}] sidecar label removed", "must be labelled grafana_dashboard", run(dash_text, {label: broken}, known))
        broken = copy.deepcopy(docs)
        cm(broken)["data"][CONFIGMAP_KEY] = json.dumps({**base, "title": "stale"})
        verdict(f"[{label}] stale copy", "differs from the dashboard file", run(dash_text, {label: broken}, known))
        broken = [d for d in copy.deepcopy(docs)
                  if d.get("kind") != "ConfigMap" or d["metadata"]["name"] != CONFIGMAP]
        verdict(f"[{label}] ConfigMap missing", "needs exactly one ConfigMap", run(dash_text, {label: broken}, known))
    print(f"self-test (dashboard): {passed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rendered", nargs="*", help="output of `kubectl kustomize <overlay>`; the file's stem names the overlay")
    parser.add_argument("--dashboard", type=Path, default=DEFAULT_DASHBOARD, help="the Grafana dashboard JSON")
    parser.add_argument("--self-test", action="store_true", help="break the dashboard and renders and check that it is caught")
    args = parser.parse_args(argv)
    dash_text = args.dashboard.read_text(encoding="utf-8")
    renders = load_renders(args.rendered)
    known = families()
    if not known:
        print(f"dashboard: FAIL no metric family found in {', '.join(FAMILY_SOURCES)}")
        return 1
    if args.self_test:
        return self_test(dash_text, renders, known)
    problems = run(dash_text, renders, known)
    for p in problems:
        print(f"FAIL {p}")
    if problems:
        print(f"dashboard: {len(problems)} violation(s)")
        return 1
    dash = json.loads(dash_text)
    print(f"dashboard: {args.dashboard.name} ok ({len(promql.dashboard_targets(dash))} queries in "
          f"{len([p for p in promql.dashboard_panels(dash) if p.get('type') != 'row'])} panels)"
          + (f"; provisioned in {', '.join(renders)}" if renders else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
