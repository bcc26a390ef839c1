//! Deadlines of allocations and port reservations: a hashed timer wheel with 1 s ticks.
//!
//! Each allocation and each reservation owns exactly one entry, named by the `TimerHandle`
//! it keeps. Rescheduling moves that entry and removing the owner cancels it, both O(1), so
//! the wheel holds no more entries than there are live allocations and reservations, however
//! often they are refreshed or deleted (a lazy-deletion heap kept one entry per refresh until
//! its would-be deadline: unbounded memory from one client).
//!
//! Entries fire at the end of their second (the tick boundary at or after the deadline), so
//! up to 1 s late; the truth is the owner's own deadline, which every lookup checks, and an
//! early, late or repeated fire is harmless to the caller. `next_deadline` and finding due
//! entries use a two-level occupancy bitmap over the buckets: neither ever walks the entries.

use std::time::{Duration, Instant};

use slab::Slab;

use crate::core::ids::AllocationId;

/// Buckets, one per second: more than the longest deadline (3600 s allocation lifetime;
/// channels 600 s + 300 s hold; permissions 300 s; reservations 30 s). A deadline further
/// out (a clock far ahead of the last fire) is filed in the last bucket of the window and
/// fires early; its owner then schedules it again.
const SLOTS: usize = 4096;
const WORDS: usize = SLOTS / 64;
const TICK: Duration = Duration::from_secs(1);
const NIL: u32 = u32::MAX;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Due {
    Allocation(AllocationId),
    /// A port held by EVEN-PORT's R bit, by its RESERVATION-TOKEN.
    Reservation(u64),
}

/// The one entry of an allocation or reservation. Only its owner holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerHandle(u32);

struct Entry {
    due: Due,
    /// Exact deadline, for `pop_due_exact`.
    at: Instant,
    tick: u64,
    prev: u32,
    next: u32,
}

pub struct Timers {
    /// Tick 0; set by the first `schedule`.
    origin: Option<Instant>,
    /// The lowest tick not yet fired. Every entry's tick is in `cursor..cursor + SLOTS`, so a
    /// bucket holds the entries of one tick only.
    cursor: u64,
    entries: Slab<Entry>,
    /// Head of each bucket's doubly linked list of entries.
    heads: Vec<u32>,
    /// Bit per non-empty bucket, and a bit per non-zero word of it.
    occupied: [u64; WORDS],
    summary: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            origin: None,
            cursor: 0,
            entries: Slab::new(),
            heads: vec![NIL; SLOTS],
            occupied: [0; WORDS],
            summary: 0,
        }
    }
}

impl Timers {
    /// Files a new entry for `due` at `at`; `now` is the caller's present.
    pub fn schedule(&mut self, now: Instant, at: Instant, due: Due) -> TimerHandle {
        let origin = *self.origin.get_or_insert(now);
        let tick = self.tick_for(origin, at);
        let slot = self.entries.insert(Entry {
            due,
            at,
            tick,
            prev: NIL,
            next: NIL,
        });
        // More than 4 billion live entries cannot happen (each is an allocation or a port).
        let index = u32::try_from(slot).unwrap_or(NIL);
        self.link(index);
        TimerHandle(index)
    }

    /// Moves the entry to a new deadline; the handle stays valid.
    pub fn reschedule(&mut self, handle: TimerHandle, at: Instant) {
        let (Some(origin), Some(entry)) = (self.origin, self.entries.get(handle.0 as usize)) else {
            return;
        };
        let tick = self.tick_for(origin, at);
        if entry.tick == tick {
            if let Some(entry) = self.entries.get_mut(handle.0 as usize) {
                entry.at = at;
            }
            return;
        }
        self.unlink(handle.0);
        if let Some(entry) = self.entries.get_mut(handle.0 as usize) {
            entry.at = at;
            entry.tick = tick;
        }
        self.link(handle.0);
    }

    /// Removes the entry of `due`. A handle that is not `due`'s is left alone.
    pub fn cancel(&mut self, handle: TimerHandle, due: Due) {
        if self
            .entries
            .get(handle.0 as usize)
            .is_some_and(|e| e.due == due)
        {
            self.unlink(handle.0);
            self.entries.remove(handle.0 as usize);
        }
    }

    /// When the earliest entry fires: the end of its second.
    pub fn next_deadline(&self) -> Option<Instant> {
        let tick = self.next_occupied()?;
        Some(self.origin? + tick_duration(tick))
    }

    /// Removes and returns one entry whose tick has come at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        let origin = self.origin?;
        let elapsed = now.saturating_duration_since(origin).as_secs();
        match self.next_occupied() {
            Some(tick) if tick <= elapsed => {
                self.cursor = tick;
                let head = self.heads[bucket(tick)];
                Some(self.take(head))
            }
            _ => {
                // Nothing is due up to `now`: ticks up to it are over.
                self.cursor = self.cursor.max(elapsed + 1);
                None
            }
        }
    }

    /// Removes and returns one entry whose exact deadline is at or before `now` though its
    /// tick has not come yet (it fires at the end of the current second). Walks that one
    /// bucket: for decisions that must not count what has just expired, after `pop_due`.
    pub fn pop_due_exact(&mut self, now: Instant) -> Option<Due> {
        let tick = self.next_occupied()?;
        let mut index = self.heads[bucket(tick)];
        while index != NIL {
            let entry = &self.entries[index as usize];
            if entry.at <= now {
                return Some(self.take(index));
            }
            index = entry.next;
        }
        None
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn take(&mut self, index: u32) -> Due {
        self.unlink(index);
        self.entries.remove(index as usize).due
    }

    /// The tick an entry at `at` goes in: the end of its second, within the window.
    fn tick_for(&self, origin: Instant, at: Instant) -> u64 {
        let since = at.saturating_duration_since(origin);
        let tick = since.as_secs() + u64::from(since.subsec_nanos() > 0);
        tick.clamp(self.cursor, self.cursor + SLOTS as u64 - 1)
    }

    fn link(&mut self, index: u32) {
        let b = bucket(self.entries[index as usize].tick);
        let head = self.heads[b];
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        let entry = &mut self.entries[index as usize];
        entry.prev = NIL;
        entry.next = head;
        self.heads[b] = index;
        self.occupied[b / 64] |= 1 << (b % 64);
        self.summary |= 1 << (b / 64);
    }

    fn unlink(&mut self, index: u32) {
        let entry = &self.entries[index as usize];
        let (b, prev, next) = (bucket(entry.tick), entry.prev, entry.next);
        if prev == NIL {
            self.heads[b] = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if self.heads[b] == NIL {
            self.occupied[b / 64] &= !(1 << (b % 64));
            if self.occupied[b / 64] == 0 {
                self.summary &= !(1 << (b / 64));
            }
        }
    }

    /// The earliest tick with an entry: the first non-empty bucket at or after the cursor's,
    /// going round once.
    fn next_occupied(&self) -> Option<u64> {
        let start = bucket(self.cursor);
        let b = first_set_from(&self.occupied, self.summary, start)
            .or_else(|| first_set_from(&self.occupied, self.summary, 0))?;
        let distance = (b + SLOTS - start) % SLOTS;
        Some(self.cursor + distance as u64)
    }
}

fn bucket(tick: u64) -> usize {
    (tick % SLOTS as u64) as usize
}

fn tick_duration(tick: u64) -> Duration {
    TICK * u32::try_from(tick).unwrap_or(u32::MAX)
}

/// The first set bit at or after `from`, in O(1): one word, then the summary.
fn first_set_from(words: &[u64; WORDS], summary: u64, from: usize) -> Option<usize> {
    let (word, bit) = (from / 64, from % 64);
    let here = words[word] & (u64::MAX << bit);
    if here != 0 {
        return Some(word * 64 + here.trailing_zeros() as usize);
    }
    let later = summary & u64::MAX.checked_shl(word as u32 + 1).unwrap_or(0);
    if later == 0 {
        return None;
    }
    let word = later.trailing_zeros() as usize;
    Some(word * 64 + words[word].trailing_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed, TestRunner};
    use std::collections::{BTreeMap, HashMap};

    fn alloc(slot: usize) -> Due {
        Due::Allocation(AllocationId {
            slot,
            generation: 0,
        })
    }

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let secs = |s| t0 + Duration::from_secs(s);
        timers.schedule(t0, secs(20), alloc(2));
        timers.schedule(t0, secs(10), Due::Reservation(1));
        assert_eq!(timers.next_deadline(), Some(secs(10)));
        assert_eq!(timers.pop_due(secs(9)), None);
        assert_eq!(timers.pop_due(secs(25)), Some(Due::Reservation(1)));
        assert_eq!(timers.pop_due(secs(25)), Some(alloc(2)));
        assert_eq!(timers.pop_due(secs(25)), None);
        assert_eq!(timers.next_deadline(), None);
        assert_eq!(timers.len(), 0);
    }

    #[test]
    fn a_deadline_inside_a_second_fires_at_its_end() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let at = t0 + Duration::from_millis(2_500);
        timers.schedule(t0, at, alloc(0));
        assert_eq!(timers.next_deadline(), Some(t0 + Duration::from_secs(3)));
        assert_eq!(timers.pop_due(at), None);
        // ...but whoever must not count it once it is over can have it now.
        assert_eq!(timers.pop_due_exact(at - Duration::from_millis(1)), None);
        assert_eq!(timers.pop_due_exact(at), Some(alloc(0)));
        assert_eq!(timers.len(), 0);
    }

    #[test]
    fn one_entry_per_owner_however_often_it_moves() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let handle = timers.schedule(t0, t0 + Duration::from_secs(3600), alloc(0));
        for s in (1..3600).rev() {
            timers.reschedule(handle, t0 + Duration::from_secs(s));
            assert_eq!(timers.len(), 1);
        }
        assert_eq!(timers.next_deadline(), Some(t0 + Duration::from_secs(1)));
        timers.cancel(handle, alloc(0));
        assert_eq!((timers.len(), timers.next_deadline()), (0, None));
    }

    #[test]
    fn a_deadline_past_the_window_fires_early_not_never() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.schedule(t0, t0 + Duration::from_secs(100_000), alloc(0));
        let edge = t0 + Duration::from_secs(SLOTS as u64 - 1);
        assert_eq!(timers.next_deadline(), Some(edge));
        assert_eq!(timers.pop_due(edge), Some(alloc(0)));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Schedule { key: u8, at_ms: u32 },
        Cancel { key: u8 },
        Advance { ms: u32 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..32, prop_oneof![0u32..5_000, 0u32..5_000_000]).prop_map(|(key, at_ms)| Op::Schedule { key, at_ms }),
            2 => (0u8..32).prop_map(|key| Op::Cancel { key }),
            2 => prop_oneof![0u32..2_000, 0u32..5_000_000].prop_map(|ms| Op::Advance { ms }),
        ]
    }

    /// The wheel against a reference model: a BTreeMap of exact deadlines. Each key has at
    /// most one entry (scheduling a key that has one moves it); an entry fires no earlier
    /// than its deadline (unless filed past the window) and within one tick after it;
    /// `next_deadline` is the end of the earliest deadline's second.
    #[test]
    fn matches_a_reference_model() {
        let mut runner = TestRunner::new(Config {
            cases: 256,
            rng_seed: RngSeed::Fixed(0x71_3e_12),
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&proptest::collection::vec(op(), 1..200), |ops| {
                let t0 = Instant::now();
                let mut now = t0;
                let mut timers = Timers::default();
                let mut handles: HashMap<u8, TimerHandle> = HashMap::new();
                let mut model: BTreeMap<(Instant, u8), ()> = BTreeMap::new();
                let mut deadline_of: HashMap<u8, Instant> = HashMap::new();
                // Keys last filed further out than the window, which may fire early.
                let mut beyond: HashMap<u8, bool> = HashMap::new();
                for op in ops {
                    match op {
                        Op::Schedule { key, at_ms } => {
                            let at = now + Duration::from_millis(u64::from(at_ms));
                            match handles.get(&key) {
                                Some(h) => timers.reschedule(*h, at),
                                None => {
                                    let h = timers.schedule(now, at, Due::Reservation(key.into()));
                                    handles.insert(key, h);
                                }
                            }
                            let window = TICK * (SLOTS as u32 - 2);
                            beyond.insert(key, at > now + window);
                            if let Some(old) = deadline_of.insert(key, at) {
                                model.remove(&(old, key));
                            }
                            model.insert((at, key), ());
                        }
                        Op::Cancel { key } => {
                            if let Some(h) = handles.remove(&key) {
                                timers.cancel(h, Due::Reservation(key.into()));
                                let old = deadline_of.remove(&key).unwrap();
                                model.remove(&(old, key));
                            }
                        }
                        Op::Advance { ms } => {
                            now += Duration::from_millis(u64::from(ms));
                            while let Some(due) = timers.pop_due(now) {
                                let Due::Reservation(key) = due else {
                                    unreachable!()
                                };
                                let key = key as u8;
                                handles.remove(&key);
                                let at = deadline_of.remove(&key).unwrap();
                                model.remove(&(at, key));
                                // Early only if it was filed past the window.
                                prop_assert!(at <= now || beyond[&key], "fired early");
                            }
                            // Nothing due is left behind, beyond the current second.
                            if let Some(((at, _), _)) = model.first_key_value() {
                                prop_assert!(*at + TICK > now, "late by more than a tick");
                            }
                            prop_assert!(timers.next_deadline().is_none_or(|d| d > now));
                        }
                    }
                    prop_assert_eq!(timers.len(), model.len());
                    if let Some(((at, _), _)) = model.first_key_value() {
                        let next = timers.next_deadline().unwrap();
                        prop_assert!(next >= now.min(*at) && next < *at + TICK);
                    } else {
                        prop_assert_eq!(timers.next_deadline(), None);
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}
