//! The relay-port pool of one address family: a bitmap of the configured range (one bit per
//! port, 8 KiB for the whole 16-bit space). A pick starts at a random port and takes the
//! next free one that fits (any, even, or even with its odd neighbour free for EVEN-PORT's
//! R bit), so taking and releasing cost at most a scan of the bitmap's words.

use std::ops::RangeInclusive;

use crate::core::rng::Rng;

/// What kind of port a request needs (RFC 8656 §7.2, EVEN-PORT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortNeed {
    Any,
    Even,
    /// An even port whose successor is free too, to be reserved.
    EvenPair,
}

pub(crate) struct PortPool {
    lowest: u16,
    len: usize,
    /// Bit i set: port lowest+i is free.
    free: Vec<u64>,
    free_count: usize,
}

impl PortPool {
    pub(crate) fn new(range: RangeInclusive<u16>) -> Self {
        let lowest = *range.start();
        let len = range.count();
        let mut free = vec![0u64; len.div_ceil(64)];
        for i in 0..len {
            free[i / 64] |= 1 << (i % 64);
        }
        PortPool {
            lowest,
            len,
            free,
            free_count: len,
        }
    }

    /// A free port of the kind needed, starting the search at a random place; `None` if
    /// there is none. For `EvenPair` the caller takes the odd neighbour with `take_exact`.
    pub(crate) fn take(&mut self, rng: &mut Rng, need: PortNeed) -> Option<u16> {
        if self.free_count == 0 {
            return None;
        }
        let start = rng.below(self.len);
        let index = (0..self.len)
            .map(|step| (start + step) % self.len)
            .find(|i| self.fits(*i, need))?;
        self.clear(index);
        Some(self.port(index))
    }

    /// Takes a specific port if it is free.
    pub(crate) fn take_exact(&mut self, port: u16) -> bool {
        match self.index(port) {
            Some(i) if self.is_free(i) => {
                self.clear(i);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn release(&mut self, port: u16) {
        let Some(i) = self.index(port) else {
            return;
        };
        debug_assert!(!self.is_free(i), "port {port} released twice");
        if !self.is_free(i) {
            self.free[i / 64] |= 1 << (i % 64);
            self.free_count += 1;
        }
    }

    /// Whether `port` is in the range and held (by a relay socket, an open in flight or a
    /// reservation). O(1): asked for every client datagram.
    pub(crate) fn is_held(&self, port: u16) -> bool {
        self.index(port).is_some_and(|i| !self.is_free(i))
    }

    pub(crate) fn in_use(&self) -> usize {
        self.len - self.free_count
    }

    pub(crate) fn free(&self) -> usize {
        self.free_count
    }

    fn fits(&self, i: usize, need: PortNeed) -> bool {
        let even = self.port(i).is_multiple_of(2);
        match need {
            PortNeed::Any => self.is_free(i),
            PortNeed::Even => even && self.is_free(i),
            PortNeed::EvenPair => {
                even && i + 1 < self.len && self.is_free(i) && self.is_free(i + 1)
            }
        }
    }

    fn is_free(&self, i: usize) -> bool {
        self.free[i / 64] & (1 << (i % 64)) != 0
    }

    fn clear(&mut self, i: usize) {
        self.free[i / 64] &= !(1 << (i % 64));
        self.free_count -= 1;
    }

    fn port(&self, i: usize) -> u16 {
        // i < len <= 65536 and lowest + i <= the range's end, so this cannot overflow.
        self.lowest + i as u16
    }

    fn index(&self, port: u16) -> Option<usize> {
        let i = usize::from(port.checked_sub(self.lowest)?);
        (i < self.len).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_each_port_once_then_none_and_reuses_released() {
        let mut rng = Rng::new([0; 32]);
        let mut pool = PortPool::new(50000..=50003);
        let mut got: Vec<u16> = (0..4)
            .filter_map(|_| pool.take(&mut rng, PortNeed::Any))
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![50000, 50001, 50002, 50003]);
        assert_eq!(pool.take(&mut rng, PortNeed::Any), None);
        assert_eq!(pool.in_use(), 4);
        pool.release(50002);
        assert_eq!(pool.take(&mut rng, PortNeed::Any), Some(50002));
        assert_eq!(pool.in_use(), 4);
    }

    #[test]
    fn even_and_pairs() {
        let mut rng = Rng::new([5; 32]);
        let mut pool = PortPool::new(50001..=50006);
        for _ in 0..20 {
            let port = pool.take(&mut rng, PortNeed::Even).unwrap();
            assert_eq!(port % 2, 0);
            pool.release(port);
        }
        // Pairs need an even port with a free successor inside the range: 50002 or 50004
        // (50006's successor is outside).
        let port = pool.take(&mut rng, PortNeed::EvenPair).unwrap();
        assert!(port == 50002 || port == 50004, "{port}");
        assert!(pool.take_exact(port + 1));
        assert!(!pool.take_exact(port + 1), "already taken");
        assert!(!pool.take_exact(40000), "outside the range");
        let other = pool.take(&mut rng, PortNeed::EvenPair).unwrap();
        assert_eq!(other, 50006 - (port - 50002) - 2);
        assert!(pool.take_exact(other + 1));
        assert_eq!(pool.take(&mut rng, PortNeed::EvenPair), None);
        assert_eq!(pool.in_use(), 4);
    }

    #[test]
    fn whole_port_space() {
        let mut rng = Rng::new([1; 32]);
        let mut pool = PortPool::new(1..=65535);
        assert_eq!(pool.in_use(), 0);
        assert!(pool.take_exact(65535));
        pool.release(65535);
        assert!(pool.take(&mut rng, PortNeed::Any).is_some());
    }
}
