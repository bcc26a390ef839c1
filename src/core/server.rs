//! The sans-IO TURN server: datagrams and time in, outputs out. `handle_*` take input,
//! `poll_output`/`poll_timeout` give what the driver must do next. The data path
//! (ChannelData, Send, peer datagrams) answers through return values and never allocates.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Instant;

use stun_codec::MessageClass;

use super::allocations::allocation::{Allocation, RelaySocket};
use super::allocations::ports::PortPool;
use super::allocations::slots::AllocationTable;
use super::allocations::timer_wheel::{Due, TimerHandle, Timers};
use super::auth::admission::Admission;
use super::auth::nonce::NonceKey;
use super::config::Config;
use super::counters::{Counters, Gauges};
use super::hasher::SeededState;
use super::ids::{AllocationId, Family, ListenerId, RelayId};
use super::policy::PeerPolicy;
use super::rng::Rng;
use super::time::Now;
use super::wire::relayed_frames::{write_channel_data_header, write_data_indication_header};
use super::wire::{self as message, Framing, Header};

/// Bytes the driver leaves free in front of a peer datagram, so the core can write the
/// ChannelData header (4 bytes) or a Data indication header (up to 48 bytes) in place.
pub const HEADROOM: usize = 48;
/// Bytes after the payload the buffer must have for a Data indication's padding.
pub const TAILROOM: usize = 3;

/// Send this slice of the datagram just handled from `relay` to `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub relay: RelayId,
    pub peer: SocketAddr,
    pub payload: Range<usize>,
}

/// Send this slice of the peer datagram's buffer to `client` from `listener`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliver {
    pub listener: ListenerId,
    pub client: SocketAddr,
    pub frame: Range<usize>,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A STUN response (or a retransmitted one) to a client.
    ToClient {
        listener: ListenerId,
        client: SocketAddr,
        bytes: Vec<u8>,
    },
    /// Bind a UDP socket to `addr`, then report through `Server::handle_relay_opened`.
    OpenRelay {
        allocation: AllocationId,
        family: Family,
        addr: SocketAddr,
        /// Set DF on everything this socket sends (the client sent DONT-FRAGMENT).
        dont_fragment: bool,
    },
    /// Close the relay socket; its allocation is gone.
    CloseRelay { relay: RelayId },
}

/// Why a relay socket could not be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Someone else holds the port: try another.
    AddressInUse,
    /// Out of descriptors or another failure: no point in trying another port now.
    Other,
}

/// A relay port held by EVEN-PORT's R bit until claimed or expired.
#[derive(Debug, Clone)]
pub(super) struct Reservation {
    pub family: Family,
    pub port: u16,
    pub expires_at: Instant,
    /// Its one entry in the timer wheel.
    pub timer: TimerHandle,
    /// Whose quota it counts against (`quota_user` of the Allocate that reserved it).
    pub user: String,
}

pub struct Server {
    pub(super) config: Config,
    pub(super) policy: PeerPolicy,
    pub(super) allocations: AllocationTable,
    pub(super) by_client: HashMap<(ListenerId, SocketAddr), AllocationId, SeededState>,
    pub(super) ports: [PortPool; 2],
    pub(super) timers: Timers,
    pub(super) nonces: NonceKey,
    pub(super) rng: Rng,
    pub(super) outputs: VecDeque<Output>,
    pub(super) counters: Counters,
    /// Live allocations and reservations per user, for `max_allocations_per_user`.
    pub(super) user_allocations: HashMap<String, usize, SeededState>,
    pub(super) unauthenticated_answers: Admission,
    /// Ports held for a later Allocate with RESERVATION-TOKEN, by token.
    pub(super) reservations: HashMap<u64, Reservation, SeededState>,
    /// Ports of relay sockets still being opened for an allocation that is gone. They stay
    /// taken until the driver's completion arrives: until then the bind may still succeed,
    /// and handing the port to another allocation would race with it.
    pub(super) orphaned_opens: HashMap<(AllocationId, Family), u16, SeededState>,
    /// Transaction IDs of Data indications: a random prefix and a counter, so the data path
    /// needs no call into the RNG.
    indication_prefix: [u8; 8],
    indication_counter: u32,
}

impl Server {
    pub fn new(config: Config, seed: [u8; 32]) -> Self {
        let mut rng = Rng::new(seed);
        let nonces = NonceKey::new(rng.bytes32());
        let hash_key = [rng.next_u64(), rng.next_u64()];
        let indication_prefix = rng.next_u64().to_le_bytes();
        // One pool per family (RFC 8656 §7.2 allows the same port number in both).
        let ports = [
            PortPool::new(config.ports.clone()),
            PortPool::new(config.ports.clone()),
        ];
        Server {
            policy: PeerPolicy::for_config(&config),
            config,
            allocations: AllocationTable::default(),
            by_client: HashMap::with_hasher(SeededState::new(hash_key)),
            reservations: HashMap::with_hasher(SeededState::new(hash_key)),
            orphaned_opens: HashMap::with_hasher(SeededState::new(hash_key)),
            user_allocations: HashMap::with_hasher(SeededState::new(hash_key)),
            unauthenticated_answers: Admission::new(SeededState::new(hash_key)),
            ports,
            timers: Timers::default(),
            nonces,
            rng,
            outputs: VecDeque::new(),
            counters: Counters::default(),
            indication_prefix,
            indication_counter: 0,
        }
    }

    /// A datagram from a client on a listen socket. Returns the forwarding decision for
    /// ChannelData and Send indications; everything else is answered through `poll_output`.
    pub fn handle_client_datagram(
        &mut self,
        now: Now,
        listener: ListenerId,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Option<Forward> {
        if self.is_own_socket(from) {
            self.counters.from_own_socket += 1;
            return None;
        }
        match message::classify(datagram) {
            Framing::ChannelData { channel, payload } => {
                self.channel_data_from_client(now.instant, listener, from, channel, payload)
            }
            Framing::Stun(header) => self.handle_stun(now, listener, from, datagram, header),
            Framing::Malformed => {
                self.counters.malformed += 1;
                None
            }
        }
    }

    /// Whether a client address is one of the relay's own sockets: a listen or metrics
    /// socket, or a relay socket (a held relay port on an address relay sockets send from).
    /// Such a "client" is the relay talking to itself and gets nothing: no Binding answer,
    /// no nonce, no allocation. The port test comes first and is O(1).
    fn is_own_socket(&self, from: SocketAddr) -> bool {
        let family = Family::of_addr(from);
        let own = self.policy.own_sockets();
        (self.ports[family.index()].is_held(from.port()) && own.is_relay_source(family, from.ip()))
            || own.is_service(from)
    }

    /// The effective peer policy (for the start-up log).
    pub fn peer_policy(&self) -> &PeerPolicy {
        &self.policy
    }

    fn channel_data_from_client(
        &mut self,
        now: Instant,
        listener: ListenerId,
        from: SocketAddr,
        channel: u16,
        payload: Range<usize>,
    ) -> Option<Forward> {
        let Some(allocation) = self.live_allocation(listener, from, now) else {
            self.counters.channel_data_no_allocation += 1;
            return None;
        };
        let Some(peer) = allocation.channel_peer(channel, now) else {
            self.counters.channel_data_unbound += 1;
            return None;
        };
        let RelaySocket::Open { relay, .. } = allocation.relay(Family::of_addr(peer)) else {
            self.counters.channel_data_unbound += 1;
            return None;
        };
        self.counters.relayed_to_peer_packets += 1;
        self.counters.relayed_to_peer_bytes += payload.len() as u64;
        Some(Forward {
            relay,
            peer,
            payload,
        })
    }

    /// The allocation of a 5-tuple, if it exists and has not expired (an expired one may
    /// still be in the map until its timer fires).
    pub(super) fn live_allocation(
        &self,
        listener: ListenerId,
        client: SocketAddr,
        now: Instant,
    ) -> Option<&Allocation> {
        let id = self.by_client.get(&(listener, client))?;
        self.allocations
            .get(*id)
            .filter(|a| now < a.expires_at && a.is_open())
    }

    /// A datagram from a peer on a relay socket. The payload is at
    /// `buf[HEADROOM..HEADROOM + len]`; `buf` must extend `TAILROOM` bytes past it.
    pub fn handle_peer_datagram(
        &mut self,
        now: Now,
        allocation: AllocationId,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Option<Deliver> {
        let now = now.instant;
        // Only the relay itself sends from its listen socket: delivering that again would
        // close a loop (a client address that became a relay socket).
        if self.policy.own_sockets().is_service(from) {
            self.counters.from_own_socket += 1;
            return None;
        }
        let Some(a) = self
            .allocations
            .get(allocation)
            .filter(|a| now < a.expires_at)
        else {
            self.counters.peer_no_allocation += 1;
            return None;
        };
        if !a.has_permission(from.ip(), now) {
            self.counters.peer_no_permission += 1;
            return None;
        }
        if buf.len() < HEADROOM + len + TAILROOM {
            self.counters.malformed += 1;
            return None;
        }
        let (listener, client) = (a.listener, a.client);
        let frame = match a.channel_to(from, now) {
            Some(number) => write_channel_data_header(buf, HEADROOM, len, number),
            None => {
                self.indication_counter = self.indication_counter.wrapping_add(1);
                let mut transaction_id = [0u8; 12];
                transaction_id[..8].copy_from_slice(&self.indication_prefix);
                transaction_id[8..].copy_from_slice(&self.indication_counter.to_be_bytes());
                let Some(frame) =
                    write_data_indication_header(buf, HEADROOM, len, from, transaction_id)
                else {
                    self.counters.peer_too_large += 1;
                    return None;
                };
                frame
            }
        };
        self.counters.relayed_to_client_packets += 1;
        self.counters.relayed_to_client_bytes += len as u64;
        Some(Deliver {
            listener,
            client,
            frame,
        })
    }

    /// The driver's answer to `Output::OpenRelay`.
    pub fn handle_relay_opened(
        &mut self,
        now: Now,
        allocation: AllocationId,
        family: Family,
        result: Result<RelayId, OpenError>,
    ) {
        let state = self.allocations.get(allocation).map(|a| a.relay(family));
        let Some(RelaySocket::Opening { port, attempts }) = state else {
            // The allocation went away meanwhile (the ID's generation no longer matches, even
            // if a new allocation sits in the same slot): don't leak the socket, and give its
            // port back now that the bind is settled.
            if let Some(port) = self.orphaned_opens.remove(&(allocation, family)) {
                self.ports[family.index()].release(port);
            }
            if let Ok(relay) = result {
                self.outputs.push_back(Output::CloseRelay { relay });
            }
            return;
        };
        match result {
            Ok(relay) => {
                self.set_relay(allocation, family, RelaySocket::Open { relay, port });
                if self
                    .allocations
                    .get(allocation)
                    .is_some_and(|a| a.is_open())
                {
                    self.finish_allocate(now, allocation);
                }
            }
            Err(error) => {
                self.counters.relay_open_failed += 1;
                let retry = match error {
                    OpenError::AddressInUse if attempts < MAX_BIND_ATTEMPTS => {
                        self.retry_port(allocation, family)
                    }
                    _ => None,
                };
                self.ports[family.index()].release(port);
                match retry {
                    Some(next) => {
                        let attempts = attempts + 1;
                        self.set_relay(
                            allocation,
                            family,
                            RelaySocket::Opening {
                                port: next,
                                attempts,
                            },
                        );
                        self.request_relay(allocation, family, next);
                    }
                    None => {
                        self.set_relay(allocation, family, RelaySocket::None);
                        self.fail_allocate(allocation);
                    }
                }
            }
        }
    }

    fn set_relay(&mut self, allocation: AllocationId, family: Family, state: RelaySocket) {
        if let Some(a) = self.allocations.get_mut(allocation) {
            a.relays[family.index()] = state;
        }
    }

    pub(super) fn request_relay(&mut self, allocation: AllocationId, family: Family, port: u16) {
        let dont_fragment = self
            .allocations
            .get(allocation)
            .is_some_and(|a| a.dont_fragment);
        if let Some(relay_address) = self.config.relay_address(family) {
            self.outputs.push_back(Output::OpenRelay {
                allocation,
                family,
                addr: SocketAddr::new(relay_address.bind, port),
                dont_fragment,
            });
        }
    }

    /// Expires what is due. Early, late or repeated calls are harmless.
    pub fn handle_timeout(&mut self, now: Now) {
        self.expire_due(now.instant);
    }

    /// Removes every allocation, permission, channel and reservation whose time is over at
    /// `now`. Also called before decisions that count live state (Allocate), since the
    /// driver's timeout may come later than the deadline.
    pub(super) fn expire_due(&mut self, now: Instant) {
        while let Some(due) = self.timers.pop_due(now) {
            self.fired(due, now);
        }
    }

    /// `expire_due`, and also what expired earlier in the current second (the wheel fires
    /// at the end of each second): for decisions that must not count expired state.
    pub(super) fn expire_due_exact(&mut self, now: Instant) {
        self.expire_due(now);
        while let Some(due) = self.timers.pop_due_exact(now) {
            self.fired(due, now);
        }
    }

    /// A timer entry has fired (and left the wheel). It is a hint: the owner's own deadline
    /// says whether anything is over; if not, the owner is filed again.
    fn fired(&mut self, due: Due, now: Instant) {
        let id = match due {
            Due::Allocation(id) => id,
            Due::Reservation(token) => {
                self.expire_reservation(token, now);
                return;
            }
        };
        let Some(allocation) = self.allocations.get_mut(id) else {
            return;
        };
        allocation.timer = None;
        if allocation.expires_at <= now {
            self.counters.allocations_expired += 1;
            self.remove_allocation(id);
            return;
        }
        allocation.sweep(now);
        self.schedule(id, now);
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

    /// Files the allocation's one timer entry at its next deadline (moving it if it has one).
    pub(super) fn schedule(&mut self, id: AllocationId, now: Instant) {
        let Some(allocation) = self.allocations.get_mut(id) else {
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

    /// Deletes an allocation: its relay sockets are closed and its ports return to the pool.
    pub(super) fn remove_allocation(&mut self, id: AllocationId) {
        let Some(allocation) = self.allocations.remove(id) else {
            return;
        };
        if let Some(handle) = allocation.timer {
            self.timers.cancel(handle, Due::Allocation(id));
        }
        self.by_client
            .remove(&(allocation.listener, allocation.client));
        self.uncount_user(quota_user(&allocation.username));
        for family in Family::ALL {
            let relay = allocation.relay(family);
            match relay {
                RelaySocket::None => {}
                RelaySocket::Opening { port, .. } => {
                    self.orphaned_opens.insert((id, family), port);
                }
                RelaySocket::Open { relay, port } => {
                    self.outputs.push_back(Output::CloseRelay { relay });
                    self.ports[family.index()].release(port);
                }
            }
        }
    }

    /// One more allocation or reservation for `user`'s quota.
    pub(super) fn count_user(&mut self, user: &str) {
        match self.user_allocations.get_mut(user) {
            Some(count) => *count += 1,
            None => {
                self.user_allocations.insert(user.to_owned(), 1);
            }
        }
    }

    /// One fewer; a user with none leaves the table.
    pub(super) fn uncount_user(&mut self, user: &str) {
        if let Some(count) = self.user_allocations.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                self.user_allocations.remove(user);
            }
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When `handle_timeout` should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Totals by family, for metrics. O(allocations + reservations): call per scrape, not
    /// per packet.
    pub fn gauges(&self, now: Instant) -> Gauges {
        let mut gauges = Gauges::default();
        for (_, allocation) in self.allocations.iter() {
            for family in Family::ALL {
                if allocation.has_family(family) {
                    gauges.allocations[family.index()] += 1;
                }
            }
            for permission in allocation.permissions.iter().filter(|p| now < p.expires_at) {
                gauges.permissions[Family::of(permission.ip).index()] += 1;
            }
            for channel in allocation.channels.iter().filter(|c| now < c.expires_at) {
                gauges.channels[Family::of_addr(channel.peer).index()] += 1;
            }
        }
        for family in Family::ALL
            .into_iter()
            .filter(|f| self.config.relay_address(*f).is_some())
        {
            let pool = &self.ports[family.index()];
            let reserved = self
                .reservations
                .values()
                .filter(|r| r.family == family)
                .count();
            gauges.ports_used[family.index()] = pool.in_use().saturating_sub(reserved);
            gauges.ports_reserved[family.index()] = reserved;
            gauges.ports_free[family.index()] = pool.free();
        }
        gauges
    }

    /// Whether a relay address of this family exists and has a free port.
    pub fn can_allocate(&self, family: Family) -> bool {
        self.config.relay_address(family).is_some()
            && self.ports[family.index()].free() > 0
            && self.allocations.len() < self.config.max_allocations
    }

    /// Relay ports in use, per family (IPv4, IPv6).
    pub fn ports_in_use(&self) -> [usize; 2] {
        [self.ports[0].in_use(), self.ports[1].in_use()]
    }

    pub(super) fn reply(&mut self, listener: ListenerId, client: SocketAddr, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.outputs.push_back(Output::ToClient {
                listener,
                client,
                bytes,
            });
        }
    }

    /// Fresh nonce for a 401/438 answer to `client`.
    pub(super) fn nonce_for(&self, now: Now, client: SocketAddr) -> String {
        self.nonces.issue(now.unix_secs, client)
    }

    pub(super) fn is_request(header: &Header) -> bool {
        header.class == MessageClass::Request
    }
}

/// Ports tried for one relay socket before answering 508.
const MAX_BIND_ATTEMPTS: u8 = 8;

/// Whose quota an allocation counts against: the `<id>` of a REST API username
/// `<expiry>:<id>` (fresh credentials for the same id share it), else the whole username.
pub(super) fn quota_user(username: &str) -> &str {
    match username.split_once(':') {
        Some((_, id)) if !id.is_empty() => id,
        _ => username,
    }
}
