//! The SVG charts: per step, latency percentiles as grouped bars on a log axis; over the run,
//! lines with gaps where nothing was measured. Each chart comes with its legend, gridlines,
//! labelled axes and hover tooltips, and is [`WIDTH`] units wide.

use serde_json::Value;

use super::read::{count, num0};
use super::scale::{Scale, round_seconds, val};
use super::tables::esc;
use super::{ORANGE, RED};

/// p50, p95, p99: the tail in red.
const PERCENTILES: [(&str, &str, &str); 3] = [
    ("p50_ms", "p50", "#4e79a7"),
    ("p95_ms", "p95", ORANGE),
    ("p99_ms", "p99", RED),
];
/// Width of every chart's coordinate system; the page scales it to the window.
const WIDTH: f64 = 1040.0;

/// A coordinate: one decimal, never NaN.
fn c(x: f64) -> String {
    format!("{:.1}", if x.is_finite() { x } else { 0.0 })
}

/// Cuts a label for a fixed-width SVG column.
fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Opens a chart with its legend; entry `i` names what the chart draws in `data-s="i"`.
fn legend(items: &[(String, &str, bool)]) -> String {
    let mut out = String::from("<div class=\"chart\"><div class=\"legend\">");
    for (i, (name, color, dashed)) in items.iter().enumerate() {
        let class = if *dashed { " class=\"dash\"" } else { "" };
        out += &format!(
            "<span data-s=\"{i}\"><i{class} style=\"border-color:{color}\"></i>{}</span>",
            esc(name)
        );
    }
    out + "</div>\n"
}

/// Per step, p50, p95 and p99 as grouped horizontal bars on a log axis.
pub(super) fn latency_chart(report: &Value, names: &[String]) -> String {
    let rows: Vec<(&String, &Value)> = names
        .iter()
        .map(|n| (n, &report["steps"][n.as_str()]))
        .filter(|(_, s)| s.is_object())
        .collect();
    let mut out = String::from("<h3>Latency by step: p50, p95, p99</h3>\n");
    if rows.is_empty() {
        return out + "<p class=\"none\">No step was run.</p>\n";
    }
    let items: Vec<_> = PERCENTILES
        .iter()
        .map(|(_, l, c)| ((*l).to_owned(), *c, false))
        .collect();
    out += &legend(&items);
    let max = rows
        .iter()
        .flat_map(|(_, s)| PERCENTILES.iter().map(|(k, _, _)| num0(&s[*k])))
        .fold(0.0, f64::max);
    let scale = Scale::latency(max);
    let (left, right, top, row_h, bar_h) = (190.0, 60.0, 8.0, 44.0, 9.0);
    let width = WIDTH - left - right;
    let bottom = top + row_h * rows.len() as f64;
    let height = bottom + 46.0;
    let x = |v: f64| left + scale.frac(v) * width;
    let mut svg = format!(
        "<svg viewBox=\"0 0 {WIDTH} {}\" role=\"img\" aria-label=\"latency by step\">\n",
        c(height)
    );
    for (i, _) in rows.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
        svg += &format!(
            "<rect x=\"0\" y=\"{}\" width=\"{WIDTH}\" height=\"{row_h}\" fill=\"#f7f8fa\"/>\n",
            c(top + row_h * i as f64)
        );
    }
    svg += &x_grid(scale, &x, top, bottom);
    svg += &format!(
        "<text class=\"title\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">latency (ms, log scale)</text>\n",
        c(left + width / 2.0),
        c(bottom + 38.0)
    );
    for (i, (name, s)) in rows.iter().enumerate() {
        let y0 = top + row_h * i as f64;
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" dy=\".35em\">{}<title>{}</title></text>\n",
            c(left - 10.0),
            c(y0 + row_h / 2.0),
            esc(&short(name, 24)),
            esc(name)
        );
        if count(&s["count"]) == 0 {
            svg += &format!(
                "<text class=\"muted\" x=\"{}\" y=\"{}\" dy=\".35em\">no successful calls</text>\n",
                c(left + 8.0),
                c(y0 + row_h / 2.0)
            );
            continue;
        }
        for (j, (key, label, color)) in PERCENTILES.iter().enumerate() {
            let v = num0(&s[*key]);
            let y = y0 + 7.0 + j as f64 * (bar_h + 2.0);
            let end = x(v).max(left + 1.0);
            svg += &format!(
                "<g data-s=\"{j}\"><rect x=\"{left}\" y=\"{}\" width=\"{}\" height=\"{bar_h}\" fill=\"{color}\">\
<title>{}: {label} {} ms</title></rect><text class=\"val\" x=\"{}\" y=\"{}\" dy=\".35em\">{}</text></g>\n",
                c(y),
                c(end - left),
                esc(name),
                val(v),
                c(end + 4.0),
                c(y + bar_h / 2.0),
                val(v)
            );
        }
    }
    out + &svg + "</svg></div>\n"
}

/// Vertical gridlines and labelled ticks of `scale` along the bottom of a plot.
fn x_grid(scale: Scale, x: &dyn Fn(f64) -> f64, top: f64, bottom: f64) -> String {
    let mut out = String::new();
    for v in scale.minor() {
        out += &format!(
            "<line class=\"minor\" x1=\"{0}\" x2=\"{0}\" y1=\"{1}\" y2=\"{2}\"/>\n",
            c(x(v)),
            c(top),
            c(bottom)
        );
    }
    for (v, label) in scale.ticks() {
        out += &format!(
            "<line class=\"grid\" x1=\"{0}\" x2=\"{0}\" y1=\"{1}\" y2=\"{2}\"/>\
<text x=\"{0}\" y=\"{3}\" text-anchor=\"middle\">{label}</text>\n",
            c(x(v)),
            c(top),
            c(bottom + 4.0),
            c(bottom + 18.0)
        );
    }
    out += &format!(
        "<line class=\"axis\" x1=\"{0}\" x2=\"{1}\" y1=\"{2}\" y2=\"{2}\"/>\n",
        c(x(0.0)),
        c(x(f64::MAX)),
        c(bottom)
    );
    out
}

/// One line of a chart over time; `None` is a gap (nothing was measured then).
pub(super) struct Series {
    /// Its legend entry, and its label in the hover tooltips.
    pub(super) name: String,
    /// Its line's colour.
    pub(super) color: &'static str,
    /// Drawn dashed: retries, and series past the palette's tenth colour.
    pub(super) dashed: bool,
    /// Marks every point above zero: rare events (errors) on the floor of a chart hide.
    pub(super) dots: bool,
    /// (seconds since the start, value), joined in this order.
    pub(super) points: Vec<(f64, Option<f64>)>,
}

/// What a chart over time shows.
pub(super) struct TimeChart<'a> {
    /// The heading above the chart, and the SVG's accessible label.
    pub(super) title: &'a str,
    /// The vertical axis's title.
    pub(super) y_label: &'a str,
    /// Appended to each value in the tooltips, such as " ms"; may be empty.
    pub(super) unit: &'a str,
    /// A log latency axis (0.1 ms up) rather than a linear one from 0.
    pub(super) log: bool,
    /// Seconds the time axis spans.
    pub(super) x_max: f64,
    /// Seconds of the users' ramp-up, shaded.
    pub(super) ramp: f64,
    /// The note shown instead of the chart when no series has a value.
    pub(super) empty: &'a str,
}

/// A chart over time, under its title, or the `empty` note when no series has a value.
pub(super) fn time_chart(chart: &TimeChart, series: &[Series]) -> String {
    let mut out = format!("<h3>{}</h3>\n", esc(chart.title));
    let values = || {
        series
            .iter()
            .flat_map(|s| s.points.iter().filter_map(|p| p.1))
    };
    if values().next().is_none() {
        return out + &format!("<p class=\"none\">{}</p>\n", esc(chart.empty));
    }
    let items: Vec<_> = series
        .iter()
        .map(|s| (s.name.clone(), s.color, s.dashed))
        .collect();
    out += &legend(&items);
    let max = values().fold(0.0, f64::max);
    let ys = if chart.log {
        Scale::latency(max)
    } else {
        Scale::rounded(max)
    };
    let xs = Scale::exact(chart.x_max);
    let (left, right, top, plot_h) = (74.0, 24.0, 18.0, 250.0);
    let width = WIDTH - left - right;
    let bottom = top + plot_h;
    let x = |v: f64| left + xs.frac(v) * width;
    let y = |v: f64| bottom - ys.frac(v) * plot_h;
    let mut svg = format!(
        "<svg viewBox=\"0 0 {WIDTH} {}\" role=\"img\" aria-label=\"{}\">\n",
        c(bottom + 46.0),
        esc(chart.title)
    );
    if chart.ramp > 0.0 {
        svg += &format!(
            "<rect x=\"{0}\" y=\"{1}\" width=\"{2}\" height=\"{plot_h}\" fill=\"#f2f4f7\"/>\
<text class=\"muted val\" x=\"{3}\" y=\"{4}\">ramp-up</text>\n",
            c(left),
            c(top),
            c(x(chart.ramp) - left),
            c(left + 4.0),
            c(top - 5.0)
        );
    }
    for v in ys.minor() {
        svg += &format!(
            "<line class=\"minor\" x1=\"{}\" x2=\"{}\" y1=\"{2}\" y2=\"{2}\"/>\n",
            c(left),
            c(left + width),
            c(y(v))
        );
    }
    for (v, label) in ys.ticks() {
        svg += &format!(
            "<line class=\"grid\" x1=\"{}\" x2=\"{}\" y1=\"{2}\" y2=\"{2}\"/>\
<text x=\"{3}\" y=\"{2}\" text-anchor=\"end\" dy=\".35em\">{label}</text>\n",
            c(left - 4.0),
            c(left + width),
            c(y(v)),
            c(left - 8.0)
        );
    }
    svg += &x_grid(xs, &x, top, bottom);
    svg += &format!(
        "<line class=\"axis\" x1=\"{0}\" x2=\"{0}\" y1=\"{1}\" y2=\"{2}\"/>\n\
<text class=\"title\" x=\"{3}\" y=\"{4}\" text-anchor=\"middle\">time (s)</text>\n\
<text class=\"title\" transform=\"translate(16 {5}) rotate(-90)\" text-anchor=\"middle\">{6}</text>\n",
        c(left),
        c(top),
        c(bottom),
        c(left + width / 2.0),
        c(bottom + 38.0),
        c(top + plot_h / 2.0),
        esc(chart.y_label)
    );
    for (i, s) in series.iter().enumerate() {
        svg += &format!("<g data-s=\"{i}\">\n");
        let dash = if s.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        for run in s.points.split(|p| p.1.is_none()).filter(|r| !r.is_empty()) {
            let coords: Vec<(f64, f64)> = run
                .iter()
                .filter_map(|(t, v)| v.map(|v| (x(*t), y(v))))
                .collect();
            if let [(cx, cy)] = coords.as_slice() {
                svg += &format!(
                    "<circle cx=\"{}\" cy=\"{}\" r=\"2.5\" fill=\"{}\"/>\n",
                    c(*cx),
                    c(*cy),
                    s.color
                );
            } else {
                let points: Vec<String> = coords
                    .iter()
                    .map(|(px, py)| format!("{},{}", c(*px), c(*py)))
                    .collect();
                svg += &format!(
                    "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\" stroke-linejoin=\"round\"{dash} points=\"{}\"/>\n",
                    s.color,
                    points.join(" ")
                );
            }
        }
        if s.dots {
            for (t, v) in s
                .points
                .iter()
                .filter_map(|(t, v)| v.filter(|v| *v > 0.0).map(|v| (t, v)))
            {
                svg += &format!(
                    "<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{}\"/>\n",
                    c(x(*t)),
                    c(y(v)),
                    s.color
                );
            }
        }
        svg += "</g>\n";
    }
    svg += &hover_bands(chart, series, xs, &x, top, plot_h);
    out + &svg + "</svg></div>\n"
}

/// Invisible columns across the plot whose tooltips list each series' value there.
fn hover_bands(
    chart: &TimeChart,
    series: &[Series],
    xs: Scale,
    x: &dyn Fn(f64) -> f64,
    top: f64,
    plot_h: f64,
) -> String {
    let Scale::Linear { max, .. } = xs else {
        return String::new();
    };
    // Columns a whole number of seconds wide (a round one), at most about 240 of them.
    let span = round_seconds((max / 240.0).ceil() as usize) as f64;
    let bins = ((max / span).ceil() as usize).max(1);
    let mut out = String::new();
    for b in 0..bins {
        let (lo, hi) = (b as f64 * span, (b + 1) as f64 * span);
        let mut lines = Vec::new();
        for s in series {
            let nearest = s
                .points
                .iter()
                .filter(|(t, v)| *t >= lo && *t < hi && v.is_some())
                .min_by(|a, b| {
                    let mid = (lo + hi) / 2.0;
                    (a.0 - mid).abs().total_cmp(&(b.0 - mid).abs())
                });
            if let Some((_, Some(v))) = nearest {
                lines.push(format!("{}: {}{}", esc(&s.name), val(*v), esc(chart.unit)));
            }
        }
        if lines.is_empty() {
            continue;
        }
        out += &format!(
            "<rect class=\"band\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"><title>{lo}–{hi} s\n{}</title></rect>\n",
            c(x(lo)),
            c(top),
            c(x(hi) - x(lo)),
            c(plot_h),
            lines.join("\n")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::html;
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_stay_inside_their_plots() {
        let page = html(&json!({
            "duration_s": 3.0,
            "per_second": [
                {"second": 0, "ok": -5, "failed": 1e12, "p99_ms": {"RunTurn": 1e15, "GetState": -1.0}},
                {"second": 1, "ok": 10, "p99_ms": {"RunTurn": 0.0, "GetState": 0.001}},
                {"second": 7, "ok": 10, "p99_ms": {"RunTurn": 5.0}},
            ],
            "processes": {"serve": {"samples": [[-1.0, -3.0, 0.0], [1.0, 5.0, 500.0], [9.0, 1e9, 1.0]]}},
        }));
        let mut seen = 0;
        for chunk in page.split("points=\"").skip(1) {
            let coords = chunk.split('"').next().unwrap_or_default();
            for pair in coords.split(' ') {
                let (x, y) = pair.split_once(',').unwrap_or(("-1", "-1"));
                let (x, y): (f64, f64) = (x.parse().unwrap_or(-1.0), y.parse().unwrap_or(-1.0));
                assert!(
                    (74.0..=WIDTH - 24.0).contains(&x) && (18.0..=268.0).contains(&y),
                    "{pair}"
                );
                seen += 1;
            }
        }
        assert!(seen > 6);
    }
}
