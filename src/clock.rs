//! Wall-clock time as Unix numbers: the one place the epoch arithmetic lives.
//!
//! The store keeps times as Unix milliseconds, signature schemes and metrics
//! use Unix seconds. A clock set before 1970 reads as 0 and one past the
//! range of the integer saturates, so no caller has to handle either.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch at `t`.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Seconds since the Unix epoch at `t`.
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> i64 {
    unix_secs(SystemTime::now())
}

/// The instant `ms` milliseconds after the Unix epoch.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_the_epoch_reads_as_zero() {
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(unix_ms(before), 0);
        assert_eq!(unix_secs(before), 0);
    }

    #[test]
    fn milliseconds_round_trip() {
        let ms = 1_700_000_000_123;
        assert_eq!(unix_ms(from_unix_ms(ms)), ms);
        assert_eq!(unix_secs(from_unix_ms(ms)), 1_700_000_000);
    }
}
