//! Admission of unauthenticated answers (Binding success, 400, 401, 420): the relay must not
//! be a reflector that sends a spoofed victim more than it received, nor punish the many
//! clients that share one NAT address.
//!
//! Every request from a source earns a byte credit of `FACTOR` times its own size, and an
//! answer is sent only if the credit of its source covers it. An ordinary answer is smaller
//! than three times its request (the 401 is kept minimal for that), so any number of clients
//! behind one address are each answered at once, whatever their rate; a flood with a
//! victim's address gets at most three bytes per byte sent. What an answer leaves unspent
//! stays in the source's account up to `MAX_CREDIT`, so that an answer slightly larger than
//! 3x (a 401 with a long realm to a minimal request) goes out on the retransmission.
//!
//! Accounts are a fixed table indexed by a keyed hash of the source IP: sources that collide
//! share one account, which changes nothing about the bound (every byte of credit was earned
//! by a request, three for one), and memory never grows with the number of sources. There is
//! no clock: credit is earned by requests only.

use std::hash::BuildHasher;
use std::net::IpAddr;

use crate::core::hasher::SeededState;

const ACCOUNTS: usize = 4096;
/// Bytes of answer a source may receive per byte of its requests.
pub(crate) const FACTOR: usize = 3;
/// Credit an account may hold between requests: a few answers' worth, so that a burst of
/// spoofed requests cannot draw on much more than its own credit.
pub(crate) const MAX_CREDIT: u32 = 1024;

pub(crate) struct Admission {
    credit: Box<[u32]>,
    hasher: SeededState,
}

impl Admission {
    pub(crate) fn new(hasher: SeededState) -> Self {
        Admission {
            credit: vec![0; ACCOUNTS].into_boxed_slice(),
            hasher,
        }
    }

    /// Credits `source` for a request of `request_len` bytes and takes `answer_len` from it;
    /// false (nothing taken) when the credit does not cover the answer.
    pub(crate) fn admit(&mut self, source: IpAddr, request_len: usize, answer_len: usize) -> bool {
        let index = (self.hasher.hash_one(source) as usize) % ACCOUNTS;
        let credit = &mut self.credit[index];
        let earned = u32::try_from(request_len.saturating_mul(FACTOR)).unwrap_or(u32::MAX);
        let available = credit.saturating_add(earned);
        let cost = u32::try_from(answer_len).unwrap_or(u32::MAX);
        let (admitted, left) = match available.checked_sub(cost) {
            Some(left) => (true, left),
            None => (false, available),
        };
        *credit = left.min(MAX_CREDIT);
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_up_to_three_times_the_request_always_pass() {
        let mut admission = Admission::new(SeededState::new([1, 2]));
        let nat: IpAddr = "198.51.100.1".parse().unwrap();
        // Any number of requests from one address, each answered with exactly 3x.
        assert!((0..100_000).all(|_| admission.admit(nat, 28, 84)));
    }

    #[test]
    fn larger_answers_are_paid_from_banked_credit_up_to_the_cap() {
        let mut admission = Admission::new(SeededState::new([1, 2]));
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        // A fresh account holds nothing: 61 bytes for a 20-byte request is refused, and the
        // 60 it earned are kept.
        assert!(!admission.admit(a, 20, 61));
        assert!(admission.admit(a, 20, 61)); // 120 available
        // Requests without (or with small) answers bank credit, but never beyond the cap.
        for _ in 0..1000 {
            assert!(admission.admit(a, 100, 0));
        }
        // The cap plus one request's earning, and not a byte more.
        assert!(!admission.admit(a, 20, MAX_CREDIT as usize + 61));
        assert!(admission.admit(a, 20, MAX_CREDIT as usize + 60));
        assert!(!admission.admit(a, 20, 61));
        // Another source has its own account (these two do not collide).
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        assert!(admission.admit(b, 20, 60));
        assert!(!admission.admit(b, 20, 61));
    }
}
