//! The owner's own consistency check, run by tests, property tests and fuzzers after every
//! input. Cheap enough to call often in tests; never called on the production path. Its
//! maps are ordered ones: no hasher, so no random seed, in the core.

use std::collections::{BTreeMap, BTreeSet};

use super::allocation::{MAX_CHANNELS, MAX_PERMISSIONS, RelaySocket};
use super::{Allocations, quota_user};
use crate::core::ids::Family;

/// How much per-client state the core holds: what an unauthenticated flood must leave at
/// zero. (The rate limiter's table is fixed-size and not counted.)
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Allocations in the table, open or opening.
    pub allocations: usize,
    /// Entries of the client (5-tuple) index.
    pub five_tuples: usize,
    /// Users with a per-user count (allocations or reservations).
    pub users_with_allocations: usize,
    /// EVEN-PORT reservations waiting to be claimed.
    pub reservations: usize,
    /// Relay ports taken from the pools, both families.
    pub ports_in_use: usize,
    /// Outputs not yet drained by the driver.
    pub queued_outputs: usize,
    /// Whether any deadline is scheduled (the timer wheel is non-empty).
    pub timer_scheduled: bool,
    /// Entries in the timer wheel: one per live allocation and reservation, never more.
    pub timer_entries: usize,
}

impl Allocations {
    /// The state held right now (`queued_outputs` is the server's to fill in).
    pub(crate) fn footprint(&self) -> Footprint {
        Footprint {
            allocations: self.slots.len(),
            five_tuples: self.by_client.len(),
            users_with_allocations: self.user_counts.len(),
            reservations: self.reservations.len(),
            ports_in_use: self.ports.iter().map(|p| p.in_use()).sum(),
            queued_outputs: 0,
            timer_scheduled: self.timers.next_deadline().is_some(),
            timer_entries: self.timers.len(),
        }
    }

    /// Every broken invariant, described; empty when the state is consistent.
    pub(crate) fn check(&self) -> Vec<String> {
        let mut broken = Vec::new();
        for (key, id) in &self.by_client {
            match self.slots.get(*id) {
                None => broken.push(format!(
                    "5-tuple {key:?} points at missing allocation {id:?}"
                )),
                Some(a) if a.client != *key => broken.push(format!(
                    "5-tuple {key:?} points at allocation of {:?}",
                    a.client
                )),
                _ => {}
            }
        }
        if self.by_client.len() != self.slots.len() {
            broken.push(format!(
                "{} 5-tuples for {} allocations",
                self.by_client.len(),
                self.slots.len()
            ));
        }
        for family in Family::ALL {
            let held_by_allocations = self
                .slots
                .iter()
                .filter(|(_, a)| a.relay(family).port().is_some())
                .count();
            let held_by_reservations = self
                .reservations
                .values()
                .filter(|r| r.family == family)
                .count();
            let held_by_orphaned_opens = self
                .orphaned_opens
                .keys()
                .filter(|(_, f)| *f == family)
                .count();
            let in_use = self.ports[family.index()].in_use();
            if in_use != held_by_allocations + held_by_reservations + held_by_orphaned_opens {
                broken.push(format!(
                    "{family:?}: pool says {in_use} ports in use, allocations hold {held_by_allocations}, reservations {held_by_reservations}, opens of gone allocations {held_by_orphaned_opens}"
                ));
            }
        }
        // The per-user quota books: one count per live allocation of that user, no zeros.
        let mut per_user: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, a) in self.slots.iter() {
            *per_user.entry(quota_user(&a.username)).or_default() += 1;
        }
        for r in self.reservations.values() {
            *per_user.entry(r.user.as_str()).or_default() += 1;
        }
        let books: BTreeMap<&str, usize> = self
            .user_counts
            .iter()
            .map(|(user, books)| (user.as_str(), books.count))
            .collect();
        if per_user != books {
            broken.push(format!(
                "per-user allocation counts {books:?}, allocations say {per_user:?}"
            ));
        }
        // One bandwidth bucket per user in the books, the one their allocations hold.
        if self.user_buckets.len() != self.user_counts.len() {
            broken.push(format!(
                "{} user bandwidth buckets for {} users",
                self.user_buckets.len(),
                self.user_counts.len()
            ));
        }
        for (id, a) in self.slots.iter() {
            let books = self.user_counts.get(quota_user(&a.username));
            if books.is_none_or(|books| books.bucket != a.user_bucket) {
                broken.push(format!(
                    "allocation {id:?} holds user bucket {}, its user's is {:?}",
                    a.user_bucket,
                    books.map(|b| b.bucket)
                ));
            }
        }
        // One timer entry per live allocation and reservation, and no other.
        let timed = self.slots.iter().filter(|(_, a)| a.timer.is_some()).count();
        if self.timers.len() != timed + self.reservations.len() {
            broken.push(format!(
                "{} timer entries for {timed} timed allocations and {} reservations",
                self.timers.len(),
                self.reservations.len()
            ));
        }
        let mut relays = BTreeSet::new();
        for (id, a) in self.slots.iter() {
            if a.relays.iter().all(|r| *r == RelaySocket::None) {
                broken.push(format!("{id:?} has no relay socket"));
            }
            for relay in a.relays {
                if let RelaySocket::Open { relay, .. } = relay
                    && !relays.insert(relay)
                {
                    broken.push(format!("relay {relay:?} shared by two allocations"));
                }
            }
            if a.permissions.len() > MAX_PERMISSIONS || a.channels.len() > MAX_CHANNELS {
                broken.push(format!("{id:?} exceeds its permission/channel bounds"));
            }
            let numbers: BTreeSet<u16> = a.channels.iter().map(|c| c.number).collect();
            let peers: BTreeSet<_> = a.channels.iter().map(|c| c.peer).collect();
            if numbers.len() != a.channels.len() || peers.len() != a.channels.len() {
                broken.push(format!("{id:?} has a channel number or peer bound twice"));
            }
            if a.channels
                .iter()
                .any(|c| !(0x4000..=0x4FFF).contains(&c.number))
            {
                broken.push(format!("{id:?} has a channel number outside 0x4000-0x4FFF"));
            }
            if a.channels
                .iter()
                .any(|c| !a.has_family(Family::of_addr(c.peer)))
            {
                broken.push(format!(
                    "{id:?} has a channel to a peer of a family it does not relay"
                ));
            }
            if a.is_open() && a.timer.is_none() && a.allocate_response.is_some() {
                broken.push(format!("{id:?} is live but has no timer"));
            }
        }
        broken
    }
}
