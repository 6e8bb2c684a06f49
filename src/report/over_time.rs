//! The run over time: its seconds (merged into longer intervals for a long run) as throughput
//! and p99 latency charts, and each sampled process's memory and CPU as charts and a table.

use serde_json::Value;

use super::chart::{Series, TimeChart, time_chart};
use super::read::{entries, num, num0};
use super::scale::{int, round_seconds, val};
use super::tables::esc;
use super::{GREEN, ORANGE, PALETTE, RED, color};

/// At most this many points per series over time: more is a noisy band, not a line.
const MAX_POINTS: usize = 300;

/// A stretch of the run: one second, or for a long run several merged.
struct Interval {
    at: f64,
    /// Successful calls, failed calls and retried attempts per second; none where not known.
    rates: [Option<f64>; 3],
    /// p99 latency (ms) by step; for merged seconds the worst of them.
    p99: Vec<(String, f64)>,
}

/// The run by second (from `per_second`, else from the older `timeline`), merged into at most
/// [`MAX_POINTS`] intervals; with how many seconds each interval holds.
fn intervals(report: &Value) -> (Vec<Interval>, usize) {
    let duration = num(&report["duration_s"]);
    let per_second = report["per_second"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut seconds: Vec<Interval> = Vec::new();
    for (i, s) in per_second.iter().enumerate() {
        let start = num(&s["second"]).unwrap_or(i as f64);
        // The run's last second is usually cut short: a rate over what it covered, none if
        // that is under half a second (mostly noise).
        let covered = duration.map_or(1.0, |d| (d - start).clamp(0.0, 1.0));
        let covered = if covered <= 0.0 { 1.0 } else { covered };
        let rate = |k: &str| (covered >= 0.5).then(|| num0(&s[k]) / covered);
        seconds.push(Interval {
            at: start + covered / 2.0,
            rates: [rate("ok"), rate("failed"), rate("retried")],
            p99: entries(&s["p99_ms"])
                .into_iter()
                .filter_map(|(k, v)| num(v).map(|v| (k.to_owned(), v)))
                .collect(),
        });
    }
    let timeline = report["timeline"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if per_second.is_empty() && !timeline.is_empty() {
        // Older reports: only the seconds with a retry or failure, and no successes.
        let by_second: std::collections::BTreeMap<u64, (f64, f64)> = timeline
            .iter()
            .filter_map(|e| Some((e[0].as_u64()?, (num0(&e[1]), num0(&e[2])))))
            .collect();
        let end = by_second
            .keys()
            .next_back()
            .map(|s| s + 1)
            .into_iter()
            .chain(duration.map(|d| d.ceil().max(0.0) as u64))
            .max()
            .unwrap_or(0)
            .min(1_000_000);
        seconds = (0..end)
            .map(|second| {
                let (retried, failed) = by_second.get(&second).copied().unwrap_or((0.0, 0.0));
                Interval {
                    at: second as f64 + 0.5,
                    rates: [None, Some(failed), Some(retried)],
                    p99: Vec::new(),
                }
            })
            .collect();
    }
    let size = round_seconds(seconds.len().div_ceil(MAX_POINTS));
    if size == 1 {
        return (seconds, 1);
    }
    let merged = seconds
        .chunks(size)
        .map(|chunk| {
            let mean = |i: usize| {
                let known: Vec<f64> = chunk.iter().filter_map(|s| s.rates[i]).collect();
                (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64)
            };
            let mut p99: Vec<(String, f64)> = Vec::new();
            for (step, v) in chunk.iter().flat_map(|s| &s.p99) {
                match p99.iter_mut().find(|(k, _)| k == step) {
                    Some(worst) => worst.1 = worst.1.max(*v),
                    None => p99.push((step.clone(), *v)),
                }
            }
            Interval {
                at: chunk.iter().map(|s| s.at).sum::<f64>() / chunk.len() as f64,
                rates: [mean(0), mean(1), mean(2)],
                p99,
            }
        })
        .collect();
    (merged, size)
}

/// A process's samples as points, thinned to at most `2 * MAX_POINTS` by keeping the highest
/// of each run of neighbours (a spike must survive thinning).
fn peaks(
    samples: &[(f64, f64, f64)],
    pick: fn(&(f64, f64, f64)) -> f64,
) -> Vec<(f64, Option<f64>)> {
    let size = samples.len().div_ceil(2 * MAX_POINTS).max(1);
    samples
        .chunks(size)
        .filter_map(|chunk| chunk.iter().max_by(|a, b| pick(a).total_cmp(&pick(b))))
        .map(|s| (s.0, Some(pick(s))))
        .collect()
}

/// A process's samples: (seconds since start, RSS MB, CPU % of one core since the last one).
fn samples(process: &Value) -> Vec<(f64, f64, f64)> {
    process["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((num(&s[0])?, num(&s[1])?, num(&s[2]).unwrap_or(0.0))))
        .collect()
}

/// The "Over the run" section: throughput and errors, p99 latency by step, memory and CPU by
/// process, then the process table.
pub(super) fn over_time(report: &Value, steps: &[String]) -> String {
    let (intervals, size) = intervals(report);
    let processes = entries(&report["processes"]);
    let latest_sample = processes
        .iter()
        .flat_map(|(_, p)| samples(p))
        .map(|s| s.0)
        .fold(0.0, f64::max);
    let x_max = intervals
        .iter()
        .map(|s| s.at)
        .fold(num0(&report["duration_s"]), f64::max)
        .max(latest_sample)
        .max(1.0);
    let chart = |title, y_label, unit, log, empty| TimeChart {
        title,
        y_label,
        unit,
        log,
        x_max,
        ramp: num0(&report["ramp_s"]),
        empty,
    };
    let rate = |i: usize, name: &str, color, dashed, dots| Series {
        name: name.to_owned(),
        color,
        dashed,
        dots,
        points: intervals.iter().map(|s| (s.at, s.rates[i])).collect(),
    };
    let throughput: Vec<Series> = [
        rate(0, "successful calls/s", GREEN, false, false),
        rate(1, "failed calls/s", RED, false, true),
        rate(2, "retried attempts/s", ORANGE, true, true),
    ]
    .into_iter()
    .filter(|s| s.points.iter().any(|p| p.1.is_some()))
    .collect();
    let (throughput_title, p99_title) = if size > 1 {
        (
            format!("Throughput and errors (mean of each {size} s)"),
            format!("p99 latency by step (worst second of each {size} s)"),
        )
    } else {
        (
            "Throughput and errors".to_owned(),
            "p99 latency per second, by step".to_owned(),
        )
    };
    let no_seconds = "This report has no per-second counts.";
    let mut out = time_chart(
        &chart(&throughput_title, "per second", "", false, no_seconds),
        &throughput,
    );
    if !intervals.is_empty() && report["per_second"].as_array().is_none_or(Vec::is_empty) {
        out += "<p class=\"note\">This report has no per-second successes: failures and retries \
from its timeline only.</p>\n";
    }
    let p99: Vec<Series> = steps
        .iter()
        .enumerate()
        .map(|(i, name)| Series {
            name: name.clone(),
            color: color(i),
            dashed: i >= PALETTE.len(),
            dots: false,
            points: intervals
                .iter()
                .map(|s| (s.at, s.p99.iter().find(|(k, _)| k == name).map(|(_, v)| *v)))
                .collect(),
        })
        .filter(|s| s.points.iter().any(|p| p.1.is_some()))
        .collect();
    let no_latencies = "This report has no per-second latencies.";
    out += &time_chart(
        &chart(
            &p99_title,
            "p99 latency (ms, log scale)",
            " ms",
            true,
            no_latencies,
        ),
        &p99,
    );
    let per_process = |pick: fn(&(f64, f64, f64)) -> f64, skip: usize| -> Vec<Series> {
        processes
            .iter()
            .enumerate()
            .map(|(i, (name, p))| Series {
                name: (*name).to_owned(),
                color: color(i),
                dashed: i >= PALETTE.len(),
                dots: false,
                points: peaks(samples(p).get(skip..).unwrap_or_default(), pick),
            })
            .collect()
    };
    let (unsampled, one_sample) = if processes.is_empty() {
        (
            "No process was sampled (name them with --pid name=PID).",
            "No process was sampled.",
        )
    } else {
        (
            "No process has a sample.",
            "CPU use needs two samples of a process; none has them.",
        )
    };
    out += &time_chart(
        &chart("Resident memory", "RSS (MB)", " MB", false, unsampled),
        &per_process(|s| s.1, 0),
    );
    // A process's first sample has no earlier one to measure CPU time against.
    out += &time_chart(
        &chart("CPU", "CPU (% of one core)", "%", false, one_sample),
        &per_process(|s| s.2, 1),
    );
    out + &process_table(&processes)
}

/// Per process: how often it was sampled, its RSS first, at peak and last, and its CPU use;
/// nothing when no process was sampled.
fn process_table(processes: &[(&str, &Value)]) -> String {
    if processes.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "<table><tr><th>process</th><th class=\"n\">samples</th><th class=\"n\">RSS first MB</th>\
<th class=\"n\">RSS peak MB</th><th class=\"n\">RSS last MB</th><th class=\"n\">CPU mean %</th>\
<th class=\"n\">CPU peak %</th></tr>\n",
    );
    for (i, (name, p)) in processes.iter().enumerate() {
        let s = samples(p);
        let rss_peak = num(&p["peak_rss_mb"]).or_else(|| s.iter().map(|s| s.1).reduce(f64::max));
        let cpu_peak = s.iter().skip(1).map(|s| s.2).reduce(f64::max);
        let or_dash = |v: Option<f64>| v.map_or("—".into(), val);
        out += &format!(
            "<tr><td><span class=\"sw\" style=\"background:{}\"></span>{}</td><td class=\"n\">{}</td>\
<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
            color(i),
            esc(name),
            int(s.len() as u64),
            or_dash(s.first().map(|s| s.1)),
            or_dash(rss_peak),
            or_dash(s.last().map(|s| s.1)),
            or_dash(num(&p["mean_cpu_percent"]).filter(|_| s.len() != 1)),
            or_dash(cpu_peak),
        );
    }
    out + "</table>\n"
}
