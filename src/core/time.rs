//! The time as the core sees it. The driver reads the clock (`driver/clock.rs`); the core
//! only ever receives it as an argument.

/// The time as the core sees it: a monotonic instant for lifetimes and the Unix time in
/// seconds for credential and nonce expiry. Both are read by the driver, never by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time, for lifetimes and deadlines.
    pub instant: std::time::Instant,
    /// Unix time in seconds, for credential and nonce expiry.
    pub unix_secs: u64,
}
