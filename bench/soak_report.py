"""The soak's report: reads the samples `bench/soak.sh` wrote (one line per 10 s: seconds, then
NAME=VALUE fields) and the load tool's JSON; prints a Markdown table of every series after the
warm-up (value at its start and at the end, peak over the whole run, least-squares slope per
10 minutes) and writes an HTML page with each group of series over time (labelled axes, units).
Slopes, peaks and charts cover the timed run only (up to LOAD_SECONDS), not the users' reading
back of their writes after it.
Usage: soak_report.py SAMPLES.tsv LOAD.json WARMUP_SECONDS OUT.html LOAD_SECONDS"""
import html
import json
import sys

samples_path, load_path, warmup, out_path = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
until = float(sys.argv[5])

series = {}
for line in open(samples_path):
    fields = line.rstrip("\n").split("\t")
    if len(fields) < 2:
        continue
    t = float(fields[0])
    if t > until:
        break
    for field in fields[1:]:
        name, _, value = field.rpartition("=")
        try:
            series.setdefault(name, []).append((t, float(value)))
        except ValueError:
            pass


def unit(name):
    return ("MB", 1e6) if name.split(":")[0].endswith("bytes") else ("", 1.0)


def slope(points):
    """Least-squares slope in units per second."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / var if var else 0.0


def fmt(v):
    return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"


rows = []
for name in sorted(series, key=lambda n: (not n.startswith("rss"), n)):
    if name.startswith("conversation_recent_window_total:"):
        continue
    points = series[name]
    after = [p for p in points if p[0] >= warmup] or points
    u, scale = unit(name)
    rows.append(
        (
            name,
            u,
            after[0][1] / scale,
            after[-1][1] / scale,
            max(v for _, v in points) / scale,
            slope(after) * 600 / scale,
        )
    )

load = json.load(open(load_path))
print(
    f"{load['users']} users, {load['duration_s']:.0f} s, {load['errors']} errors; "
    f"slopes after the first {warmup:.0f} s ({len(series.get('rss_bytes', []))} samples)"
)
print("| series | unit | at warm-up end | at the end | peak | slope per 10 min |")
print("|---|---|---|---|---|---|")
for name, u, start, end, peak, per10 in rows:
    print(f"| {name} | {u} | {fmt(start)} | {fmt(end)} | {fmt(peak)} | {per10:+,.3f} |")
worst = max((s["p99_ms"], n) for n, s in load["steps"].items() if n != "RunTurn")
windows = {n.rsplit("=", 1)[1]: series[n] for n in series if n.startswith("conversation_recent_window_total:")}
if windows:
    grown = {r: p[-1][1] - next((v for t, v in p if t >= warmup), p[0][1]) for r, p in windows.items()}
    total = sum(grown.values()) or 1.0
    print("recent windows after the warm-up: " + ", ".join(f"{r} {v / total:.1%}" for r, v in sorted(grown.items())))
rounds = load["steps"]["RunTurn"]["count"]
suite = load["processes"].get("suite", {})
cpu_ms = suite.get("mean_cpu_percent", 0) / 100 * load["duration_s"] * 1000 / max(rounds, 1)
print(
    f"worst non-LLM p99: {worst[1]} {worst[0]:.2f} ms; RunTurn p99 {load['steps']['RunTurn']['p99_ms']:.0f} ms; "
    f"{rounds} user-rounds, suite CPU {cpu_ms:.2f} ms per round"
)


def label(name):
    """A legend's name: `cache X` or the structure, without the family's prefix."""
    if ":" not in name:
        return name
    family, labels = name.split(":", 1)
    value = labels.split("=", 1)[1]
    return f"cache {value}" if family.startswith("cache_") else value


def chart(title, names, y_label):
    """An SVG line chart of the named series against minutes."""
    w, h, left, bottom, top, right = 900, 240, 70, 40, 24, 220
    picked = [(n, series[n]) for n in names if series.get(n)]
    if not picked:
        return ""
    _, scale = unit(picked[0][0])
    t_max = max(p[-1][0] for _, p in picked) or 1.0
    v_max = max(v for _, p in picked for _, v in p) / scale or 1.0
    x = lambda t: left + (w - left - right) * t / t_max  # noqa: E731
    y = lambda v: top + (h - top - bottom) * (1 - v / (v_max * 1.05))  # noqa: E731
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    parts = [f'<svg width="{w}" height="{h}" font-family="sans-serif" font-size="11">']
    parts.append(f'<text x="{left}" y="14" font-size="13" font-weight="bold">{html.escape(title)}</text>')
    for i in range(5):
        v = v_max * 1.05 * i / 4
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{fmt(v)}</text>')
    for i in range(7):
        t = t_max * i / 6
        parts.append(f'<text x="{x(t):.1f}" y="{h - bottom + 16}" text-anchor="middle">{t / 60:.0f}</text>')
    parts.append(f'<text x="{(left + w - right) / 2}" y="{h - 6}" text-anchor="middle">minutes since the load started</text>')
    parts.append(
        f'<text transform="translate(14,{(top + h - bottom) / 2}) rotate(-90)" text-anchor="middle">{html.escape(y_label)}</text>'
    )
    if warmup < t_max:
        parts.append(
            f'<line x1="{x(warmup):.1f}" x2="{x(warmup):.1f}" y1="{top}" y2="{h - bottom}" stroke="#999" stroke-dasharray="4 3"/>'
        )
    for i, (name, points) in enumerate(picked):
        c = colours[i % len(colours)]
        path = " ".join(f"{x(t):.1f},{y(v / scale):.1f}" for t, v in points)
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{path}"/>')
        parts.append(f'<text x="{w - right + 8}" y="{top + 14 * i + 10}" fill="{c}">{html.escape(label(name))}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


groups = [
    ("Resident memory of the suite", ["rss_bytes"], "RSS, MB"),
    ("Caches' L1", sorted(n for n in series if n.startswith("cache_l1_bytes")), "L1 bytes, MB"),
    ("Bytes of the in-process structures", sorted(n for n in series if "_resident_bytes" in n), "weighed bytes, MB"),
    ("Entries of every cache's L1 and structure", sorted(n for n in series if "_resident_entries" in n or n.startswith("cache_l1_entries")), "entries"),
    ("Descriptors, threads, connections", ["open_fds", "os_threads", "db_connections"], "count"),
]
table = "".join(
    f"<tr><td>{html.escape(n)}</td><td>{u}</td><td>{fmt(s)}</td><td>{fmt(e)}</td><td>{fmt(p)}</td><td>{d:+,.3f}</td></tr>"
    for n, u, s, e, p, d in rows
)
with open(out_path, "w") as f:
    f.write(
        "<!doctype html><meta charset=utf-8><title>Soak</title>"
        "<style>body{font-family:sans-serif;margin:24px}td,th{padding:2px 10px;text-align:right}"
        "td:first-child{text-align:left}table{border-collapse:collapse}tr:nth-child(even){background:#f4f4f4}</style>"
        f"<h1>Soak: {load['users']} users, {load['duration_s'] / 60:.0f} min, {load['errors']} errors</h1>"
        f"<p>Samples every 10 s; slopes by least squares after the first {warmup / 60:.0f} min (dashed line).</p>"
        + "".join(f"<div>{chart(*g)}</div>" for g in groups)
        + "<h2>Every series</h2><table><tr><th>series</th><th>unit</th><th>at warm-up end</th>"
        "<th>at the end</th><th>peak</th><th>slope per 10 min</th></tr>"
        + table
        + "</table>"
    )
print(f"HTML: {out_path}")
