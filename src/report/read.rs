//! Lenient readers of the JSON report: a field that is missing or of another type reads as
//! nothing, zero or empty, so an odd report draws gaps and dashes instead of failing.

use serde_json::Value;

/// A finite number, if the field holds one.
pub(super) fn num(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

/// A finite number, 0 when missing.
pub(super) fn num0(v: &Value) -> f64 {
    num(v).unwrap_or(0.0)
}

/// A count: a non-negative integer, or a number rounded to one.
pub(super) fn count(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| num(v).map_or(0, |x| x.max(0.0).round() as u64))
}

/// An object's entries, none when it is not one.
pub(super) fn entries(v: &Value) -> Vec<(&str, &Value)> {
    v.as_object()
        .map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default()
}
