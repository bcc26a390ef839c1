//! Reconnection delays: exponential from `initial`, capped at `max`, with "equal jitter"
//! (half the delay fixed, half random) so that relays cut off together do not all come back
//! in the same instant. The randomness is a seeded xorshift: the caller's seed, no OS source.

use std::time::Duration;

/// The delays before successive reconnection attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    state: u64,
}

impl Backoff {
    /// Delays from `initial` up to `max`, jittered from `seed`.
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            current: initial,
            // xorshift must not start at 0.
            state: seed | 1,
        }
    }

    /// The next delay: in [d/2, d] for the current step d, which then doubles up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = step / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if nanos == 0 {
            0
        } else {
            self.random() % (nanos + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// Back to `initial` (after a successful join).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    fn random(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut backoff = Backoff::new(1000 * MS, 8000 * MS, 42);
        for step in [1000, 2000, 4000, 8000, 8000, 8000] {
            let delay = backoff.next_delay();
            assert!(
                delay >= step * MS / 2 && delay <= step * MS,
                "{delay:?} not in [{}, {step}] ms",
                step / 2
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= 1000 * MS);
    }

    #[test]
    fn different_seeds_spread_the_delays() {
        let delays: Vec<Duration> = (1..=8)
            .map(|seed| Backoff::new(1000 * MS, 8000 * MS, seed).next_delay())
            .collect();
        let mut distinct = delays.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 4, "{delays:?}");
    }

    #[test]
    fn a_max_below_initial_is_initial() {
        let mut backoff = Backoff::new(1000 * MS, MS, 1);
        for _ in 0..4 {
            assert!(backoff.next_delay() <= 1000 * MS);
        }
    }
}
