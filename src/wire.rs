//! Conversions between protobuf well-known types and std types, so each server and the
//! CLI convert durations and timestamps the same way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the one time representation stored by Lockstep.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A stored millisecond time as a protobuf timestamp (`None` for 0, "never").
pub fn timestamp(millis: u64) -> Option<crate::wkt::Timestamp> {
    (millis > 0).then(|| crate::wkt::Timestamp {
        seconds: (millis / 1000) as i64,
        nanos: ((millis % 1000) * 1_000_000) as i32,
    })
}

/// A protobuf timestamp as milliseconds since the epoch (0 when absent or negative).
pub fn millis_of(ts: Option<&crate::wkt::Timestamp>) -> u64 {
    ts.map(|t| (t.seconds.max(0) as u64) * 1000 + (t.nanos.max(0) as u64) / 1_000_000)
        .unwrap_or(0)
}

/// A std duration as a protobuf duration.
pub fn duration(d: Duration) -> crate::wkt::Duration {
    crate::wkt::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A protobuf duration as a std duration; `None` when absent, negative or out of range.
pub fn std_duration(d: Option<&crate::wkt::Duration>) -> Option<Duration> {
    let d = d?;
    if d.seconds < 0 || d.nanos < 0 {
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_to_the_millisecond() {
        let ms = 1_700_000_123_456;
        assert_eq!(millis_of(timestamp(ms).as_ref()), ms);
        assert_eq!(timestamp(0), None);
    }

    #[test]
    fn durations_refuse_negative_values() {
        let neg = crate::wkt::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(std_duration(Some(&neg)), None);
        let d = Duration::from_millis(1500);
        assert_eq!(std_duration(Some(&duration(d))), Some(d));
    }
}
