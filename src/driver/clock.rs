//! The only place that reads the clocks (DESIGN.md, convention 1).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::core::Now;

/// The time now: the one place the relay reads the clock.
pub fn now() -> Now {
    let unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Now {
        instant: Instant::now(),
        unix_secs,
    }
}
