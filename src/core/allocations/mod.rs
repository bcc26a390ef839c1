//! Everything an allocation owns, kept by one owner: `Allocations`. Its fields are private,
//! so the slots and their generations, the client index, the per-user counts, the port
//! pools, the EVEN-PORT reservations, the opens in flight for gone allocations and the timer
//! wheel change together, through the small API below, or not at all. The API returns plain
//! values (relay sockets to close, ports to open); it never produces outputs.
//!
//! The rule it keeps (checked by `check`): every port taken from a pool is held by exactly
//! one allocation's relay socket (opening or open), one reservation, or one open in flight
//! for an allocation that is gone; every live allocation and reservation has exactly one
//! timer entry; the per-user counts are the allocations and reservations of each user.

pub(super) mod allocation;
pub(crate) mod bandwidth;
mod invariants;
pub(super) mod ports;
pub(super) mod slots;
pub(super) mod timer_wheel;

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use slab::Slab;

use self::allocation::{Allocation, NewAllocation, RelaySocket};
use self::bandwidth::TokenBucket;
use self::ports::{PortNeed, PortPool};
use self::slots::AllocationTable;
use self::timer_wheel::{Due, TimerHandle, Timers};
use super::client::ClientKey;
use super::hasher::SeededState;
use super::ids::{AllocationId, Family, RelayId};
use super::rng::Rng;
use super::server::OpenError;
use super::usage::Usage;

pub use invariants::Footprint;

/// Ports tried for one relay socket before giving up (508).
const MAX_BIND_ATTEMPTS: u8 = 8;

/// How long a port reserved by EVEN-PORT's R bit waits to be claimed (RFC 8656 §7.2: ~30 s).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// A relay port held by EVEN-PORT's R bit until claimed or expired.
#[derive(Debug, Clone)]
struct Reservation {
    family: Family,
    port: u16,
    expires_at: Instant,
    /// Its one entry in the timer wheel.
    timer: TimerHandle,
    /// Whose quota it counts against (`quota_user` of the Allocate that reserved it).
    user: String,
}

/// Why a new allocation or a claim is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The user's quota is full (486).
    Quota,
    /// The relay is full, or the reservation is unknown or over (508).
    Capacity,
    /// The reservation is for the other address family (400).
    WrongFamily,
}

/// What a new allocation takes of the quotas: one slot, or two with EVEN-PORT's R bit; a
/// RESERVATION-TOKEN's claim gives its reservation's slot back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Demand {
    pub(crate) slots: usize,
    pub(crate) claim: Option<u64>,
}

/// The relay sockets an allocation leaves behind when it goes: close them.
pub(crate) type RelaysToClose = [Option<RelayId>; 2];

/// What the driver's answer to an open means for the allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opened {
    /// The allocation is gone: its port went back to the pool; close the socket if bound.
    Orphan { close: Option<RelayId> },
    /// Every relay socket of the allocation is bound: answer the Allocate.
    Ready,
    /// Bound; another family's socket is still being opened.
    Waiting,
    /// The port was taken by someone else: open this one instead.
    Retry { port: u16 },
    /// No port could be bound: the allocation has failed (remove it, answer 508).
    Failed,
}

/// What expired: allocations removed (for their usage records), and their relay sockets
/// to close, in order.
#[derive(Default)]
pub(crate) struct Expired {
    pub(crate) ended: Vec<(AllocationId, Allocation)>,
    pub(crate) close: Vec<RelayId>,
}

/// What the owner keeps per user while the user has allocations or reservations.
#[derive(Debug, Clone, Copy)]
struct UserBooks {
    /// Live allocations and reservations, for `max_allocations_per_user`.
    count: usize,
    /// The user's bandwidth bucket in `user_buckets`; each of their allocations holds it.
    bucket: usize,
}

/// The owner of all allocation bookkeeping (see the module docs).
pub(crate) struct Allocations {
    slots: AllocationTable,
    by_client: HashMap<ClientKey, AllocationId, SeededState>,
    /// Per user: live allocations and reservations, and their bandwidth bucket.
    user_counts: HashMap<String, UserBooks, SeededState>,
    /// Bandwidth buckets of the users in `user_counts`, indexed from their allocations, so
    /// that the data path finds a user's bucket without hashing the user name.
    user_buckets: Slab<TokenBucket>,
    /// The whole relay's bandwidth bucket.
    total_bucket: TokenBucket,
    /// Bucket times count from here (the first charge): integers on the data path.
    bandwidth_epoch: Option<Instant>,
    /// One pool per family (RFC 8656 §7.2 allows the same port number in both).
    ports: [PortPool; 2],
    /// Ports held for a later Allocate with RESERVATION-TOKEN, by token.
    reservations: HashMap<u64, Reservation, SeededState>,
    /// Ports of relay sockets still being opened for an allocation that is gone. They stay
    /// taken until the driver's completion arrives: until then the bind may still succeed,
    /// and handing the port to another allocation would race with it.
    orphaned_opens: HashMap<(AllocationId, Family), u16, SeededState>,
    timers: Timers,
}

impl Allocations {
    pub(crate) fn new(ports: RangeInclusive<u16>, hasher: &SeededState) -> Self {
        Allocations {
            slots: AllocationTable::default(),
            by_client: HashMap::with_hasher(hasher.clone()),
            user_counts: HashMap::with_hasher(hasher.clone()),
            user_buckets: Slab::new(),
            total_bucket: TokenBucket::default(),
            bandwidth_epoch: None,
            ports: [PortPool::new(ports.clone()), PortPool::new(ports)],
            reservations: HashMap::with_hasher(hasher.clone()),
            orphaned_opens: HashMap::with_hasher(hasher.clone()),
            timers: Timers::default(),
        }
    }

    // ---- looking up -------------------------------------------------------------------

    pub(crate) fn get(&self, id: AllocationId) -> Option<&Allocation> {
        self.slots.get(id)
    }

    /// The traffic counters of an allocation, to count a relayed datagram: a slot lookup,
    /// no hashing. (Only the counters: everything else changes through `update`.)
    pub(crate) fn usage_mut(&mut self, id: AllocationId) -> Option<&mut Usage> {
        self.slots.get_mut(id).map(|a| &mut a.usage)
    }

    /// Changes the protocol state of an allocation (lifetime, permissions, channels, the
    /// Allocate's answer) and, if `change` succeeds, files its timer entry at its new next
    /// deadline. `None` if the allocation is gone.
    pub(crate) fn update<R, E>(
        &mut self,
        id: AllocationId,
        now: Instant,
        change: impl FnOnce(&mut Allocation) -> Result<R, E>,
    ) -> Option<Result<R, E>> {
        let result = change(self.slots.get_mut(id)?);
        if result.is_ok() {
            self.reschedule(id, now);
        }
        Some(result)
    }

    /// The allocation of a client, whatever its state (opening, expired but not yet fired).
    pub(crate) fn of_client(&self, client: &ClientKey) -> Option<(AllocationId, &Allocation)> {
        let id = *self.by_client.get(client)?;
        Some((id, self.slots.get(id)?))
    }

    /// The allocation of a client if it is open and has not expired (an expired one may
    /// still be indexed until its timer fires).
    pub(crate) fn live(
        &self,
        client: &ClientKey,
        now: Instant,
    ) -> Option<(AllocationId, &Allocation)> {
        self.of_client(client)
            .filter(|(_, a)| now < a.expires_at && a.is_open())
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (AllocationId, &Allocation)> {
        self.slots.iter()
    }

    /// Whether `port` of `family` is held (by a relay socket, an open or a reservation).
    /// O(1): asked for every client datagram.
    pub(crate) fn port_is_held(&self, family: Family, port: u16) -> bool {
        self.ports[family.index()].is_held(port)
    }

    /// Ports taken from the pool of `family` (sockets, opens, reservations).
    pub(crate) fn ports_in_use(&self, family: Family) -> usize {
        self.ports[family.index()].in_use()
    }

    pub(crate) fn ports_free(&self, family: Family) -> usize {
        self.ports[family.index()].free()
    }

    /// Ports held by EVEN-PORT reservations of `family`.
    pub(crate) fn ports_reserved(&self, family: Family) -> usize {
        self.reservations
            .values()
            .filter(|r| r.family == family)
            .count()
    }

    /// When the next timer entry fires.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    // ---- quotas and ports for a new allocation ----------------------------------------

    /// The per-user quota (486) and the total (508) a new allocation must fit. A port held
    /// by EVEN-PORT's R bit counts as an allocation in both, for the user who reserved it:
    /// it is an allocation to come, and otherwise a user could hold ports past every limit
    /// by reserving and deleting. Claiming a reservation turns its slot into the allocation.
    pub(crate) fn within_limits(
        &self,
        user: &str,
        demand: Demand,
        now: Instant,
        max_per_user: usize,
        max_total: usize,
    ) -> Result<(), Refusal> {
        let claimed = demand
            .claim
            .and_then(|token| self.reservations.get(&token))
            .filter(|r| now < r.expires_at);
        let own_claim = claimed.is_some_and(|r| r.user == user);
        let held = self.user_counts.get(user).map_or(0, |books| books.count);
        let held = held.saturating_sub(usize::from(own_claim));
        if held + demand.slots > max_per_user {
            return Err(Refusal::Quota);
        }
        let total = (self.slots.len() + self.reservations.len())
            .saturating_sub(usize::from(claimed.is_some()));
        if total + demand.slots > max_total {
            return Err(Refusal::Capacity);
        }
        Ok(())
    }

    /// One port per family, or none at all.
    pub(crate) fn take_ports(
        &mut self,
        families: &[Family],
        need: PortNeed,
        rng: &mut Rng,
    ) -> Option<[Option<u16>; 2]> {
        let mut ports = [None, None];
        for family in families {
            match self.ports[family.index()].take(rng, need) {
                Some(port) => ports[family.index()] = Some(port),
                None => {
                    for (index, port) in ports.iter().enumerate() {
                        if let Some(port) = port {
                            self.ports[index].release(*port);
                        }
                    }
                    return None;
                }
            }
        }
        Some(ports)
    }

    /// The port an earlier EVEN-PORT (R bit) reserved; an unknown or expired token is 508.
    pub(crate) fn claim_reservation(
        &mut self,
        token: u64,
        family: Family,
        now: Instant,
    ) -> Result<[Option<u16>; 2], Refusal> {
        let reservation = self.reservations.get(&token).ok_or(Refusal::Capacity)?;
        if reservation.expires_at <= now {
            return Err(Refusal::Capacity); // its timer releases the port
        }
        if reservation.family != family {
            return Err(Refusal::WrongFamily);
        }
        let reservation = self.reservations.remove(&token).ok_or(Refusal::Capacity)?;
        self.timers
            .cancel(reservation.timer, Due::Reservation(token));
        // Its slot passes to the allocation that claims it.
        self.uncount_user(&reservation.user);
        let mut ports = [None, None];
        ports[family.index()] = Some(reservation.port);
        Ok(ports)
    }

    /// Holds the odd neighbour of the even port just taken, for RESERVATION_LIFETIME, and
    /// returns its token (a token is returned even if the neighbour was gone meanwhile).
    pub(crate) fn reserve_next(
        &mut self,
        user: &str,
        family: Family,
        ports: &[Option<u16>; 2],
        now: Instant,
        rng: &mut Rng,
    ) -> u64 {
        let token = rng.next_u64();
        if let Some(port) = ports[family.index()].and_then(|p| p.checked_add(1))
            && self.ports[family.index()].take_exact(port)
        {
            let expires_at = now + RESERVATION_LIFETIME;
            let timer = self
                .timers
                .schedule(now, expires_at, Due::Reservation(token));
            self.reservations.insert(
                token,
                Reservation {
                    family,
                    port,
                    expires_at,
                    timer,
                    user: user.to_owned(),
                },
            );
            // The user's bucket is held for the allocation to come.
            self.count_user(user);
        }
        token
    }

    /// Gives a reservation back to the pool (its allocation failed).
    pub(crate) fn cancel_reservation(&mut self, token: u64) {
        if let Some(reservation) = self.reservations.remove(&token) {
            self.timers
                .cancel(reservation.timer, Due::Reservation(token));
            self.uncount_user(&reservation.user);
            self.ports[reservation.family.index()].release(reservation.port);
        }
    }

    // ---- an allocation's life ---------------------------------------------------------

    /// Files a new allocation (its relay sockets `Opening` on ports taken above) under its
    /// client and its user's quota.
    pub(crate) fn create(&mut self, new: NewAllocation) -> AllocationId {
        let user_bucket = self.count_user(quota_user(&new.username));
        let allocation = Allocation::new(new, user_bucket);
        let client = allocation.client;
        let id = self.slots.insert(allocation);
        self.by_client.insert(client, id);
        id
    }

    /// The driver's answer to an open of `family`'s relay socket for `id`.
    pub(crate) fn relay_opened(
        &mut self,
        id: AllocationId,
        family: Family,
        result: Result<RelayId, OpenError>,
        rng: &mut Rng,
    ) -> Opened {
        let state = self.slots.get(id).map(|a| a.relay(family));
        let Some(RelaySocket::Opening { port, attempts }) = state else {
            // The allocation went away meanwhile (the ID's generation no longer matches, even
            // if a new allocation sits in the same slot): don't leak the socket, and give its
            // port back now that the bind is settled.
            if let Some(port) = self.orphaned_opens.remove(&(id, family)) {
                self.ports[family.index()].release(port);
            }
            return Opened::Orphan { close: result.ok() };
        };
        match result {
            Ok(relay) => {
                self.set_relay(id, family, RelaySocket::Open { relay, port });
                if self.slots.get(id).is_some_and(|a| a.is_open()) {
                    Opened::Ready
                } else {
                    Opened::Waiting
                }
            }
            Err(error) => {
                let retry = match error {
                    OpenError::AddressInUse if attempts < MAX_BIND_ATTEMPTS => {
                        self.retry_port(id, family, rng)
                    }
                    _ => None,
                };
                self.ports[family.index()].release(port);
                match retry {
                    Some(next) => {
                        let attempts = attempts + 1;
                        let opening = RelaySocket::Opening {
                            port: next,
                            attempts,
                        };
                        self.set_relay(id, family, opening);
                        Opened::Retry { port: next }
                    }
                    None => {
                        self.set_relay(id, family, RelaySocket::None);
                        Opened::Failed
                    }
                }
            }
        }
    }

    fn set_relay(&mut self, id: AllocationId, family: Family, state: RelaySocket) {
        if let Some(a) = self.slots.get_mut(id) {
            a.relays[family.index()] = state;
        }
    }

    /// Another port for a relay socket whose port was in use, of the same kind. With
    /// EVEN-PORT's R bit the reservation moves along: the reserved port is always the relayed
    /// port + 1 (RFC 8656 §7.2).
    fn retry_port(&mut self, id: AllocationId, family: Family, rng: &mut Rng) -> Option<u16> {
        let allocation = self.slots.get(id)?;
        let (need, token) = (allocation.retry_need?, allocation.reservation);
        let port = self.ports[family.index()].take(rng, need)?;
        if let (PortNeed::EvenPair, Some(token)) = (need, token)
            && let Some(reservation) = self.reservations.get_mut(&token)
        {
            let pool = &mut self.ports[reservation.family.index()];
            // An `EvenPair` pick is an even port whose successor is free and in range.
            if let Some(next) = port.checked_add(1)
                && pool.take_exact(next)
            {
                pool.release(reservation.port);
                reservation.port = next;
            }
        }
        Some(port)
    }

    /// Files the allocation's one timer entry at its next deadline (moving it if it has
    /// one). Called when it goes live and after every change of a deadline (`update`).
    fn reschedule(&mut self, id: AllocationId, now: Instant) {
        let Some(allocation) = self.slots.get_mut(id) else {
            return;
        };
        let deadline = allocation.next_deadline();
        match allocation.timer {
            Some(handle) => self.timers.reschedule(handle, deadline),
            None => {
                allocation.timer = Some(self.timers.schedule(now, deadline, Due::Allocation(id)));
            }
        }
    }

    /// Deletes an allocation: its ports return to the pool (or wait for an open in flight)
    /// and its relay sockets are to be closed. Its reservation, if any, lives on. Returns
    /// what it was (for the usage record), `None` if it was gone already.
    pub(crate) fn remove(&mut self, id: AllocationId) -> Option<(Allocation, RelaysToClose)> {
        let mut close = [None, None];
        let allocation = self.slots.remove(id)?;
        if let Some(handle) = allocation.timer {
            self.timers.cancel(handle, Due::Allocation(id));
        }
        self.by_client.remove(&allocation.client);
        self.uncount_user(quota_user(&allocation.username));
        for family in Family::ALL {
            match allocation.relay(family) {
                RelaySocket::None => {}
                RelaySocket::Opening { port, .. } => {
                    self.orphaned_opens.insert((id, family), port);
                }
                RelaySocket::Open { relay, port } => {
                    close[family.index()] = Some(relay);
                    self.ports[family.index()].release(port);
                }
            }
        }
        Some((allocation, close))
    }

    // ---- time -------------------------------------------------------------------------

    /// Removes every allocation, permission, channel and reservation whose time is over at
    /// `now`. Also called before decisions that count live state (Allocate), since the
    /// driver's timeout may come later than the deadline.
    pub(crate) fn expire_due(&mut self, now: Instant) -> Expired {
        let mut expired = Expired::default();
        while let Some(due) = self.timers.pop_due(now) {
            self.fired(due, now, &mut expired);
        }
        expired
    }

    /// `expire_due`, and also what expired earlier in the current second (the wheel fires
    /// at the end of each second): for decisions that must not count expired state.
    pub(crate) fn expire_due_exact(&mut self, now: Instant) -> Expired {
        let mut expired = self.expire_due(now);
        while let Some(due) = self.timers.pop_due_exact(now) {
            self.fired(due, now, &mut expired);
        }
        expired
    }

    /// A timer entry has fired (and left the wheel). It is a hint: the owner's own deadline
    /// says whether anything is over; if not, the owner is filed again.
    fn fired(&mut self, due: Due, now: Instant, expired: &mut Expired) {
        let id = match due {
            Due::Allocation(id) => id,
            Due::Reservation(token) => {
                self.expire_reservation(token, now);
                return;
            }
        };
        let Some(allocation) = self.slots.get_mut(id) else {
            return;
        };
        allocation.timer = None;
        if allocation.expires_at <= now {
            if let Some((allocation, close)) = self.remove(id) {
                expired.ended.push((id, allocation));
                expired.close.extend(close.into_iter().flatten());
            }
            return;
        }
        allocation.sweep(now);
        self.reschedule(id, now);
    }

    fn expire_reservation(&mut self, token: u64, now: Instant) {
        let Some(reservation) = self.reservations.get_mut(&token) else {
            return;
        };
        if reservation.expires_at > now {
            reservation.timer =
                self.timers
                    .schedule(now, reservation.expires_at, Due::Reservation(token));
            return;
        }
        if let Some(reservation) = self.reservations.remove(&token) {
            self.uncount_user(&reservation.user);
            self.ports[reservation.family.index()].release(reservation.port);
        }
    }

    // ---- per-user counts --------------------------------------------------------------

    /// One more allocation or reservation for `user`'s quota; the user's bandwidth bucket
    /// (made with their first allocation or reservation).
    fn count_user(&mut self, user: &str) -> usize {
        match self.user_counts.get_mut(user) {
            Some(books) => {
                books.count += 1;
                books.bucket
            }
            None => {
                let bucket = self.user_buckets.insert(TokenBucket::default());
                self.user_counts
                    .insert(user.to_owned(), UserBooks { count: 1, bucket });
                bucket
            }
        }
    }

    /// One fewer; a user with none leaves the table, and their bucket with them.
    fn uncount_user(&mut self, user: &str) {
        if let Some(books) = self.user_counts.get_mut(user) {
            books.count -= 1;
            if books.count == 0 {
                let bucket = books.bucket;
                self.user_counts.remove(user);
                self.user_buckets.try_remove(bucket);
            }
        }
    }
}

/// Whose quota an allocation counts against: the `<id>` of a REST API username
/// `<expiry>:<id>` (fresh credentials for the same id share it), else the whole username.
pub(crate) fn quota_user(username: &str) -> &str {
    match username.split_once(':') {
        Some((_, id)) if !id.is_empty() => id,
        _ => username,
    }
}
