//! The services' one clock for stored timestamps.

use chrono::{DateTime, Utc};

/// Now, truncated to the microsecond precision PostgreSQL stores, so that a value written and
/// read back compares equal.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_has_no_sub_microsecond_part() {
        assert_eq!(super::now().timestamp_subsec_nanos() % 1_000, 0);
    }
}
