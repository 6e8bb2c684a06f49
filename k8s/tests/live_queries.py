#!/usr/bin/env python3
"""Runs every query of the Grafana dashboard and every alert of the PrometheusRule against a
real Prometheus that scrapes a running Boardroom suite.

    live_queries.py --target boardroom-session=127.0.0.1:9091 --target boardroom-cache=127.0.0.1:9093 ...
        [--dashboard k8s/monitoring/grafana-dashboard.json] [--rules k8s/base/prometheusrule.yaml]
        [--prometheus /usr/bin/prometheus] [--timeout 120] [--allow-absent METRIC ...]
    live_queries.py --self-test      # proves that the check can fail (a Prometheus scraping itself)

Starts `prometheus` on a free loopback port with a temporary data directory and a generated
config: one scrape job per `--target JOB=HOST:PORT` (every 1 s, /metrics, static label
namespace=boardroom-test), so that both the dashboard's {namespace=~"$namespace", job=~"$job"}
and the alerts' job=~"boardroom-.+" selectors match. Waits, polling the HTTP API, until every
target is up and has been scraped often enough to fill a $__rate_interval window, then at one
instant:
  - every panel query ($__rate_interval -> 15s, $__interval -> 5s, $namespace and $job -> .*)
    must parse (/api/v1/format_query) and return at least one series; an empty one is reported
    with the selectors in it that match nothing;
  - every `label_values(selector, label)` template variable must find a value;
  - every alert expression must parse and evaluate, and every vector selector in it, label
    matchers included, must return series. Selectors of metrics from exporters outside the
    suite (--external, default container_ and kube_: cAdvisor, kube-state-metrics) are
    reported SKIP.
A metric given with --allow-absent (a family whose series appears only with its first event,
such as rpc_server_shed_total), or one selector as the table prints it (a label value that
appears only with its event, such as outcome="failed"), makes a query that is empty only
because of it ABSENT, not a failure; the table still shows it. Prints one line per query with its series count and exits 1
listing every failure. Prometheus is stopped on every way out (SIGTERM and SIGHUP included) and
dies with this process even if it is killed (PR_SET_PDEATHSIG).

Python 3.11 standard library; PyYAML for the rules when it is installed (rules.py's loader),
else a small extraction of `alert:`/`expr:` from the PrometheusRule.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import promql  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DASHBOARD = ROOT / "k8s/monitoring/grafana-dashboard.json"
DEFAULT_RULES = ROOT / "k8s/base/prometheusrule.yaml"
DEFAULT_NAMESPACE = "boardroom-test"
DEFAULT_EXTERNAL = ("container_", "kube_")
POLL = 0.5


class ApiError(Exception):
    """Prometheus answered with an error (a parse error, a failed evaluation)."""


@dataclass
class Row:
    kind: str          # panel, variable, alert, selector
    name: str
    query: str
    series: int | None = None
    status: str = "ok"  # ok, FAIL, ABSENT, SKIP
    reason: str = ""


@dataclass
class Plan:
    """What to check and how to read it."""
    targets: list[tuple[str, str, str]]            # (title, refId, expr) of the dashboard
    variables: list[tuple[str, str, str]]          # (variable, selector, label)
    alerts: list[tuple[str, str]]                  # (alert, expr)
    values: dict[str, str]                         # Grafana variables
    allow_absent: set[str] = field(default_factory=set)  # metric families or selectors as written
    external: tuple[str, ...] = DEFAULT_EXTERNAL

    def may_be_absent(self, sel: promql.Selector) -> bool:
        return promql.base_metric(sel.name) in self.allow_absent or str(sel) in self.allow_absent


# -- Prometheus -----------------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when this process dies, however it dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A throw-away Prometheus: temporary data dir, loopback port, stopped by `stop()`."""

    def __init__(self, binary: str, scrape_configs, scrape_interval: str):
        self.binary = binary
        self.scrape_configs = scrape_configs  # port -> list of scrape configs
        self.scrape_interval = scrape_interval
        self.proc: subprocess.Popen | None = None
        self.dir = tempfile.mkdtemp(prefix="boardroom-live-queries-")
        self.url = ""

    def start(self, deadline: float) -> None:
        for attempt in range(3):
            port = free_port()
            config = {"global": {"scrape_interval": self.scrape_interval,
                                 "scrape_timeout": self.scrape_interval,
                                 "evaluation_interval": self.scrape_interval},
                      "scrape_configs": self.scrape_configs(port)}
            config_path = os.path.join(self.dir, "prometheus.yml")
            with open(config_path, "w", encoding="utf-8") as fh:
                json.dump(config, fh, indent=2)  # JSON is YAML
            log = open(os.path.join(self.dir, "prometheus.log"), "wb")
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={config_path}",
                 f"--storage.tsdb.path={os.path.join(self.dir, f'data-{attempt}')}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
                 "--storage.tsdb.retention.time=1d"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)
            log.close()
            self.url = f"http://127.0.0.1:{port}"
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                        if resp.status == 200:
                            return
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(POLL / 5)
            if self.proc.poll() is None:
                raise RuntimeError(f"prometheus not ready before the deadline:\n{self.log_tail()}")
            if "address already in use" not in self.log_tail():
                raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.log_tail()}")
        raise RuntimeError(f"prometheus found no free port:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(os.path.join(self.dir, "prometheus.log"), encoding="utf-8", errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def api(self, path: str, **params) -> object:
        """GET `path`, or POST `params` as a form (queries may be long)."""
        data = urllib.parse.urlencode(params).encode() if params else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method="POST" if params else "GET")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:
            try:
                body = json.load(err)
            except ValueError:
                raise ApiError(f"HTTP {err.code}") from None
        if body.get("status") != "success":
            raise ApiError(body.get("error") or str(body))
        return body.get("data")

    def query(self, expr: str, at: float | None = None) -> list:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("/api/v1/query", **params)
        kind, result = data["resultType"], data["result"]
        return result if kind in ("vector", "matrix") else [result]

    def parses(self, expr: str) -> None:
        """Raises ApiError unless Prometheus parses `expr`."""
        self.api("/api/v1/format_query", query=expr)

    def version(self) -> str:
        try:
            return self.api("/api/v1/status/buildinfo").get("version", "?")
        except (ApiError, OSError):
            return "?"


def scrape_configs(targets: list[tuple[str, str]], namespace: str, interval: str):
    """One job per distinct JOB of `targets` ((job, host:port) pairs), in order."""
    jobs: dict[str, list[str]] = {}
    for job, address in targets:
        jobs.setdefault(job, []).append(address)

    def build(_port: int) -> list[dict]:
        return [{"job_name": job, "scrape_interval": interval, "scrape_timeout": interval,
                 "metrics_path": "/metrics",
                 "static_configs": [{"targets": addresses, "labels": {"namespace": namespace}}]}
                for job, addresses in jobs.items()]
    return build


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(n) * units[u] for n, u in parts)


def wait_for_samples(prom: Prometheus, expected: int, need: int, deadline: float) -> None:
    """Until `expected` targets are up and each has at least `need` scrapes."""
    while True:
        try:
            up = prom.query("up")
            scraped = {_series_key(s): float(s["value"][1]) for s in prom.query("count_over_time(up[1h])")}
        except (ApiError, OSError):
            up, scraped = [], {}
        ready = [s for s in up if s["value"][1] == "1" and scraped.get(_series_key(s), 0) >= need]
        if len(up) >= expected and len(ready) == len(up):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"targets not ready ({len(ready)} of {expected} up with {need} scrapes):\n"
                               + target_health(prom))
        time.sleep(POLL)


def _series_key(sample: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in sample["metric"].items() if k != "__name__"))


def target_health(prom: Prometheus) -> str:
    try:
        active = prom.api("/api/v1/targets")["activeTargets"]
    except (ApiError, OSError) as err:
        return f"  (targets unknown: {err})"
    return "\n".join(f"  {t['labels'].get('job')} {t['scrapeUrl']}: {t['health']} {t.get('lastError') or ''}"
                     for t in active) or "  no target"


# -- the checks -----------------------------------------------------------------------------

def count(prom: Prometheus, expr: str, at: float) -> int:
    return len(prom.query(expr, at))


def _empty_selectors(prom: Prometheus, expr: str, at: float) -> list[promql.Selector]:
    """The selectors of `expr` that match no series."""
    try:
        return [s for s in dict.fromkeys(promql.selectors(expr)) if count(prom, str(s), at) == 0]
    except (promql.PromQLError, ApiError):
        return []


def check_panel(prom: Prometheus, plan: Plan, title: str, ref: str, expr: str, at: float) -> Row:
    row = Row("panel", f"{title} [{ref}]", expr)
    if not expr.strip():
        row.status, row.reason = "FAIL", "empty expr"
        return row
    try:
        query = promql.substitute(expr, plan.values)
        row.query = query
        prom.parses(query)
    except promql.PromQLError as err:
        row.status, row.reason = "FAIL", str(err)
        return row
    except ApiError as err:
        row.status, row.reason = "FAIL", f"does not parse: {err}"
        return row
    try:
        row.series = count(prom, query, at)
    except ApiError as err:
        row.status, row.reason = "FAIL", f"evaluation failed: {err}"
        return row
    if row.series == 0:
        empty = _empty_selectors(prom, query, at)
        if empty and all(plan.may_be_absent(s) for s in empty):
            row.status = "ABSENT"
            row.reason = "no series yet for " + ", ".join(str(s) for s in empty) + " (--allow-absent)"
        elif empty:
            row.status, row.reason = "FAIL", "no series; nothing matches " + ", ".join(str(s) for s in empty)
        else:
            row.status, row.reason = "FAIL", "no series, although every selector has series (the expression filters them all out)"
    return row


def check_variable(prom: Prometheus, plan: Plan, name: str, selector: str, label: str, at: float) -> Row:
    row = Row("variable", f"${name}", f"label_values({selector}, {label})")
    if not selector:
        row.status, row.reason = "FAIL", f"not a label_values(selector, label) query: {label}"
        return row
    try:
        found = {s["metric"].get(label) for s in prom.query(promql.substitute(selector, plan.values), at)} - {None}
    except (promql.PromQLError, ApiError) as err:
        row.status, row.reason = "FAIL", str(err)
        return row
    row.series = len(found)
    if not found:
        row.status, row.reason = "FAIL", f"no series of {selector} has a {label} label"
    return row


def check_alert(prom: Prometheus, plan: Plan, alert: str, expr: str, at: float) -> list[Row]:
    row = Row("alert", alert, " ".join(expr.split()))
    rows = [row]
    try:
        prom.parses(expr)
        row.series = count(prom, expr, at)
        row.reason = "parses and evaluates (firing or not)"
    except ApiError as err:
        row.status, row.reason = "FAIL", f"does not parse or evaluate: {err}"
        return rows
    try:
        selectors = list(dict.fromkeys(promql.selectors(expr)))
    except promql.PromQLError as err:
        row.status, row.reason = "FAIL", f"cannot find its selectors: {err}"
        return rows
    for sel in selectors:
        srow = Row("selector", f"  of {alert}", str(sel))
        rows.append(srow)
        if sel.name.startswith(plan.external):
            srow.status, srow.reason = "SKIP", "exported outside the suite (cAdvisor / kube-state-metrics)"
            continue
        try:
            srow.series = count(prom, str(sel), at)
        except ApiError as err:
            srow.status, srow.reason = "FAIL", str(err)
            continue
        if srow.series == 0:
            if plan.may_be_absent(sel):
                srow.status, srow.reason = "ABSENT", "no series yet (--allow-absent)"
            else:
                srow.status, srow.reason = "FAIL", "this selector matches no series"
    return rows


def check(prom: Prometheus, plan: Plan, at: float) -> list[Row]:
    rows = [check_panel(prom, plan, title, ref, expr, at) for title, ref, expr in plan.targets]
    rows += [check_variable(prom, plan, name, sel, label, at) for name, sel, label in plan.variables]
    for alert, expr in plan.alerts:
        rows += check_alert(prom, plan, alert, expr, at)
    return rows


def report(rows: list[Row], width: int | None) -> int:
    """Prints the table and the failures; the number of failures."""
    name_w = min(max(len(r.name) for r in rows), 52) if rows else 10
    print(f"{'STATUS':<7}{'SERIES':>7}  {'KIND':<9}{'NAME':<{name_w}}  QUERY")
    for r in rows:
        query = r.query if width is None or len(r.query) <= width else r.query[:width - 1] + "…"
        series = "-" if r.series is None else str(r.series)
        print(f"{r.status:<7}{series:>7}  {r.kind:<9}{r.name[:name_w]:<{name_w}}  {query}")
    tally = {s: sum(1 for r in rows if r.status == s) for s in ("ok", "ABSENT", "SKIP", "FAIL")}
    for r in rows:
        if r.status in ("ABSENT", "SKIP"):
            print(f"{r.status} {r.kind} {r.name.strip()}: {r.reason}\n    {r.query}")
    failures = [r for r in rows if r.status == "FAIL"]
    if failures:
        print(f"\nlive_queries: {len(failures)} failure(s):")
        for r in failures:
            print(f"  {r.kind} {r.name.strip()}: {r.reason}\n    {r.query}")
    print(f"live_queries: {len(rows)} checks: {tally['ok']} ok, {tally['ABSENT']} absent (allowed), "
          f"{tally['SKIP']} skipped (external), {tally['FAIL']} failed")
    return len(failures)


# -- inputs ---------------------------------------------------------------------------------

def load_alerts(path: Path) -> list[tuple[str, str]]:
    try:
        import yaml  # noqa: F401
    except ImportError:
        return _alerts_without_yaml(path.read_text(encoding="utf-8"))
    import rules
    return [(r["alert"], str(r["expr"])) for g in rules.load_groups(path) for r in g["rules"] if r.get("alert")]


def _alerts_without_yaml(text: str) -> list[tuple[str, str]]:
    """`alert:` and its `expr:` (inline or a `|`/`>` block) from a PrometheusRule, no PyYAML."""
    alerts, lines, i = [], text.splitlines(), 0
    name = None
    while i < len(lines):
        m = re.match(r"^(\s*)(?:- )?(alert|expr):\s*(.*?)\s*$", lines[i])
        i += 1
        if not m:
            continue
        if m.group(2) == "alert":
            name = m.group(3).strip("'\"")
            continue
        if name is None:
            continue
        value, indent = m.group(3), len(m.group(1))
        if value[:1] in ("|", ">"):
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            value = "\n".join(block).strip()
        alerts.append((name, value.strip("'\"") if value[:1] in "'\"" else value))
        name = None
    return alerts


def parse_target(value: str) -> tuple[str, str]:
    job, sep, address = value.partition("=")
    if not sep or not job or not re.fullmatch(r"[^:\s]+:\d+", address):
        raise argparse.ArgumentTypeError(f"--target wants JOB=HOST:PORT, got {value!r}")
    return job, address


def grafana_values(rate_interval: str, interval: str, extra: list[str]) -> dict[str, str]:
    values = {"__rate_interval": rate_interval, "__interval": interval, "__range": "1h",
              "namespace": ".*", "job": ".*"}
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--var wants NAME=VALUE, got {item!r}")
        values[key] = value
    return values


def _stop_on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` that stops Prometheus


def run_live(args) -> int:
    dashboard = json.loads(Path(args.dashboard).read_text(encoding="utf-8"))
    plan = Plan(targets=promql.dashboard_targets(dashboard), variables=promql.variable_queries(dashboard),
                alerts=load_alerts(Path(args.rules)),
                values=grafana_values(args.rate_interval, args.interval, args.var),
                allow_absent=set(args.allow_absent), external=tuple(args.external or DEFAULT_EXTERNAL))
    deadline = time.monotonic() + args.timeout
    prom = Prometheus(args.prometheus, scrape_configs(args.target, args.namespace, args.scrape_interval),
                      args.scrape_interval)
    try:
        prom.start(deadline)
        print(f"prometheus: pid {prom.proc.pid} on {prom.url} (version {prom.version()}), scraping "
              + ", ".join(f"{job}={address}" for job, address in args.target), flush=True)
        need = args.min_scrapes or math.ceil(seconds(args.rate_interval) / seconds(args.scrape_interval)) + 1
        wait_for_samples(prom, len(args.target), need, deadline)
        at = time.time()
        print(f"prometheus: every target up with >= {need} scrapes; evaluating at {at:.3f} with "
              + ", ".join(f"${k}={v}" for k, v in plan.values.items()), flush=True)
        rows = check(prom, plan, at)
        return 1 if report(rows, None if args.wide else args.width) else 0
    except RuntimeError as err:
        print(f"live_queries: FAIL {err}")
        return 1
    finally:
        prom.stop()


# -- self-test: the check must be able to fail ----------------------------------------------

SELF_JOB = "prometheus-self"
SELF_CASES_PANELS = [
    # (title, expr, expected status, text the reason must hold)
    ("existing", 'sum by (job) (rate(prometheus_http_requests_total{namespace=~"$namespace", job=~"$job"}[$__rate_interval]))', "ok", ""),
    ("missing metric", 'sum(rate(boardroom_no_such_metric_total{namespace=~"$namespace", job=~"$job"}[$__rate_interval]))', "FAIL", "boardroom_no_such_metric_total"),
    ("missing label value", 'sum by (job) (up{namespace=~"$namespace", job="prometheus-nope"})', "FAIL", 'job="prometheus-nope"'),
    ("parse error", "sum(rate(up[$__rate_interval])", "FAIL", "does not parse"),
    ("unknown variable", 'up{cluster=~"$cluster"}', "FAIL", "unknown variable $cluster"),
    ("filtered out", 'up{job=~"$job"} > 2', "FAIL", "filters them all out"),
    ("empty expr", "", "FAIL", "empty expr"),
    ("lazy family allowed", 'sum(rate(boardroom_lazy_total{job=~"$job"}[$__rate_interval]))', "ABSENT", "boardroom_lazy_total"),
    ("lazy label value allowed", 'up{job="prometheus-self", outcome="failed"}', "ABSENT", 'outcome="failed"'),
    ("other label value not allowed", 'up{job="prometheus-self", outcome="other"}', "FAIL", 'outcome="other"'),
]
SELF_CASES_ALERTS = [
    ("Quiet", f'up{{job="{SELF_JOB}"}} == 0', ["ok", "ok"]),
    # The expression returns series; its second selector (a label value that never occurs) does not.
    ("HiddenSelector", f'up{{job="{SELF_JOB}"}} == 1 or up{{job="{SELF_JOB}", instance="127.0.0.1:1"}}', ["ok", "ok", "FAIL"]),
    ("External", 'kube_pod_info{namespace="x"} > 0 or up{job="prometheus-self"}', ["ok", "SKIP", "ok"]),
    ("Unparsable", "rate(up[5m]", ["FAIL"]),
]
SELF_RULES = f"""apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: self-test
spec:
  groups:
    - name: self-test
      rules:
        - alert: SelfDown
          expr: |
            up{{job="{SELF_JOB}"}} == 0
"""
SELF_CASES_SELECTORS = [
    ('sum by (a, b) (rate(x{c="d", e=~"f|g"}[5m])) / on (a) group_left (h) y offset 1h',
     ['x{c="d", e=~"f|g"}', "y"]),
    ('label_replace(up{job="j"}, "dst", "$1", "src", "(.*)") or vector(0)', ['up{job="j"}']),
    ('histogram_quantile(0.99, sum without (pod) (rate(a_bucket{l!~"x\\\\..*"}[$__rate_interval])))', ['a_bucket{l!~"x\\\\..*"}']),
    ('count_values("v", build_info) > bool 1e3 unless {__name__="z", q!=""}', ["build_info", '{__name__="z", q!=""}']),
]


def self_test(args) -> int:
    passed, failed = 0, 0

    def verdict(ok: bool, title: str, detail: str) -> None:
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
            print(f"self-test: FAIL {title}: {detail}")

    for expr, expected in SELF_CASES_SELECTORS:
        got = [str(s) for s in promql.selectors(expr)]
        verdict(got == expected, f"selectors of {expr}", f"got {got}, expected {expected}")

    def self_scrape(port: int) -> list[dict]:
        return [{"job_name": SELF_JOB, "static_configs": [{"targets": [f"127.0.0.1:{port}"],
                                                           "labels": {"namespace": DEFAULT_NAMESPACE}}]}]
    deadline = time.monotonic() + args.timeout
    prom = Prometheus(args.prometheus, self_scrape, args.scrape_interval)
    try:
        prom.start(deadline)
        wait_for_samples(prom, 1, 5, deadline)
        at = time.time()
        plan = Plan(targets=[(t, "A", e) for t, e, _, _ in SELF_CASES_PANELS],
                    variables=[("namespace", f'up{{job=~"{SELF_JOB}"}}', "namespace"), ("nolabel", "up", "nolabel")],
                    alerts=[(a, e) for a, e, _ in SELF_CASES_ALERTS],
                    values=grafana_values("4s", "2s", []),
                    allow_absent={"boardroom_lazy_total", 'up{job="prometheus-self", outcome="failed"}'})
        rows = check(prom, plan, at)
        by_name = {r.name: r for r in rows}
        for title, _, status, text in SELF_CASES_PANELS:
            r = by_name[f"{title} [A]"]
            verdict(r.status == status and text in r.reason, f"panel {title!r}",
                    f"expected {status} with {text!r}, got {r.status} {r.reason!r}")
        verdict(by_name["$namespace"].status == "ok", "variable $namespace", by_name["$namespace"].reason)
        verdict(by_name["$nolabel"].status == "FAIL", "variable without values", by_name["$nolabel"].reason)
        for alert, _, statuses in SELF_CASES_ALERTS:
            i = next(i for i, r in enumerate(rows) if r.kind == "alert" and r.name == alert)
            got = [r.status for r in rows[i:i + len(statuses)]]
            verdict(got == statuses, f"alert {alert}", f"expected {statuses}, got {got} "
                    f"({[r.reason for r in rows[i:i + len(statuses)]]})")
        verdict(by_name["HiddenSelector"].series, "alert HiddenSelector", "its expression must return series")
        target = f"{SELF_JOB}={prom.url.removeprefix('http://')}"
        passed_cli, detail = _self_test_command_line(args, target)
        verdict(passed_cli, "command line on a broken dashboard", detail)
        passed_sig, detail = _self_test_sigterm(args)
        verdict(passed_sig, "SIGTERM stops Prometheus", detail)
    except RuntimeError as err:
        verdict(False, "Prometheus for the self-test", str(err))
    finally:
        prom.stop()
    print(f"self-test (live queries): {passed} passed, {failed} failed")
    return 1 if failed else 0


def _self_cmd(args) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--prometheus", args.prometheus,
            "--scrape-interval", args.scrape_interval]


def _self_test_command_line(args, target: str) -> tuple[bool, str]:
    """A dashboard with one good and one broken panel and a rule file: exit 1, naming the broken one."""
    with tempfile.TemporaryDirectory() as tmp:
        dash = {"panels": [
            {"type": "timeseries", "title": "good", "targets": [{"refId": "A", "expr": 'up{job=~"$job"}'}]},
            {"type": "timeseries", "title": "broken", "targets": [{"refId": "A", "expr": 'up{job="nowhere"}'}]}]}
        Path(tmp, "dash.json").write_text(json.dumps(dash), encoding="utf-8")
        Path(tmp, "rules.yaml").write_text(SELF_RULES, encoding="utf-8")
        proc = subprocess.run(_self_cmd(args) + ["--target", target, "--dashboard", f"{tmp}/dash.json",
                                                 "--rules", f"{tmp}/rules.yaml", "--rate-interval", "4s",
                                                 "--timeout", str(args.timeout)],
                              capture_output=True, text=True, timeout=args.timeout + 30, check=False)
    out = proc.stdout + proc.stderr
    ok = proc.returncode == 1 and "1 failure(s)" in out and "panel broken [A]" in out and 'up{job="nowhere"}' in out
    return ok, f"exit {proc.returncode}\n{out}"


def _self_test_sigterm(args) -> tuple[bool, str]:
    """A run waiting for a target that never comes up, sent SIGTERM: it exits and so does its Prometheus."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "dash.json").write_text('{"panels": []}', encoding="utf-8")
        Path(tmp, "rules.yaml").write_text(SELF_RULES, encoding="utf-8")
        proc = subprocess.Popen(_self_cmd(args) + ["--target", f"nobody=127.0.0.1:{free_port()}",
                                                   "--dashboard", f"{tmp}/dash.json", "--rules", f"{tmp}/rules.yaml",
                                                   "--timeout", "60"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            line = proc.stdout.readline()
            m = re.search(r"prometheus: pid (\d+)", line)
            if not m:
                return False, f"no pid line, got {line!r}"
            child = int(m.group(1))
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    gone = time.monotonic() + 5
    while time.monotonic() < gone and _alive(child):
        time.sleep(0.1)
    return code == 128 + signal.SIGTERM and not _alive(child), f"exit {code}, prometheus {child} alive: {_alive(child)}"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", type=parse_target, default=[], metavar="JOB=HOST:PORT",
                        help="an admin port to scrape as job JOB (e.g. boardroom-session=127.0.0.1:9091); repeatable")
    parser.add_argument("--dashboard", type=Path, default=DEFAULT_DASHBOARD)
    parser.add_argument("--rules", type=Path, default=DEFAULT_RULES, help="file holding the PrometheusRule")
    parser.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    parser.add_argument("--timeout", type=float, default=120, help="seconds for Prometheus and the targets to be ready")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="the namespace label of every target")
    parser.add_argument("--scrape-interval", default="1s")
    parser.add_argument("--rate-interval", default="15s", help="what $__rate_interval stands for")
    parser.add_argument("--interval", default="5s", help="what $__interval stands for")
    parser.add_argument("--min-scrapes", type=int, default=0, help="scrapes per target before evaluating (default: one rate window's worth)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="another dashboard variable")
    parser.add_argument("--allow-absent", action="append", default=[], metavar="METRIC|SELECTOR",
                        help="a family (or one selector, as printed) whose series appears with its first event: "
                             "queries empty only for it are ABSENT, not failed; repeatable")
    parser.add_argument("--external", action="append", default=[], metavar="PREFIX",
                        help=f"metric prefix exported outside the suite (default: {', '.join(DEFAULT_EXTERNAL)})")
    parser.add_argument("--width", type=int, default=110, help="query column width of the table")
    parser.add_argument("--wide", action="store_true", help="print queries in full")
    parser.add_argument("--self-test", action="store_true", help="prove, against a Prometheus scraping itself, that the check can fail")
    args = parser.parse_args(argv)
    if not shutil.which(args.prometheus):
        print(f"live_queries: FAIL no prometheus at {args.prometheus} (Debian's prometheus package)")
        return 1
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)
    if args.self_test:
        return self_test(args)
    if not args.target:
        parser.error("at least one --target JOB=HOST:PORT")
    return run_live(args)


if __name__ == "__main__":
    sys.exit(main())
