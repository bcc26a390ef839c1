//! Bandwidth limits (`--max-bps-per-allocation`, `--max-bps-per-user`, `--max-bps-total`):
//! one token bucket per allocation, per user and for the whole relay. A relayed datagram
//! takes its payload bytes from every limited level or from none; both directions take from
//! the same buckets. Buckets hold only tokens and the time of their last refill: the rate
//! and the burst are read from the `Config` at each use, so a reloaded configuration
//! applies at the next datagram.
//!
//! What counts is the payload (what the peer sends or receives, the same bytes as the
//! `relay_bytes_relayed_total` counter): not the ChannelData or Data indication framing nor
//! the IP and UDP headers, which depend on the client's transport and not on what the user
//! sends. A limit is therefore in application bits per second.

use std::time::{Duration, Instant};

use super::Allocations;
use crate::core::config::BandwidthLimits;
use crate::core::ids::AllocationId;

/// How long a bucket can send at line rate after being idle: 100 ms of the limit. Short
/// enough that a limit holds over any second; long enough to pass a video frame's burst of
/// packets without loss.
const BURST: Duration = Duration::from_millis(100);

/// The largest payload one datagram can carry (ChannelData's 16-bit length). A bucket always
/// holds at least this much, so that a full-size datagram can pass at any limit; at low
/// limits (under ~5 Mbit/s) this, not `BURST`, sizes the bucket.
const LARGEST_DATAGRAM: f64 = 65_535.0;

/// Which level refused a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    PerAllocation,
    PerUser,
    Total,
}

/// Bytes that may be sent now, refilled with time at the level's rate up to its burst.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokenBucket {
    bytes: f64,
    /// When `bytes` was last brought up to date; `None`: never used, so full.
    refilled: Option<Instant>,
}

impl TokenBucket {
    /// Brings the bucket up to `now` at `bits_per_second`; the bytes it holds.
    fn refill(&mut self, now: Instant, bits_per_second: u64) -> f64 {
        let rate = bits_per_second as f64 / 8.0;
        let burst = (rate * BURST.as_secs_f64()).max(LARGEST_DATAGRAM);
        self.bytes = match self.refilled {
            None => burst,
            Some(last) => {
                let elapsed = now.saturating_duration_since(last).as_secs_f64();
                (self.bytes + elapsed * rate).min(burst)
            }
        };
        // Time never runs backwards for a bucket (an input with an older `now` refills
        // nothing).
        self.refilled = Some(self.refilled.map_or(now, |last| last.max(now)));
        self.bytes
    }
}

/// The three buckets a datagram of one allocation passes through.
pub(crate) struct Buckets<'a> {
    pub(crate) allocation: &'a mut TokenBucket,
    pub(crate) user: Option<&'a mut TokenBucket>,
    pub(crate) total: &'a mut TokenBucket,
}

impl Buckets<'_> {
    /// Takes `len` bytes from every limited bucket, or from none and names the first level
    /// that has too few (allocation, then user, then total). No allocation, no lookup.
    pub(crate) fn charge(
        self,
        len: usize,
        now: Instant,
        limits: &BandwidthLimits,
    ) -> Result<(), Limited> {
        let len = len as f64;
        let levels = [
            (
                limits.per_allocation,
                Some(self.allocation),
                Limited::PerAllocation,
            ),
            (limits.per_user, self.user, Limited::PerUser),
            (limits.total, Some(self.total), Limited::Total),
        ];
        let mut limited: [Option<&mut TokenBucket>; 3] = [None, None, None];
        for (slot, (rate, bucket, level)) in limited.iter_mut().zip(levels) {
            if let (Some(rate), Some(bucket)) = (rate, bucket) {
                if bucket.refill(now, rate) < len {
                    return Err(level);
                }
                *slot = Some(bucket);
            }
        }
        for bucket in limited.into_iter().flatten() {
            bucket.bytes -= len;
        }
        Ok(())
    }
}

impl Allocations {
    /// Takes a relayed datagram's `len` payload bytes from the bandwidth buckets of
    /// allocation `id`, its user and the relay (see the module docs), or says which level is
    /// full. Two slab indexings, no hashing. A gone allocation is not this check's business.
    pub(crate) fn charge(
        &mut self,
        id: AllocationId,
        len: usize,
        now: Instant,
        limits: &BandwidthLimits,
    ) -> Result<(), Limited> {
        let Some(allocation) = self.slots.get_mut(id) else {
            return Ok(());
        };
        Buckets {
            user: self.user_buckets.get_mut(allocation.user_bucket),
            allocation: &mut allocation.bucket,
            total: &mut self.total_bucket,
        }
        .charge(len, now, limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn burst_then_rate() {
        // 8 Mbit/s: 1 MB/s, a burst of 100 kB.
        let t0 = Instant::now();
        let mut bucket = TokenBucket::default();
        assert_eq!(bucket.refill(t0, 8_000_000), 100_000.0);
        bucket.bytes = 0.0;
        assert_eq!(bucket.refill(t0 + 10 * MS, 8_000_000), 10_000.0);
        // Capped at the burst, however long it was idle.
        assert_eq!(bucket.refill(t0 + 10_000 * MS, 8_000_000), 100_000.0);
        // An older `now` refills nothing and does not move the clock back.
        bucket.bytes = 0.0;
        assert_eq!(bucket.refill(t0, 8_000_000), 0.0);
        assert_eq!(bucket.refill(t0 + 10_001 * MS, 8_000_000), 1_000.0);
    }

    #[test]
    fn low_rates_still_pass_a_full_size_datagram() {
        let mut bucket = TokenBucket::default();
        assert_eq!(bucket.refill(Instant::now(), 8_000), LARGEST_DATAGRAM);
    }

    #[test]
    fn all_or_nothing() {
        let t0 = Instant::now();
        let limits = BandwidthLimits {
            per_allocation: Some(8_000_000),
            per_user: None,
            total: Some(800_000),
        };
        let (mut allocation, mut total) = (TokenBucket::default(), TokenBucket::default());
        let charge = |allocation: &mut TokenBucket, total: &mut TokenBucket, len| {
            Buckets {
                allocation,
                user: None,
                total,
            }
            .charge(len, t0, &limits)
        };
        assert_eq!(charge(&mut allocation, &mut total, 65_535), Ok(()));
        // The total refuses: the allocation's bucket keeps its bytes.
        assert_eq!(charge(&mut allocation, &mut total, 1), Err(Limited::Total));
        assert_eq!(allocation.bytes, 100_000.0 - 65_535.0);
        assert_eq!(
            charge(&mut allocation, &mut total, 40_000),
            Err(Limited::PerAllocation)
        );
    }
}
