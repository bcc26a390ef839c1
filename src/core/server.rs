//! The sans-IO TURN server: datagrams and time in, outputs out. `handle_*` take input,
//! `poll_output`/`poll_timeout` give what the driver must do next.
//!
//! The data path answers through return values (`Forward`, `Deliver`), whose ranges index
//! the buffer given to that same call: the datagram for `handle_client_datagram`, the whole
//! buffer with its headroom for `handle_peer_datagram`. ChannelData and peer datagrams are
//! relayed without allocating. A Send indication is not: it is decoded like a request (its
//! head copied for stun_codec, which builds an attribute list; its TLVs walked by the count
//! check, `locate`, the decoder and `attribute_value`). It is the control-path way to send
//! data, which WebRTC clients leave as soon as a channel is bound.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Instant;

use stun_codec::MessageClass;

use super::allocations::allocation::RelaySocket;
use super::allocations::bandwidth::Limited;
use super::allocations::{Allocations, Footprint, Opened};
use super::auth::admission::Admission;
use super::auth::nonce::NonceKey;
use super::availability::Availability;
use super::client::{ClientKey, Transport};
use super::config::Config;
use super::counters::{Counters, Gauges};
use super::hasher::SeededState;
use super::ids::{AllocationId, ConnectionId, Family, ListenerId, RelayId};
use super::policy::PeerPolicy;
use super::rng::Rng;
use super::time::Now;
use super::usage::{EndReason, UsageRecord};
use super::wire::relayed_frames::{write_channel_data_header, write_data_indication_header};
use super::wire::stream_framing::pad_for_stream;
use super::wire::{self as message, Framing, Header};

// The request handlers are `Server`'s own methods, one file per method under `requests/`;
// as a child module they see its private fields, which nothing else does.
#[path = "ending.rs"]
mod ending;
#[path = "requests/mod.rs"]
mod requests;

/// Bytes the driver leaves free in front of a peer datagram, so the core can write the
/// ChannelData header (4 bytes) or a Data indication header (up to 48 bytes) in place.
pub const HEADROOM: usize = 48;
/// Bytes after the payload the buffer must have for a Data indication's padding.
pub const TAILROOM: usize = 3;

/// Send this slice of the datagram just handled from `relay` to `peer`. `payload` indexes
/// the `datagram` given to `handle_client_datagram`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The relay socket to send from.
    pub relay: RelayId,
    /// The peer to send to.
    pub peer: SocketAddr,
    /// The payload, in the buffer given to `handle_client_datagram`.
    pub payload: Range<usize>,
}

/// Send this slice of the peer datagram's buffer to `client` over `transport`. `frame`
/// indexes the `buf` given to `handle_peer_datagram` (it starts in the headroom; over a
/// stream it includes the ChannelData padding, which may reach into the tailroom).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliver {
    /// The listen socket to send from, or the connection to write to.
    pub transport: Transport,
    /// The client to send to.
    pub client: SocketAddr,
    /// The frame, in the buffer given to `handle_peer_datagram`.
    pub frame: Range<usize>,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A STUN response (or a retransmitted one) to a client.
    ToClient {
        /// The listen socket to send from, or the connection to write to.
        transport: Transport,
        /// The client to send to.
        client: SocketAddr,
        /// The encoded response.
        bytes: Vec<u8>,
    },
    /// Bind a UDP socket to `addr`, then report through `Server::handle_relay_opened`.
    OpenRelay {
        /// The allocation the socket is for (echo it in `handle_relay_opened`).
        allocation: AllocationId,
        /// The family of the socket.
        family: Family,
        /// The address to bind.
        addr: SocketAddr,
        /// Set DF on everything this socket sends (the client sent DONT-FRAGMENT).
        dont_fragment: bool,
    },
    /// Close the relay socket; its allocation is gone.
    CloseRelay {
        /// The socket, as the driver named it.
        relay: RelayId,
    },
}

/// Why a relay socket could not be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Someone else holds the port: try another.
    AddressInUse,
    /// Out of descriptors or another failure: no point in trying another port now.
    Other,
}

/// The TURN server's state: the protocol core the driver feeds (see the module docs).
pub struct Server {
    config: Config,
    policy: PeerPolicy,
    /// Everything allocations own: slots, client index, quotas, ports, timers.
    allocations: Allocations,
    nonces: NonceKey,
    rng: Rng,
    outputs: VecDeque<Output>,
    counters: Counters,
    unauthenticated_answers: Admission,
    /// Transaction IDs of Data indications: a random prefix and a counter, so the data path
    /// needs no call into the RNG.
    indication_prefix: [u8; 8],
    indication_counter: u32,
    /// Whether new Allocates are taken (drain, portal init).
    availability: Availability,
    /// Usage records of allocations that ended, for the driver to log.
    usage_records: VecDeque<UsageRecord>,
}

impl Server {
    /// A server for `config`, its randomness drawn from `seed` (the driver's, from the OS).
    pub fn new(config: Config, seed: [u8; 32]) -> Self {
        let mut rng = Rng::new(seed);
        let nonces = NonceKey::new(rng.bytes32());
        let hasher = SeededState::new([rng.next_u64(), rng.next_u64()]);
        let indication_prefix = rng.next_u64().to_le_bytes();
        Server {
            policy: PeerPolicy::for_config(&config),
            allocations: Allocations::new(config.ports.clone(), &hasher),
            config,
            unauthenticated_answers: Admission::new(hasher),
            nonces,
            rng,
            outputs: VecDeque::new(),
            counters: Counters::default(),
            indication_prefix,
            indication_counter: 0,
            availability: Availability::Serving,
            usage_records: VecDeque::new(),
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
        self.handle_client_message(now, ClientKey::udp(listener, from), datagram)
    }

    /// One frame from a TCP or TLS connection, its stream padding already stripped
    /// (`frame` is `buf[..message_len]` of `stream_framing::next_frame`). Same as a datagram
    /// otherwise: the connection is the client.
    pub fn handle_stream_frame(
        &mut self,
        now: Now,
        connection: ConnectionId,
        from: SocketAddr,
        frame: &[u8],
    ) -> Option<Forward> {
        self.handle_client_message(now, ClientKey::stream(connection, from), frame)
    }

    /// The connection closed (either side, or the driver gave up on it): its allocation, if
    /// any, is deleted and its relay sockets closed, as by a Refresh with lifetime 0.
    pub fn handle_connection_closed(
        &mut self,
        now: Now,
        connection: ConnectionId,
        from: SocketAddr,
    ) {
        let client = ClientKey::stream(connection, from);
        if let Some((id, _)) = self.allocations.of_client(&client) {
            self.counters.allocations_closed_with_connection += 1;
            self.end_allocation(id, now.instant, EndReason::ConnectionClosed);
        }
    }

    /// Whether connection `connection` of `from` holds an allocation (the driver closes a
    /// connection that holds none for too long).
    pub fn has_stream_allocation(&self, connection: ConnectionId, from: SocketAddr) -> bool {
        self.allocations
            .of_client(&ClientKey::stream(connection, from))
            .is_some()
    }

    /// The transport of the client holding `allocation`, if it still exists: the driver ties
    /// the relay sockets of a stream's allocation to its connection, to close the connection
    /// when the allocation ends (expiry, Refresh 0) instead of leaving it open serving nothing.
    pub fn allocation_transport(&self, allocation: AllocationId) -> Option<Transport> {
        self.allocations
            .get(allocation)
            .map(|a| a.client().transport)
    }

    fn handle_client_message(
        &mut self,
        now: Now,
        client: ClientKey,
        datagram: &[u8],
    ) -> Option<Forward> {
        // Only a datagram can come from one of the relay's own (UDP) sockets; a TCP peer on
        // the same port number as a relay socket is an unrelated client.
        if matches!(client.transport, Transport::Udp(_)) && self.is_own_socket(client.addr) {
            self.counters.from_own_socket += 1;
            return None;
        }
        match message::classify(datagram) {
            Framing::ChannelData { channel, payload } => {
                self.channel_data_from_client(now.instant, client, channel, payload)
            }
            Framing::Stun(header) => self.handle_stun(now, client, datagram, header),
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
        (self.allocations.port_is_held(family, from.port())
            && own.is_relay_source(family, from.ip()))
            || own.is_service(from)
    }

    /// The effective peer policy (for the start-up log).
    pub fn peer_policy(&self) -> &PeerPolicy {
        &self.policy
    }

    fn channel_data_from_client(
        &mut self,
        now: Instant,
        client: ClientKey,
        channel: u16,
        payload: Range<usize>,
    ) -> Option<Forward> {
        let Some((id, allocation)) = self.allocations.live(&client, now) else {
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
        if !self.within_bandwidth(id, payload.len(), now) {
            return None;
        }
        self.count_relayed_to_peer(id, payload.len());
        Some(Forward {
            relay,
            peer,
            payload,
        })
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
        let client = a.client();
        let frame = match a.channel_to(from, now) {
            Some(number) => {
                let frame = write_channel_data_header(buf, HEADROOM, len, number);
                match client.transport {
                    Transport::Udp(_) => frame,
                    // RFC 8656 §12.5: over a stream ChannelData is padded to a multiple of 4
                    // (a Data indication already is). The tailroom holds the padding.
                    Transport::Stream(_) => pad_for_stream(buf, frame)?,
                }
            }
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
        // Charged once the frame is built: a datagram that cannot be delivered (too large
        // for a Data indication) takes nothing from the buckets.
        if !self.within_bandwidth(allocation, len, now) {
            return None;
        }
        self.counters.relayed_to_client_packets += 1;
        self.counters.relayed_to_client_bytes += len as u64;
        if let Some(usage) = self.allocations.usage_mut(allocation) {
            usage.peer_to_client.add(len);
        }
        Some(Deliver {
            transport: client.transport,
            client: client.addr,
            frame,
        })
    }

    /// Counts `len` payload bytes relayed from allocation `id`'s client to a peer (ChannelData
    /// or Send): in the relay's totals and in the allocation's usage record.
    #[inline(always)]
    pub(super) fn count_relayed_to_peer(&mut self, id: AllocationId, len: usize) {
        self.counters.relayed_to_peer_packets += 1;
        self.counters.relayed_to_peer_bytes += len as u64;
        if let Some(usage) = self.allocations.usage_mut(id) {
            usage.client_to_peer.add(len);
        }
    }

    /// Whether `len` relayed payload bytes of allocation `id` fit the bandwidth limits
    /// (taking them if so). Inlined into the data path as one test when nothing is limited
    /// (measured: as one call it cost ~24 instructions per datagram even then).
    #[inline(always)]
    pub(super) fn within_bandwidth(&mut self, id: AllocationId, len: usize, now: Instant) -> bool {
        self.config.bandwidth.is_unlimited() || self.charge_bandwidth(id, len, now)
    }

    /// `within_bandwidth` with limits: a drop is counted by the level that refused it.
    #[inline(never)]
    fn charge_bandwidth(&mut self, id: AllocationId, len: usize, now: Instant) -> bool {
        match self
            .allocations
            .charge(id, len, now, &self.config.bandwidth)
        {
            Ok(()) => true,
            Err(level) => {
                *match level {
                    Limited::PerAllocation => &mut self.counters.bandwidth_per_allocation,
                    Limited::PerUser => &mut self.counters.bandwidth_per_user,
                    Limited::Total => &mut self.counters.bandwidth_total,
                } += 1;
                false
            }
        }
    }

    /// The driver's answer to `Output::OpenRelay`.
    pub fn handle_relay_opened(
        &mut self,
        now: Now,
        allocation: AllocationId,
        family: Family,
        result: Result<RelayId, OpenError>,
    ) {
        match self
            .allocations
            .relay_opened(allocation, family, result, &mut self.rng)
        {
            Opened::Orphan { close } => {
                if let Some(relay) = close {
                    self.outputs.push_back(Output::CloseRelay { relay });
                }
            }
            Opened::Ready => self.finish_allocate(now, allocation),
            Opened::Waiting => {}
            Opened::Retry { port } => {
                self.counters.relay_open_failed += 1;
                self.request_relay(allocation, family, port);
            }
            Opened::Failed => {
                self.counters.relay_open_failed += 1;
                self.fail_allocate(allocation);
            }
        }
    }

    fn request_relay(&mut self, allocation: AllocationId, family: Family, port: u16) {
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

    /// Expires what is due by `now` (see `Allocations::expire_due`).
    fn expire_due(&mut self, now: Instant) {
        let expired = self.allocations.expire_due(now);
        self.expired(expired, now);
    }

    /// Also what expired earlier in the current second (see `Allocations::expire_due_exact`).
    fn expire_due_exact(&mut self, now: Instant) {
        let expired = self.allocations.expire_due_exact(now);
        self.expired(expired, now);
    }

    /// The next thing the driver must do, if any. Drain after every `handle_*`.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When `handle_timeout` should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.allocations.next_deadline()
    }

    /// What the core counted so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The per-client state held right now; all zero for a server nobody authenticated to.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            queued_outputs: self.outputs.len(),
            ..self.allocations.footprint()
        }
    }

    /// Every broken invariant, described; empty when the state is consistent.
    pub fn invariant_violations(&self) -> Vec<String> {
        self.allocations.check()
    }

    /// Allocations in the table, open or opening.
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
            let reserved = self.allocations.ports_reserved(family);
            gauges.ports_used[family.index()] = self
                .allocations
                .ports_in_use(family)
                .saturating_sub(reserved);
            gauges.ports_reserved[family.index()] = reserved;
            gauges.ports_free[family.index()] = self.allocations.ports_free(family);
        }
        gauges
    }

    /// Swaps in a reloaded configuration (SIGHUP), keeping every allocation. What is bound
    /// to sockets stays as it is (listen and relay addresses, the port range, the metrics
    /// address, the host's addresses): changing it needs a restart. Everything else, and
    /// every field added to `Config` later, takes effect for the next request; the peer
    /// policy is rebuilt from it. Allocations over a lowered quota are not ended: the quota
    /// refuses new ones.
    pub fn reconfigure(&mut self, mut new: Config) {
        let old = &self.config;
        new.listeners = old.listeners.clone();
        new.relay_v4 = old.relay_v4;
        new.relay_v6 = old.relay_v6;
        new.ports = old.ports.clone();
        new.metrics_addr = old.metrics_addr;
        new.host_addresses = old.host_addresses.clone();
        self.policy = PeerPolicy::for_config(&new);
        self.config = new;
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Opens or closes the door to new allocations; existing ones are not touched.
    pub fn set_availability(&mut self, availability: Availability) {
        self.availability = availability;
    }

    /// Whether new allocations are taken, and if not, how they are refused.
    pub fn availability(&self) -> Availability {
        self.availability
    }

    /// Whether a relay address of this family exists and has a free port.
    pub fn can_allocate(&self, family: Family) -> bool {
        self.config.relay_address(family).is_some()
            && self.allocations.ports_free(family) > 0
            && self.allocations.len() < self.config.max_allocations
    }

    /// Relay ports in use, per family (IPv4, IPv6).
    pub fn ports_in_use(&self) -> [usize; 2] {
        Family::ALL.map(|family| self.allocations.ports_in_use(family))
    }

    fn reply(&mut self, client: ClientKey, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.outputs.push_back(Output::ToClient {
                transport: client.transport,
                client: client.addr,
                bytes,
            });
        }
    }

    /// Fresh nonce for a 401/438 answer to `client`.
    fn nonce_for(&self, now: Now, client: SocketAddr) -> String {
        self.nonces.issue(now.unix_secs, client)
    }

    fn is_request(header: &Header) -> bool {
        header.class == MessageClass::Request
    }
}
