//! Axes and numbers: linear and log scales with their ticks, round intervals of seconds, and
//! numbers as the page prints them.

/// Latency axes start at 0.1 ms; anything faster (or 0) is drawn there.
const LOG_MIN_DECADE: i32 = -1;
/// ... and end no earlier than 10 s.
const LOG_MAX_DECADE: i32 = 4;

/// Maps values to a fraction of an axis, clamped to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Scale {
    /// 0 to `max`, ticked every `step`.
    Linear { max: f64, step: f64 },
    /// 10^lo to 10^hi, ticked every decade.
    Log { lo: i32, hi: i32 },
}

/// 1, 2, 2.5 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !raw.is_finite() || raw <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let normal = raw / magnitude;
    let nice = if normal <= 1.0 {
        1.0
    } else if normal <= 2.0 {
        2.0
    } else if normal <= 2.5 {
        2.5
    } else if normal <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

impl Scale {
    /// A value axis from 0 to a round number at or above `max`.
    pub(super) fn rounded(max: f64) -> Self {
        let max = if max.is_finite() && max > 0.0 {
            max
        } else {
            1.0
        };
        let step = nice_step(max / 5.0);
        Scale::Linear {
            max: (max / step - 1e-9).ceil().max(1.0) * step,
            step,
        }
    }

    /// A time axis from 0 to exactly `max`, with round ticks within it.
    pub(super) fn exact(max: f64) -> Self {
        let max = if max.is_finite() && max > 0.0 {
            max
        } else {
            1.0
        };
        Scale::Linear {
            max,
            step: nice_step(max / 8.0),
        }
    }

    /// A latency axis from 0.1 ms to the decade above `max`, at least 10 s.
    pub(super) fn latency(max: f64) -> Self {
        let top = if max.is_finite() && max > 0.0 {
            max.log10().ceil() as i32
        } else {
            0
        };
        Scale::Log {
            lo: LOG_MIN_DECADE,
            hi: top.clamp(LOG_MAX_DECADE, 9),
        }
    }

    /// Where `v` falls, from 0 (axis start) to 1 (axis end); below the start (0 on a log scale
    /// included) is the start.
    pub(super) fn frac(self, v: f64) -> f64 {
        let f = match self {
            Scale::Linear { max, .. } => v / max,
            Scale::Log { lo, hi } => {
                let floor = 10f64.powi(lo);
                (v.max(floor).log10() - f64::from(lo)) / f64::from((hi - lo).max(1))
            }
        };
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// Labelled ticks: (value, label).
    pub(super) fn ticks(self) -> Vec<(f64, String)> {
        match self {
            Scale::Linear { max, step } => {
                // As many decimals as the step needs: 0.25 wants two, 0.5 one, 250 none.
                let decimals = (0..4)
                    .find(|d| {
                        let scaled = step * 10f64.powi(*d);
                        (scaled - scaled.round()).abs() < 1e-6
                    })
                    .unwrap_or(4) as usize;
                (0..=((max / step + 1e-9).floor() as usize).min(100))
                    .map(|i| {
                        let v = i as f64 * step;
                        let label = if decimals == 0 {
                            int(v.round() as u64)
                        } else {
                            format!("{v:.decimals$}")
                        };
                        (v, label)
                    })
                    .collect()
            }
            Scale::Log { lo, hi } => (lo..=hi)
                .map(|d| {
                    let v = 10f64.powi(d);
                    let label = if d < 0 {
                        format!("{v:.prec$}", prec = (-d) as usize)
                    } else {
                        int(v as u64)
                    };
                    (v, label)
                })
                .collect(),
        }
    }

    /// Unlabelled gridlines between ticks: 2–9 of each decade on a log scale.
    pub(super) fn minor(self) -> Vec<f64> {
        match self {
            Scale::Linear { .. } => Vec::new(),
            Scale::Log { lo, hi } => (lo..hi)
                .flat_map(|d| (2..10).map(move |m| f64::from(m) * 10f64.powi(d)))
                .collect(),
        }
    }
}

/// The first round number of seconds (1, 2, 5, 10, 15, 30, a minute, …) at least `needed`.
pub(super) fn round_seconds(needed: usize) -> usize {
    [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600]
        .into_iter()
        .find(|s| *s >= needed)
        .unwrap_or(needed)
}

/// An integer with thousands separated: 12,345.
pub(super) fn int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A measurement with about three significant digits: 0.042, 3.14, 42.1, 1,250.
pub(super) fn val(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        "—".into()
    } else if a >= 100.0 {
        let rounded = int(a.round() as u64);
        if x < 0.0 {
            format!("-{rounded}")
        } else {
            rounded
        }
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 0.1 || a == 0.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_scale_separates_decades_and_clamps_zero() {
        let scale = Scale::latency(1250.0);
        assert!(scale.frac(1000.0) - scale.frac(1.0) > 0.5);
        assert_eq!(scale.frac(0.0), scale.frac(0.1));
        assert_eq!(scale.frac(0.0), 0.0);
        assert_eq!(scale.frac(-3.0), 0.0);
        let labels: Vec<String> = scale.ticks().into_iter().map(|t| t.1).collect();
        assert_eq!(labels, ["0.1", "1", "10", "100", "1,000", "10,000"]);
    }

    #[test]
    fn linear_ticks_are_round() {
        let labels: Vec<String> = Scale::rounded(83.0)
            .ticks()
            .into_iter()
            .map(|t| t.1)
            .collect();
        assert_eq!(labels, ["0", "20", "40", "60", "80", "100"]);
        assert_eq!(Scale::exact(60.2).ticks().last().map(|t| t.0), Some(60.0));
    }
}
