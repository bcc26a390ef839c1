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
/// Time is in nanoseconds since the owner's `bandwidth_epoch`: plain integers, converted
/// from `Instant` once per datagram, not once per level.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    /// Infinite until first used: the first refill clamps it to a full burst.
    bytes: f64,
    refilled_ns: u64,
}

impl Default for TokenBucket {
    fn default() -> Self {
        TokenBucket {
            bytes: f64::INFINITY,
            refilled_ns: 0,
        }
    }
}

impl TokenBucket {
    /// Brings the bucket up to `now_ns` at `bits_per_second`; the bytes it holds. An older
    /// `now_ns` refills nothing, and the bucket's time never runs backwards.
    #[inline]
    fn refill(&mut self, now_ns: u64, bits_per_second: u64) -> f64 {
        let bytes_per_second = bits_per_second as f64 / 8.0;
        let burst = (bytes_per_second * BURST.as_secs_f64()).max(LARGEST_DATAGRAM);
        let elapsed_ns = now_ns.saturating_sub(self.refilled_ns);
        self.refilled_ns = self.refilled_ns.max(now_ns);
        let refill = elapsed_ns as f64 * bytes_per_second / 1e9;
        self.bytes = (self.bytes + refill).min(burst);
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
    /// that has too few (allocation, then user, then total). A refill without a take is
    /// harmless: it only brings a bucket up to date. No allocation, no lookup.
    pub(crate) fn charge(
        self,
        len: usize,
        now_ns: u64,
        limits: &BandwidthLimits,
    ) -> Result<(), Limited> {
        let len = len as f64;
        let fits = |bucket: &mut TokenBucket, rate: Option<u64>| {
            rate.is_none_or(|rate| bucket.refill(now_ns, rate) >= len)
        };
        if !fits(self.allocation, limits.per_allocation) {
            return Err(Limited::PerAllocation);
        }
        let mut user = self.user.filter(|_| limits.per_user.is_some());
        if let Some(user) = user.as_deref_mut()
            && !fits(user, limits.per_user)
        {
            return Err(Limited::PerUser);
        }
        if !fits(self.total, limits.total) {
            return Err(Limited::Total);
        }
        if limits.per_allocation.is_some() {
            self.allocation.bytes -= len;
        }
        if let Some(user) = user {
            user.bytes -= len;
        }
        if limits.total.is_some() {
            self.total.bytes -= len;
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
        let epoch = *self.bandwidth_epoch.get_or_insert(now);
        // u64 nanoseconds last 584 years.
        let now_ns = now.saturating_duration_since(epoch).as_nanos() as u64;
        let Some(allocation) = self.slots.get_mut(id) else {
            return Ok(());
        };
        Buckets {
            user: self.user_buckets.get_mut(allocation.user_bucket),
            allocation: &mut allocation.bucket,
            total: &mut self.total_bucket,
        }
        .charge(len, now_ns, limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn burst_then_rate() {
        // 8 Mbit/s: 1 MB/s, a burst of 100 kB.
        let mut bucket = TokenBucket::default();
        assert_eq!(bucket.refill(0, 8_000_000), 100_000.0);
        bucket.bytes = 0.0;
        assert_eq!(bucket.refill(10 * MS, 8_000_000), 10_000.0);
        // Capped at the burst, however long it was idle.
        assert_eq!(bucket.refill(10_000 * MS, 8_000_000), 100_000.0);
        // An older `now` refills nothing and does not move the clock back.
        bucket.bytes = 0.0;
        assert_eq!(bucket.refill(0, 8_000_000), 0.0);
        assert_eq!(bucket.refill(10_001 * MS, 8_000_000), 1_000.0);
    }

    #[test]
    fn low_rates_still_pass_a_full_size_datagram() {
        let mut bucket = TokenBucket::default();
        assert_eq!(bucket.refill(5 * MS, 8_000), LARGEST_DATAGRAM);
    }

    #[test]
    fn all_or_nothing() {
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
            .charge(len, 0, &limits)
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
