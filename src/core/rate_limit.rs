//! A bounded-memory limit on the unauthenticated answers (401, 438) sent to each source IP,
//! so the relay cannot be used to reflect traffic at a spoofed victim. A fixed table of token
//! buckets indexed by a keyed hash of the source IP: sources that collide share a bucket,
//! which only makes the limit stricter, and memory never grows with the number of sources.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Instant;

use super::hasher::SeededState;

const BUCKETS: usize = 4096;
/// Answers a source may get in a burst, and per second after that.
const BURST: u32 = 20;
const PER_SECOND: u32 = 10;

pub struct RateLimit {
    buckets: Box<[Bucket]>,
    hasher: SeededState,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: u32,
    refilled_at: Option<Instant>,
}

impl RateLimit {
    pub fn new(hasher: SeededState) -> Self {
        let empty = Bucket {
            tokens: BURST,
            refilled_at: None,
        };
        RateLimit {
            buckets: vec![empty; BUCKETS].into_boxed_slice(),
            hasher,
        }
    }

    /// Takes a token for `source`; false when its bucket is empty.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let index = (self.hasher.hash_one(source) as usize) % BUCKETS;
        let bucket = &mut self.buckets[index];
        let elapsed = bucket
            .refilled_at
            .map_or(0, |at| now.saturating_duration_since(at).as_millis());
        let earned = u32::try_from(elapsed * u128::from(PER_SECOND) / 1000).unwrap_or(u32::MAX);
        if earned > 0 || bucket.refilled_at.is_none() {
            bucket.tokens = bucket.tokens.saturating_add(earned).min(BURST);
            bucket.refilled_at = Some(now);
        }
        if bucket.tokens == 0 {
            return false;
        }
        bucket.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_steady_rate_per_source() {
        let mut limit = RateLimit::new(SeededState::new([1, 2]));
        let t0 = Instant::now();
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        let allowed = (0..100).filter(|_| limit.allow(a, t0)).count();
        assert_eq!(allowed, BURST as usize);
        // Another source is unaffected (unless it shares the bucket; these two do not).
        assert!(limit.allow(b, t0));
        // One second later, PER_SECOND more.
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (0..100).filter(|_| limit.allow(a, t1)).count();
        assert_eq!(allowed, PER_SECOND as usize);
        // Partial seconds accumulate rather than being lost.
        let mut later = t1;
        let mut granted = 0;
        for _ in 0..10 {
            later += Duration::from_millis(50);
            granted += usize::from(limit.allow(a, later));
        }
        assert_eq!(granted, 5, "10 per second over 0.5 s");
    }
}
