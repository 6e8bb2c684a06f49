//! The page's HTML outside the charts: the summary cards, the tables of steps, retries and
//! writes, and the escaping every text from the report goes through.

use serde_json::Value;

use super::color;
use super::read::{count, entries, num, num0};
use super::scale::{int, val};

/// Text safe inside HTML elements and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One summary card: a label, a big value and a line of detail; `class` colours its edge.
fn card(class: &str, label: &str, value: &str, detail: &str) -> String {
    format!(
        "<div class=\"card {class}\"><span>{label}</span><b>{value}</b><span>{detail}</span></div>\n"
    )
}

/// The cards atop the page: users, duration, calls, errors, retries and the write ledger's
/// totals; those that can go wrong are marked good, warning or bad once there is something to
/// judge.
pub(super) fn summary(report: &Value) -> String {
    let steps = entries(&report["steps"]);
    let ok: u64 = steps.iter().map(|(_, s)| count(&s["count"])).sum();
    let failed_by_step: u64 = steps
        .iter()
        .flat_map(|(_, s)| entries(&s["failures"]))
        .map(|(_, n)| count(n))
        .sum();
    let errors = report["errors"]
        .as_u64()
        .unwrap_or(failed_by_step)
        .max(failed_by_step);
    let calls = ok + failed_by_step;
    let retried_by_step: u64 = entries(&report["retried"])
        .iter()
        .flat_map(|(_, s)| entries(s))
        .map(|(_, n)| count(n))
        .sum();
    let retried = report["retried_attempts"]
        .as_u64()
        .unwrap_or(retried_by_step);
    let duration = num(&report["duration_s"]);
    let writes = &report["writes"];
    let total = |v: &Value| entries(v).iter().map(|(_, n)| count(n)).sum::<u64>();
    let (acknowledged, lost) = (total(&writes["acknowledged"]), total(&writes["lost"]));
    let unverified = count(&writes["unverified"]);
    let breakdown = entries(&writes["acknowledged"])
        .iter()
        .map(|(k, n)| format!("{} {}", int(count(n)), esc(k)))
        .collect::<Vec<_>>()
        .join(" · ");
    let secs = |x: Option<f64>| x.map_or("—".into(), |x| format!("{x:.1} s"));
    // Green only where there was something to judge.
    let judged = |bad: bool, class: &'static str, any: bool| match (bad, any) {
        (true, _) => class,
        (false, true) => "good",
        (false, false) => "",
    };
    let mut out = String::from("<div class=\"cards\">\n");
    out += &card(
        "",
        "users",
        &report["users"].as_u64().map_or("—".into(), int),
        &format!(
            "ramp {}, think {}",
            secs(num(&report["ramp_s"])),
            secs(num(&report["think_s"]))
        ),
    );
    let (length, clock) = match duration {
        Some(d) if d >= 120.0 => (format!("{:.1} min", d / 60.0), format!("{d:.1} s, ")),
        _ => (secs(duration), String::new()),
    };
    out += &card(
        "",
        "duration",
        &length,
        &format!("{clock}wall clock, drain included"),
    );
    let rate = duration.filter(|d| *d > 0.0).map_or("—".into(), |d| {
        format!("{} calls/s", val(calls as f64 / d))
    });
    out += &card("", "calls", &int(calls), &rate);
    let share = if calls > 0 {
        format!("{:.2} % of calls", errors as f64 / calls as f64 * 100.0)
    } else {
        "no calls".into()
    };
    let any = calls > 0;
    out += &card(
        judged(errors > 0, "bad", any),
        "errors",
        &int(errors),
        &share,
    );
    out += &card(
        judged(retried > 0, "warn", any),
        "retried attempts",
        &int(retried),
        "failed, then retried",
    );
    out += &card(
        "wide",
        "writes acknowledged",
        &int(acknowledged),
        &breakdown,
    );
    let lost_class = if unverified > 0 && lost == 0 {
        "warn"
    } else {
        judged(lost > 0, "bad", acknowledged > 0)
    };
    out += &card(
        lost_class,
        "writes lost",
        &int(lost),
        &format!("{} unverified", int(unverified)),
    );
    out + "</div>\n"
}

/// Non-zero counts by label, as "Unavailable 3, Internal 1".
fn labels(v: &Value) -> String {
    let parts: Vec<String> = entries(v)
        .iter()
        .filter(|(_, n)| count(n) > 0)
        .map(|(k, n)| format!("{} {}", esc(k), int(count(n))))
        .collect();
    parts.join(", ")
}

/// One row per step (in `names` order, with its colour swatch): calls, RPS, latency
/// percentiles and failures by status, then a row of totals; a note when no step was run.
pub(super) fn step_table(report: &Value, names: &[String]) -> String {
    let mut out = String::from(
        "<table><tr><th>step</th><th class=\"n\">calls ok</th><th class=\"n\">RPS</th>\
<th class=\"n\">p50 ms</th><th class=\"n\">p95 ms</th><th class=\"n\">p99 ms</th><th class=\"n\">max ms</th>\
<th class=\"n\">failed</th><th>failures by status</th></tr>\n",
    );
    let (mut ok, mut rps, mut failed) = (0, 0.0, 0);
    for (i, name) in names.iter().enumerate() {
        let s = &report["steps"][name.as_str()];
        if s.is_null() {
            continue;
        }
        let n = count(&s["count"]);
        let f: u64 = entries(&s["failures"]).iter().map(|(_, n)| count(n)).sum();
        let ms = |k: &str| {
            if n > 0 {
                val(num0(&s[k]))
            } else {
                "—".into()
            }
        };
        let share = if f > 0 {
            format!(" ({:.1} %)", f as f64 / (n + f) as f64 * 100.0)
        } else {
            String::new()
        };
        out += &format!(
            "<tr><td><span class=\"sw\" style=\"background:{}\"></span>{}</td><td class=\"n\">{}</td>\
<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
<td class=\"n\">{}</td><td class=\"n{}\">{}{share}</td><td>{}</td></tr>\n",
            color(i),
            esc(name),
            int(n),
            val(num0(&s["rps"])),
            ms("p50_ms"),
            ms("p95_ms"),
            ms("p99_ms"),
            ms("max_ms"),
            if f > 0 { " bad" } else { "" },
            int(f),
            labels(&s["failures"]),
        );
        ok += n;
        rps += num0(&s["rps"]);
        failed += f;
    }
    if ok + failed == 0 && entries(&report["steps"]).is_empty() {
        return "<p class=\"none\">No step was run.</p>\n".into();
    }
    out += &format!(
        "<tr class=\"total\"><td>all steps</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
<td class=\"n\" colspan=\"4\"></td><td class=\"n\">{}</td><td></td></tr>\n</table>\n",
        int(ok),
        val(rps),
        int(failed)
    );
    out
}

/// Retried attempts by step and status (with the rate per 100 calls), then advisor failures
/// within completed turns by reason.
pub(super) fn retry_tables(report: &Value) -> String {
    let steps = entries(&report["retried"]);
    let mut statuses: Vec<&str> = Vec::new();
    for (_, by_status) in &steps {
        for (status, _) in entries(by_status) {
            if !statuses.contains(&status) {
                statuses.push(status);
            }
        }
    }
    let mut out = String::from("<h3>Retried attempts, by step and status</h3>\n");
    if statuses.is_empty() {
        out += "<p class=\"none\">No attempt was retried.</p>\n";
    } else {
        out += "<table><tr><th>step</th>";
        for status in &statuses {
            out += &format!("<th class=\"n\">{}</th>", esc(status));
        }
        out += "<th class=\"n\">all</th><th class=\"n\">per 100 calls</th></tr>\n";
        let mut totals = vec![0; statuses.len() + 1];
        for (step, by_status) in &steps {
            out += &format!("<tr><td>{}</td>", esc(step));
            let mut all = 0;
            for (i, status) in statuses.iter().enumerate() {
                let n = count(&by_status[*status]);
                all += n;
                totals[i] += n;
                out += &format!("<td class=\"n\">{}</td>", int(n));
            }
            totals[statuses.len()] += all;
            let s = &report["steps"][*step];
            let calls = count(&s["count"])
                + entries(&s["failures"])
                    .iter()
                    .map(|(_, n)| count(n))
                    .sum::<u64>();
            let per_100 = if calls > 0 {
                val(all as f64 * 100.0 / calls as f64)
            } else {
                "—".into()
            };
            out += &format!(
                "<td class=\"n\">{}</td><td class=\"n\">{per_100}</td></tr>\n",
                int(all)
            );
        }
        out += "<tr class=\"total\"><td>all steps</td>";
        for n in totals {
            out += &format!("<td class=\"n\">{}</td>", int(n));
        }
        out += "<td></td></tr></table>\n";
    }
    out += "<h3>Advisor failures within completed turns, by reason</h3>\n";
    let reasons = entries(&report["advisor_failures"]);
    if reasons.is_empty() {
        out += "<p class=\"none\">No advisor failed.</p>\n";
    } else {
        out += "<table><tr><th>reason</th><th class=\"n\">advisor failures</th></tr>\n";
        for (reason, n) in reasons {
            out += &format!(
                "<tr><td>{}</td><td class=\"n\">{}</td></tr>\n",
                esc(reason),
                int(count(n))
            );
        }
        out += "</table>\n";
    }
    out
}

/// The write ledger by kind: acknowledged, lost, stored though unacknowledged, and unverified;
/// a note when the report has no ledger.
pub(super) fn writes_table(report: &Value) -> String {
    let w = &report["writes"];
    if !w.is_object() {
        return "<p class=\"none\">This report has no write ledger.</p>\n".into();
    }
    let mut kinds: Vec<&str> = entries(&w["acknowledged"])
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for (k, _) in entries(&w["lost"]) {
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    let mut out = String::from("<table><tr><th></th>");
    for k in &kinds {
        out += &format!("<th class=\"n\">{}</th>", esc(k));
    }
    out += "<th class=\"n\">total</th></tr>\n";
    // `alarm` is the class of a cell above zero.
    let mut row = |label: &str, cells: Vec<Option<u64>>, total: u64, alarm: &str| {
        out += &format!("<tr><td>{label}</td>");
        for cell in cells.into_iter().chain([Some(total)]) {
            out += &match cell {
                Some(n) if n > 0 => format!("<td class=\"n {alarm}\">{}</td>", int(n)),
                Some(n) => format!("<td class=\"n\">{}</td>", int(n)),
                None => "<td class=\"n\">—</td>".into(),
            };
        }
        out += "</tr>\n";
    };
    for (key, label) in [
        ("acknowledged", "acknowledged to a user"),
        ("lost", "lost: acknowledged, not found on read-back"),
    ] {
        let cells: Vec<Option<u64>> = kinds.iter().map(|k| Some(count(&w[key][*k]))).collect();
        let total = cells.iter().flatten().sum();
        row(label, cells, total, if key == "lost" { "bad" } else { "" });
    }
    let stored = count(&w["unacknowledged_turns_stored"]);
    let cells = kinds
        .iter()
        .map(|k| (*k == "turns").then_some(stored))
        .collect();
    row("stored, though the user was not told", cells, stored, "");
    let unverified = count(&w["unverified"]);
    row(
        "unverified: the read-back itself failed",
        kinds.iter().map(|_| None).collect(),
        unverified,
        "warn",
    );
    out + "</table>\n"
}
