//! The only place that reads the clocks (DESIGN.md, convention 1; `clippy.toml`'s
//! `disallowed-methods` keeps it so).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::core::Now;

/// The time now: the one place the relay reads the clock.
pub fn now() -> Now {
    Now {
        instant: monotonic(),
        unix_secs: unix_now(),
    }
}

/// Seconds since the Unix epoch (0 if the system clock is set before it): credential and
/// nonce expiry, the process start time.
#[allow(clippy::disallowed_methods)] // the one reader of the wall clock
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[allow(clippy::disallowed_methods)] // the one reader of the monotonic clock
fn monotonic() -> Instant {
    Instant::now()
}
