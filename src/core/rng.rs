//! Seeded randomness for the core. The driver draws the seed from the OS once at start-up;
//! tests pass a fixed one. Outputs are HMAC-SHA1(seed, counter): a PRF, so relay ports and
//! nonce keys cannot be predicted from the ones a client has seen.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

pub(super) struct Rng {
    seed: [u8; 32],
    counter: u64,
}

impl Rng {
    pub(super) fn new(seed: [u8; 32]) -> Self {
        Rng { seed, counter: 0 }
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.counter += 1;
        let digest = self.block(self.counter);
        let mut word = [0u8; 8];
        word.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(word)
    }

    /// A value in `0..bound` (bound > 0); the modulo bias is below 2^-40 for our bounds.
    pub(super) fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound.max(1) as u64) as usize
    }

    pub(super) fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        out
    }

    fn block(&self, counter: u64) -> [u8; 20] {
        let mut mac = match Hmac::<Sha1>::new_from_slice(&self.seed) {
            Ok(mac) => mac,
            // HMAC accepts keys of any length; this arm is unreachable.
            Err(_) => return [0u8; 20],
        };
        mac.update(&counter.to_be_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_different_seeds_differ() {
        let mut a = Rng::new([1; 32]);
        let mut b = Rng::new([1; 32]);
        let mut c = Rng::new([2; 32]);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        assert!(xs.windows(2).all(|w| w[0] != w[1]));
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = Rng::new([3; 32]);
        let mut seen = [false; 7];
        for _ in 0..500 {
            let v = rng.below(7);
            assert!(v < 7);
            seen[v] = true;
        }
        assert!(
            seen.iter().all(|s| *s),
            "every value of a small range shows up"
        );
    }
}
