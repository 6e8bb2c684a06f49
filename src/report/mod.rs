//! The users scenario's report as a page people read: one self-contained HTML document (inline
//! CSS, SVG drawn here, and a few lines of optional script that only make tooltips instant).
//! Every field of the JSON report is optional: a missing or odd one is drawn as "—", an empty
//! table or an empty chart, never a panic.
//!
//! The page is drawn in parts: [`tables`] writes the summary cards and the tables (and escapes
//! all text), [`chart`] draws the SVG charts, [`over_time`](mod@over_time) turns the run's
//! seconds and process samples into charts over time, [`scale`] maps values onto axes and
//! formats numbers, and [`read`] reads the JSON leniently.

mod chart;
mod over_time;
mod read;
mod scale;
mod tables;

use serde_json::Value;

use chart::latency_chart;
use over_time::over_time;
use read::entries;
use tables::{esc, retry_tables, step_table, summary, writes_table};

/// Categorical colours (Tableau 10, the pale yellow and grey darkened to read on white).
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#76b7b2", "#9c755f", "#c9a227",
    "#ff9da7", "#79706e",
];
/// Good: successful calls.
const GREEN: &str = "#59a14f";
/// A warning: retried attempts; p95.
const ORANGE: &str = "#f28e2b";
/// Bad: failed calls; p99.
const RED: &str = "#e15759";

/// The report as one HTML page: a summary, a table and a log-scale latency chart per step,
/// throughput, errors, p99 latency, memory and CPU over the run, and the retry and write
/// ledgers as tables.
pub fn html(report: &Value) -> String {
    let steps = step_names(report);
    let mut body = summary(report);
    body += "<h2>Steps</h2>\n";
    body += &step_table(report, &steps);
    body += &latency_chart(report, &steps);
    body += "<h2>Over the run</h2>\n";
    body += &over_time(report, &steps);
    body += "<h2>Retries and failures</h2>\n";
    body += &retry_tables(report);
    body += "<h2>Writes, read back after the run</h2>\n";
    body += &writes_table(report);
    let scenario = esc(report["scenario"].as_str().unwrap_or("load"));
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Boardroom load report: {scenario}</title>\n<style>{STYLE}</style></head>\n<body>\n\
<h1>Boardroom load report <small>scenario {scenario}</small></h1>\n{body}\
<footer>Written by <code>boardroom load</code>. Latencies are of successful calls, from the \
first attempt (retries included). Per-second points sit in the middle of their second. \
Hover a chart for its values; click a legend entry to hide or show its series.</footer>\n\
<script>{SCRIPT}</script>\n</body></html>\n"
    )
}

/// The page's stylesheet: cards, tables, legends and the SVG classes the charts use.
const STYLE: &str = "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;\
color:#1f2933;margin:0 auto;padding:1.5em 2em;max-width:1100px}\
h1{font-size:1.6em;margin:.2em 0 .6em}h1 small{font-size:.55em;color:#66707a;font-weight:normal;margin-left:.6em}\
h2{font-size:1.25em;margin:1.8em 0 .6em;border-bottom:1px solid #d9dde2;padding-bottom:.2em}\
h3{font-size:1em;margin:1.4em 0 .3em}\
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(120px,1fr));gap:10px}\
.card{border:1px solid #d9dde2;border-left:5px solid #4e79a7;border-radius:4px;padding:8px 12px}\
.card.wide{grid-column:span 2}.card.good{border-left-color:#59a14f}.card.warn{border-left-color:#f28e2b}.card.bad{border-left-color:#e15759;background:#fdf1f1}\
.card b{display:block;font-size:1.5em;font-variant-numeric:tabular-nums}.card span{color:#66707a;font-size:.85em}\
table{border-collapse:collapse;margin:.4em 0 1em;font-variant-numeric:tabular-nums}\
th,td{padding:4px 12px;border-bottom:1px solid #e4e7eb;text-align:left;vertical-align:top}\
th{background:#f4f6f8;font-weight:600}.n{text-align:right}tr.total td{font-weight:600;border-top:2px solid #c5cad1}\
td.bad{color:#c0392b;font-weight:600}td.warn{color:#b9650b;font-weight:600}.none{color:#66707a;font-style:italic}\
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:baseline}\
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:.9em;margin:.2em 0 .3em}\
.legend i{display:inline-block;width:18px;height:0;border-top:3px solid;margin-right:6px;vertical-align:middle}\
.legend i.dash{border-top-style:dashed}.js .legend span{cursor:pointer;user-select:none}.legend span.off{opacity:.35}\
svg{width:100%;height:auto;display:block}svg text{font-size:12px;fill:#3e4851}\
svg .grid{stroke:#dadee3}svg .minor{stroke:#eef0f2}svg .axis{stroke:#8a939c}\
svg .title{font-size:13px;fill:#1f2933}svg .muted{fill:#66707a;font-style:italic}svg .val{font-size:10px}\
svg .band{fill:#000;fill-opacity:0}svg .band:hover{fill-opacity:.05}\
.note{color:#66707a;font-size:.9em;margin:.2em 0}\
#tip{position:absolute;display:none;pointer-events:none;background:#1f2933;color:#fff;font-size:12px;\
padding:5px 8px;border-radius:4px;white-space:pre;z-index:9}\
footer{margin-top:3em;color:#66707a;font-size:.85em}";

/// Moves each SVG `<title>` (the browser's slow native tooltip) into an instant one, and lets a
/// click on a legend entry hide or show its series.
const SCRIPT: &str = "(function(){document.body.classList.add('js');\
document.querySelectorAll('.legend [data-s]').forEach(function(l){l.addEventListener('click',function(){\
var off=l.classList.toggle('off');l.closest('.chart').querySelectorAll('svg [data-s=\"'+l.dataset.s+'\"]')\
.forEach(function(g){g.style.display=off?'none':'';});});});\
var t=document.createElement('div');t.id='tip';document.body.appendChild(t);\
document.querySelectorAll('svg title').forEach(function(e){e.parentNode.setAttribute('data-tip',e.textContent);e.remove();});\
document.addEventListener('mousemove',function(e){var s=e.target.closest&&e.target.closest('[data-tip]');\
if(!s){t.style.display='none';return;}t.textContent=s.getAttribute('data-tip');t.style.display='block';\
t.style.left=(e.pageX+14)+'px';t.style.top=(e.pageY+14)+'px';});})();";

/// Every step named anywhere in the report, those of `steps` first (their order fixes colours).
fn step_names(report: &Value) -> Vec<String> {
    let mut names: Vec<String> = entries(&report["steps"])
        .into_iter()
        .map(|(k, _)| k.to_owned())
        .collect();
    for second in report["per_second"].as_array().into_iter().flatten() {
        for (name, _) in entries(&second["p99_ms"]) {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
    }
    names
}

/// The colour of step or process `i`, the same for its table swatch and its chart line; past
/// the tenth the palette repeats (and the charts dash those lines).
fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The page without its stylesheet and script: what a reader sees.
    fn visible(page: &str) -> String {
        let mut out = page.to_owned();
        for (open, close) in [("<style>", "</style>"), ("<script>", "</script>")] {
            if let (Some(a), Some(b)) = (out.find(open), out.find(close)) {
                out.replace_range(a..b + close.len(), "");
            }
        }
        out
    }

    #[test]
    fn degenerate_reports_render() {
        for report in [
            json!(null),
            json!({}),
            json!({"steps": {"RunTurn": {"count": 0, "failures": {}}}, "duration_s": 0.0,
                   "processes": {}, "per_second": [], "writes": {}}),
            json!({"duration_s": 1.0, "per_second": [{"second": 0, "ok": 3, "p99_ms": {"GetState": 0.0}}],
                   "processes": {"serve": {"samples": [[0.5, 10.0, 0.0]]}},
                   "timeline": [[0, "x", null]], "steps": {"GetState": "odd"}}),
        ] {
            let page = html(&report);
            assert!(page.ends_with("</html>\n"));
            assert!(!page.contains("NaN") && !page.contains("inf"), "{page}");
        }
    }

    #[test]
    fn strings_are_escaped() {
        let evil = "<img src=x onerror=alert(1)>&\"'";
        let page = html(&json!({
            "steps": {evil: {"count": 1, "p50_ms": 1.0, "failures": {evil: 1}}},
            "retried": {evil: {evil: 2}}, "advisor_failures": {evil: 1},
            "per_second": [{"second": 0, "ok": 1, "p99_ms": {evil: 1.0}}],
            "processes": {evil: {"samples": [[0.0, 1.0, 0.0], [1.0, 2.0, 5.0]]}},
            "scenario": evil,
        }));
        assert!(!page.contains("<img"));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;&amp;&quot;&#39;"));
    }

    #[test]
    fn no_raw_json_reaches_the_page() {
        let page = html(&json!({
            "users": 2, "duration_s": 2.5, "errors": 1, "retried_attempts": 1,
            "retried": {"RunTurn": {"Unavailable": 1}}, "advisor_failures": {"Timeout": 1},
            "writes": {"acknowledged": {"turns": 2}, "lost": {"turns": 0}, "unverified": 0},
            "steps": {"RunTurn": {"count": 2, "rps": 0.8, "p50_ms": 900.0, "p95_ms": 1200.0,
                                  "p99_ms": 1300.0, "max_ms": 1300.0, "failures": {"Internal": 1}}},
            "per_second": [{"second": 0, "ok": 1, "failed": 0, "retried": 1, "p99_ms": {"RunTurn": 900.0}},
                           {"second": 1, "ok": 1, "failed": 1, "retried": 0, "p99_ms": {"RunTurn": 1300.0}}],
            "processes": {"serve": {"peak_rss_mb": 50.0, "mean_cpu_percent": 20.0,
                                    "samples": [[0.5, 40.0, 0.0], [1.0, 50.0, 20.0]]}},
        }));
        let seen = visible(&page);
        assert!(!seen.contains('{') && !seen.contains('}'), "{seen}");
        assert!(seen.contains("Unavailable") && seen.contains("Timeout") && seen.contains("1,300"));
    }
}
