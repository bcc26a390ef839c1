//! Deadlines of allocations and port reservations. One live entry per allocation, at its
//! next deadline (its own expiry or the earliest permission/channel expiry). A min-heap: `next_deadline` is O(1) and
//! scheduling O(log n), so nothing ever scans all allocations.
//!
//! Entries are hints: a fired entry whose allocation has since moved its deadline (or gone)
//! is simply dropped by the caller, which holds the truth in `Allocation::scheduled`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::ids::AllocationId;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Due {
    Allocation(AllocationId),
    /// A port held by EVEN-PORT's R bit, by its RESERVATION-TOKEN.
    Reservation(u64),
}

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Due)>>,
}

impl Timers {
    pub fn schedule(&mut self, at: Instant, due: Due) {
        self.heap.push(Reverse((at, due)));
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns one entry that is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, Due)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(entry)| entry),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.schedule(
            t0 + Duration::from_secs(20),
            Due::Allocation(AllocationId {
                slot: 2,
                generation: 0,
            }),
        );
        timers.schedule(t0 + Duration::from_secs(10), Due::Reservation(1));
        assert_eq!(timers.next_deadline(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(9)), None);
        let due = t0 + Duration::from_secs(25);
        assert_eq!(timers.pop_due(due).map(|e| e.1), Some(Due::Reservation(1)));
        assert_eq!(
            timers.pop_due(due).map(|e| e.1),
            Some(Due::Allocation(AllocationId {
                slot: 2,
                generation: 0
            }))
        );
        assert_eq!(timers.pop_due(due), None);
        assert_eq!(timers.next_deadline(), None);
    }
}
