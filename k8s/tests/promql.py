"""Just enough PromQL for our checks: Grafana variable substitution, the vector selectors of an
expression (metric name and label matchers, as written) and its range windows.

Used by dashboard.py (static checks of k8s/monitoring/grafana-dashboard.json) and
live_queries.py (every query against a real Prometheus). Whether an expression parses is
Prometheus's own job (/api/v1/format_query); this lexer only has to find the selectors in an
expression that parses, so it knows PromQL's tokens and skips function names, aggregation
operators, keywords, grouping label lists, strings, numbers and [range] windows.

Python 3.11 standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>(?:[0-9]+(?:ms|[smhdwy]))+(?![A-Za-z0-9_:]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<variable>\$\{[^}]*\}|\$\w+)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>(){}\[\],@:])
""", re.X)
# Followed by an optional label list in parentheses, which names labels, not metrics.
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                 "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
_MATCH_OPS = {"=", "!=", "=~", "!~"}
# $var, ${var}, ${var:format}, [[var]]: Grafana's variable syntaxes.
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)\]\]|\$(\w+)")


class PromQLError(ValueError):
    """An expression this lexer cannot take apart (Prometheus would reject it too)."""


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str  # the string literal as written, quotes included

    def __str__(self) -> str:
        return f"{self.label}{self.op}{self.value}"


@dataclass(frozen=True)
class Selector:
    """One vector selector: `name{matchers}` (name empty for `{__name__=...}`)."""
    name: str
    matchers: tuple[Matcher, ...]

    def __str__(self) -> str:
        inner = ", ".join(str(m) for m in self.matchers)
        return f"{self.name}{{{inner}}}" if inner or not self.name else self.name

    def matcher(self, label: str) -> Matcher | None:
        return next((m for m in self.matchers if m.label == label), None)


def substitute(expr: str, values: dict[str, str]) -> str:
    """`expr` with Grafana's variables replaced by `values`; an unknown one is an error."""
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise PromQLError(f"unknown variable ${name}")
        return values[name]
    return _VARIABLE.sub(one, expr)


def variables(expr: str) -> set[str]:
    """Names of the Grafana variables `expr` uses."""
    return {m.group(1) or m.group(2) or m.group(3) for m in _VARIABLE.finditer(expr)}


def tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) of every token but whitespace and comments; a Grafana variable outside a
    string (`[$__rate_interval]`) is a token of its own."""
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise PromQLError(f"unexpected character {expr[pos]!r} at {pos}")
        if m.lastgroup not in ("ws", "comment"):
            out.append((m.lastgroup, m.group()))
        pos = m.end()
    return out


def _closing(toks: list[tuple[str, str]], i: int, open_: str, close: str) -> int:
    """Index of the token closing the bracket at `i`."""
    depth = 0
    for j in range(i, len(toks)):
        if toks[j] == ("op", open_):
            depth += 1
        elif toks[j] == ("op", close):
            depth -= 1
            if depth == 0:
                return j
    raise PromQLError(f"unclosed {open_!r}")


def _matchers(toks: list[tuple[str, str]], i: int) -> tuple[tuple[Matcher, ...], int]:
    """The matchers of the `{` at `i`, and the index after its `}`."""
    found, i = [], i + 1
    while i < len(toks) and toks[i] != ("op", "}"):
        if toks[i] == ("op", ","):
            i += 1
            continue
        if i + 2 >= len(toks) or toks[i][0] not in ("ident", "string") or toks[i + 1][1] not in _MATCH_OPS \
                or toks[i + 2][0] != "string":
            raise PromQLError(f"bad label matcher near {' '.join(t for _, t in toks[i:i + 3])!r}")
        found.append(Matcher(toks[i][1], toks[i + 1][1], toks[i + 2][1]))
        i += 3
    if i >= len(toks):
        raise PromQLError("unclosed '{'")
    return tuple(found), i + 1


def selectors(expr: str) -> list[Selector]:
    """Every vector selector of `expr`, in order, with its label matchers as written."""
    toks = tokens(expr)
    found: list[Selector] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if (kind, text) == ("op", "["):
            i = _closing(toks, i, "[", "]") + 1
        elif (kind, text) == ("op", "{"):
            matchers, i = _matchers(toks, i)
            found.append(Selector("", matchers))
        elif kind == "ident" and text.lower() in _GROUPING:
            i = _closing(toks, i + 1, "(", ")") + 1 if nxt == ("op", "(") else i + 1
        elif kind == "ident" and (text.lower() in _KEYWORDS or text.lower() in _AGGREGATIONS
                                  or nxt == ("op", "(")):
            i += 1  # a keyword, an aggregation operator or a function name
        elif kind == "ident":
            matchers: tuple[Matcher, ...] = ()
            i += 1
            if nxt == ("op", "{"):
                matchers, i = _matchers(toks, i)
            found.append(Selector(text, matchers))
        else:
            i += 1
    return found


def ranges(expr: str) -> list[str]:
    """The text inside every `[...]` of `expr` (range windows and subqueries)."""
    toks = tokens(expr)
    out, i = [], 0
    while i < len(toks):
        if toks[i] == ("op", "["):
            j = _closing(toks, i, "[", "]")
            out.append("".join(t for _, t in toks[i + 1:j]))
            i = j + 1
        else:
            i += 1
    return out


def base_metric(name: str) -> str:
    """The family of a series name: a histogram's _bucket/_count/_sum stripped."""
    return re.sub(r"_(bucket|count|sum)$", "", name)


# -- the dashboard's queries ----------------------------------------------------------------

def dashboard_panels(dashboard: dict) -> list[dict]:
    """Every panel, those inside collapsed rows included."""
    out = []
    for panel in dashboard.get("panels") or []:
        out.append(panel)
        out.extend(panel.get("panels") or [])
    return out


def dashboard_targets(dashboard: dict) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of every panel but rows."""
    return [(p.get("title") or f"panel {p.get('id')}", t.get("refId") or "?", t.get("expr") or "")
            for p in dashboard_panels(dashboard) if p.get("type") != "row"
            for t in p.get("targets") or []]


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", re.S)


def variable_queries(dashboard: dict) -> list[tuple[str, str, str]]:
    """(variable, selector, label) of every `label_values(selector, label)` query variable."""
    out = []
    for var in (dashboard.get("templating") or {}).get("list") or []:
        if var.get("type") != "query":
            continue
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        m = _LABEL_VALUES.match(text)
        out.append((var.get("name", "?"), m.group(1) if m else "", m.group(2) if m else text))
    return out
