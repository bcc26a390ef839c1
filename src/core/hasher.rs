//! A keyed hasher for maps indexed by client addresses. std's `RandomState` would read the OS
//! random source inside the core; this one takes its key from the core's seeded RNG, so maps
//! stay deterministic in tests and unpredictable (hash-flooding resistant) in production.
//!
//! A key such as a `ClientKey` (transport, socket address) reaches the hasher as several
//! small writes (a discriminant, a length, the IP bytes, the port...). SipHash pays a call and its
//! buffering for each, which the relay's profile showed as half the instructions of a
//! relayed ChannelData packet. So the writes are gathered here first and SipHash absorbs
//! them in one call.

use std::hash::{BuildHasher, DefaultHasher, Hasher};

#[derive(Clone)]
pub(super) struct SeededState {
    /// SipHash with a secret prefix: the state after absorbing the key is secret. Kept
    /// absorbed, so that each hash starts from a copy instead of absorbing the key again.
    keyed: DefaultHasher,
}

impl SeededState {
    pub(super) fn new(key: [u64; 2]) -> Self {
        let mut keyed = DefaultHasher::new();
        keyed.write_u64(key[0]);
        keyed.write_u64(key[1]);
        SeededState { keyed }
    }
}

impl BuildHasher for SeededState {
    type Hasher = GatheringHasher;

    fn build_hasher(&self) -> GatheringHasher {
        GatheringHasher {
            inner: self.keyed.clone(),
            buf: [0; GATHER],
            len: 0,
        }
    }
}

/// Bytes gathered before SipHash absorbs them: a whole IPv6 `ClientKey`.
const GATHER: usize = 64;

/// SipHash over the concatenation of everything written, absorbed in as few calls as the
/// buffer allows. The result is the same as writing those bytes to SipHash directly.
pub(super) struct GatheringHasher {
    inner: DefaultHasher,
    buf: [u8; GATHER],
    len: usize,
}

impl Hasher for GatheringHasher {
    fn write(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > GATHER {
            self.inner.write(&self.buf[..self.len]);
            self.len = 0;
            if bytes.len() > GATHER {
                self.inner.write(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn finish(&self) -> u64 {
        let mut inner = self.inner.clone();
        inner.write(&self.buf[..self.len]);
        inner.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hash;
    use std::net::SocketAddr;

    fn hash_of(state: &SeededState, value: &impl Hash) -> u64 {
        state.hash_one(value)
    }

    #[test]
    fn equals_siphash_of_the_concatenated_writes() {
        let state = SeededState::new([1, 2]);
        let mut gathered = state.build_hasher();
        let mut direct = DefaultHasher::new();
        direct.write_u64(1);
        direct.write_u64(2);
        let long = [7u8; 100];
        for piece in [&b"ab"[..], &[0u8; 40], &long, b"c", &[9u8; 30]] {
            gathered.write(piece);
            direct.write(piece);
        }
        assert_eq!(gathered.finish(), direct.finish());
    }

    #[test]
    fn depends_on_the_key_and_the_address() {
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        let s1 = SeededState::new([1, 2]);
        let s2 = SeededState::new([3, 4]);
        assert_eq!(hash_of(&s1, &a), hash_of(&s1, &a));
        assert_ne!(hash_of(&s1, &a), hash_of(&s1, &b));
        assert_ne!(hash_of(&s1, &a), hash_of(&s2, &a));
    }
}
