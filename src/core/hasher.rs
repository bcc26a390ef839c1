//! A keyed hasher for maps indexed by client addresses. std's `RandomState` would read the OS
//! random source inside the core; this one takes its key from the core's seeded RNG, so maps
//! stay deterministic in tests and unpredictable (hash-flooding resistant) in production.

use std::hash::{BuildHasher, DefaultHasher, Hasher};

#[derive(Clone)]
pub struct SeededState {
    key: [u64; 2],
}

impl SeededState {
    pub fn new(key: [u64; 2]) -> Self {
        SeededState { key }
    }
}

impl BuildHasher for SeededState {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        // SipHash with a secret prefix: the state after absorbing the key is secret.
        let mut hasher = DefaultHasher::new();
        hasher.write_u64(self.key[0]);
        hasher.write_u64(self.key[1]);
        hasher
    }
}
