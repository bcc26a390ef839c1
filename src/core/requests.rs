//! STUN requests and indications from clients: Binding, Allocate, Refresh, ChannelBind,
//! CreatePermission and Send. Every failure is a `Failure`, turned into an error response
//! in one place (`Server::reply_error`).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use stun_codec::MessageClass;
use stun_codec::rfc5389::attributes::XorMappedAddress;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Data, DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken,
    XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};
use stun_codec::rfc8656::attributes::{
    AdditionalAddressFamily, AddressFamily, RequestedAddressFamily,
};

use super::allocation::{Allocation, BindRefusal, MAX_PERMISSIONS, RelaySocket};
use super::auth::Credentials;
use super::errors::Failure;
use super::ids::{AllocationId, Family, ListenerId, Now};
use super::integrity::IntegrityLayout;
use super::message::{self, Attribute, DecodeError, Decoded, Header};
use super::policy::PeerUse;
use super::ports::PortNeed;
use super::server::{Forward, Reservation, Server};
use super::timer::Due;

/// Who asked, so the answer goes back on the same 5-tuple and mirrors FINGERPRINT.
#[derive(Clone, Copy)]
pub(super) struct Requester {
    pub listener: ListenerId,
    pub client: SocketAddr,
    pub header: Header,
    pub fingerprint: bool,
}

const UDP: u8 = 17;
/// What a new allocation takes of the quotas: one slot, or two with EVEN-PORT's R bit; a
/// RESERVATION-TOKEN's claim gives its reservation's slot back.
#[derive(Clone, Copy)]
struct Demand {
    slots: usize,
    claim: Option<u64>,
}

/// How long a port reserved by EVEN-PORT's R bit waits to be claimed (RFC 8656 §7.2: ~30 s).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

impl Server {
    pub(super) fn handle_stun(
        &mut self,
        now: Now,
        listener: ListenerId,
        client: SocketAddr,
        datagram: &[u8],
        header: Header,
    ) -> Option<Forward> {
        let is_send = header.class == MessageClass::Indication && header.method == SEND.as_u16();
        if !Self::is_request(&header) && !is_send {
            self.counters.unexpected_stun += 1;
            return None;
        }
        let mut requester = Requester {
            listener,
            client,
            header,
            fingerprint: false,
        };
        let layout = match message::layout(datagram) {
            Ok(layout) => layout,
            Err(DecodeError::BadAttributes { fingerprint }) if !is_send => {
                requester.fingerprint = fingerprint;
                self.reply_unauthenticated(&requester, datagram.len(), Failure::BadRequest);
                return None;
            }
            Err(_) => {
                self.counters.malformed += 1;
                return None;
            }
        };
        requester.fingerprint = layout.fingerprint.is_some();
        let method = message::method(header.method);
        if is_send || ![ALLOCATE, REFRESH, CHANNEL_BIND, CREATE_PERMISSION].contains(&method) {
            return self.unauthenticated(now, &requester, datagram, layout, is_send);
        }
        // RFC 8489 §9.2.4: the credentials and MESSAGE-INTEGRITY are checked on the raw
        // bytes first, so that every later answer (400 for attributes that do not decode,
        // 420, 438) is known to go to the holder of the key, signed and never limited.
        let credentials =
            match self.authenticate(now, listener, client, datagram, layout.message_integrity) {
                Ok(credentials) => credentials,
                Err(failure) => {
                    self.reply_unauthenticated(&requester, datagram.len(), failure);
                    return None;
                }
            };
        match self.authenticated(now, &requester, datagram, layout, &credentials) {
            Ok(Some(attributes)) => {
                self.reply_success(&requester, attributes, Some(&credentials.key))
            }
            Ok(None) => {} // answered later (Allocate waits for its relay socket)
            // RFC 8489 §9.2.4: a 438 SHOULD NOT carry MESSAGE-INTEGRITY.
            Err(failure @ Failure::StaleNonce { .. }) => {
                self.reply_error(&requester, failure, None)
            }
            Err(failure) => self.reply_error(&requester, failure, Some(&credentials.key)),
        }
        None
    }

    /// Send indications, Binding and unknown methods: never authenticated.
    fn unauthenticated(
        &mut self,
        now: Now,
        requester: &Requester,
        datagram: &[u8],
        layout: IntegrityLayout,
        is_send: bool,
    ) -> Option<Forward> {
        let decoded = match message::decode_attributes(datagram, requester.header, layout) {
            Ok(decoded) => decoded,
            Err(DecodeError::BadAttributes { .. }) if !is_send => {
                self.reply_unauthenticated(requester, datagram.len(), Failure::BadRequest);
                return None;
            }
            Err(_) => {
                self.counters.malformed += 1;
                return None;
            }
        };
        if is_send {
            return self.send_indication(now, requester, datagram, &decoded);
        }
        if decoded.message.method() != BINDING {
            self.reply_unauthenticated(requester, datagram.len(), Failure::BadRequest);
            return None;
        }
        let unknown = message::unknown_required(&decoded.message);
        if unknown.is_empty() {
            self.binding(requester, datagram.len());
        } else {
            let failure = Failure::UnknownAttributes(unknown);
            self.reply_unauthenticated(requester, datagram.len(), failure);
        }
        None
    }

    /// A TURN request whose MESSAGE-INTEGRITY verified: its attributes (400), its nonce
    /// (438), unknown comprehension-required attributes (420, RFC 8489 §6.3.1), the method.
    fn authenticated(
        &mut self,
        now: Now,
        requester: &Requester,
        datagram: &[u8],
        layout: IntegrityLayout,
        credentials: &Credentials,
    ) -> Result<Option<Vec<Attribute>>, Failure> {
        let decoded = message::decode_attributes(datagram, requester.header, layout)
            .map_err(|_| Failure::BadRequest)?;
        let message = &decoded.message;
        // A closing Refresh is honoured with a stale nonce: Chrome and Firefox do not retry
        // it after a 438, and the allocation would hold its port and quota until it expired.
        // Its MESSAGE-INTEGRITY proves the key; a replay can only delete what it deleted.
        let closing = message.method() == REFRESH
            && message
                .get_attribute::<Lifetime>()
                .is_some_and(|l| l.lifetime().is_zero());
        if !closing && !self.nonce_is_fresh(now, requester.client, datagram) {
            return Err(Failure::StaleNonce {
                nonce: self.nonce_for(now, requester.client),
            });
        }
        let unknown = message::unknown_required(message);
        if !unknown.is_empty() {
            return Err(Failure::UnknownAttributes(unknown));
        }
        if message.method() == ALLOCATE {
            self.allocate(now, requester, &decoded, credentials)
        } else {
            self.on_allocation(now, requester, &decoded, credentials)
        }
    }

    /// A Binding success is an unauthenticated answer too (20 bytes in, 32 or 44 out).
    fn binding(&mut self, requester: &Requester, request_len: usize) {
        let mut response = message::new_message(MessageClass::SuccessResponse, &requester.header);
        response.add_attribute(Attribute::XorMappedAddress(XorMappedAddress::new(
            requester.client,
        )));
        let bytes = message::encode(response, None, requester.fingerprint);
        self.send_unauthenticated(requester, request_len, 200, bytes);
    }

    /// Requests that act on an existing allocation: Refresh, ChannelBind, CreatePermission.
    fn on_allocation(
        &mut self,
        now: Now,
        requester: &Requester,
        request: &Decoded,
        credentials: &Credentials,
    ) -> Result<Option<Vec<Attribute>>, Failure> {
        let id = *self
            .by_client
            .get(&(requester.listener, requester.client))
            .ok_or(Failure::AllocationMismatch)?;
        let allocation = self
            .allocations
            .get(id)
            .ok_or(Failure::AllocationMismatch)?;
        if now.instant >= allocation.expires_at || !allocation.is_open() {
            return Err(Failure::AllocationMismatch);
        }
        if allocation.username != credentials.username {
            return Err(Failure::WrongCredentials);
        }
        let method = request.message.method();
        let attributes = if method == REFRESH {
            self.refresh(now, id, request)?
        } else if method == CHANNEL_BIND {
            self.channel_bind(now, id, request)?
        } else {
            self.create_permission(now, id, request)?
        };
        Ok(Some(attributes))
    }

    fn allocate(
        &mut self,
        now: Now,
        requester: &Requester,
        request: &Decoded,
        credentials: &Credentials,
    ) -> Result<Option<Vec<Attribute>>, Failure> {
        let message = &request.message;
        // Fires are hints, state is the truth: what has expired by now is gone even if its
        // timer has not fired yet, so that the 5-tuple, the quotas and the port pool below
        // are judged on live allocations only.
        self.expire_due(now.instant);
        if self
            .by_client
            .get(&(requester.listener, requester.client))
            .and_then(|id| self.allocations.get(*id))
            .is_some_and(|a| a.expires_at <= now.instant)
        {
            self.expire_due_exact(now.instant);
        }
        if let Some(&id) = self.by_client.get(&(requester.listener, requester.client)) {
            let existing = self
                .allocations
                .get(id)
                .ok_or(Failure::AllocationMismatch)?;
            if existing.allocate_transaction != requester.header.transaction_id {
                return Err(Failure::AllocationMismatch);
            }
            // A retransmission: the same answer again, or none yet while the socket opens.
            if let Some(response) = existing.allocate_response.clone() {
                self.reply(requester.listener, requester.client, response);
            }
            return Ok(None);
        }
        let transport = message
            .get_attribute::<RequestedTransport>()
            .ok_or(Failure::BadRequest)?;
        if transport.protocol() != UDP {
            return Err(Failure::UnsupportedTransport);
        }

        let families = self.requested_families(request, requester.client)?;
        let user = super::server::quota_user(&credentials.username);
        let even_port = message.get_attribute::<EvenPort>();
        let token = message
            .get_attribute::<ReservationToken>()
            .map(|t| t.token());
        let reserves = even_port.is_some_and(|e| e.is_requested());
        let demand = Demand {
            slots: if reserves { 2 } else { 1 },
            claim: token,
        };
        if let Err(failure) = self.within_limits(user, demand, now.instant) {
            // Refusing: first drop what expired earlier in this second, so that nothing
            // over counts (the wheel fires at the end of each second).
            self.expire_due_exact(now.instant);
            self.within_limits(user, demand, now.instant)
                .map_err(|_| failure)?;
        }
        // RFC 8656 §7.2: a reservation is for one port of one family.
        if (even_port.is_some() && token.is_some())
            || ((reserves || token.is_some()) && families.len() > 1)
        {
            return Err(Failure::BadRequest);
        }
        let need = match even_port {
            None => PortNeed::Any,
            Some(_) if reserves => PortNeed::EvenPair,
            Some(_) => PortNeed::Even,
        };
        let lifetime = self.granted_lifetime(message.get_attribute::<Lifetime>());
        let ports = match token {
            Some(token) => self.claim_reservation(token, families[0], now)?,
            None => match self.take_ports(&families, need) {
                Ok(ports) => ports,
                Err(_) => {
                    self.expire_due_exact(now.instant);
                    self.take_ports(&families, need)?
                }
            },
        };
        let reservation =
            (need == PortNeed::EvenPair).then(|| self.reserve_next(user, families[0], &ports, now));
        let relays = ports.map(|port| match port {
            Some(port) => RelaySocket::Opening { port, attempts: 1 },
            None => RelaySocket::None,
        });
        let id = self.allocations.insert(Allocation {
            listener: requester.listener,
            client: requester.client,
            username: credentials.username.clone(),
            key: credentials.key,
            expires_at: now.instant + lifetime,
            relays,
            permissions: Vec::new(),
            channels: Vec::new(),
            allocate_transaction: requester.header.transaction_id,
            allocate_response: None,
            allocate_fingerprint: requester.fingerprint,
            dont_fragment: message.get_attribute::<DontFragment>().is_some(),
            retry_need: token.is_none().then_some(need),
            reservation,
            timer: None,
        });
        self.by_client
            .insert((requester.listener, requester.client), id);
        self.count_user(user);
        for family in families {
            if let Some(port) = ports[family.index()] {
                self.request_relay(id, family, port);
            }
        }
        Ok(None)
    }

    /// The per-user quota (486) and the total (508) a new allocation must fit. A port held
    /// by EVEN-PORT's R bit counts as an allocation in both, for the user who reserved it:
    /// it is an allocation to come, and otherwise a user could hold ports past every limit
    /// by reserving and deleting. Claiming a reservation turns its slot into the allocation.
    fn within_limits(&self, user: &str, demand: Demand, now: Instant) -> Result<(), Failure> {
        let claimed = demand
            .claim
            .and_then(|token| self.reservations.get(&token))
            .filter(|r| now < r.expires_at);
        let own_claim = claimed.is_some_and(|r| r.user == user);
        let held = self.user_allocations.get(user).copied().unwrap_or(0);
        let held = held.saturating_sub(usize::from(own_claim));
        if held + demand.slots > self.config.max_allocations_per_user {
            return Err(Failure::AllocationQuotaReached);
        }
        let total = (self.allocations.len() + self.reservations.len())
            .saturating_sub(usize::from(claimed.is_some()));
        if total + demand.slots > self.config.max_allocations {
            return Err(Failure::InsufficientCapacity);
        }
        Ok(())
    }

    /// One port per family, or none at all (508).
    fn take_ports(
        &mut self,
        families: &[Family],
        need: PortNeed,
    ) -> Result<[Option<u16>; 2], Failure> {
        let mut ports = [None, None];
        for family in families {
            match self.ports[family.index()].take(&mut self.rng, need) {
                Some(port) => ports[family.index()] = Some(port),
                None => {
                    for (index, port) in ports.iter().enumerate() {
                        if let Some(port) = port {
                            self.ports[index].release(*port);
                        }
                    }
                    return Err(Failure::InsufficientCapacity);
                }
            }
        }
        Ok(ports)
    }

    /// The port an earlier EVEN-PORT (R bit) reserved; an unknown or expired token is 508.
    fn claim_reservation(
        &mut self,
        token: u64,
        family: Family,
        now: Now,
    ) -> Result<[Option<u16>; 2], Failure> {
        let reservation = self
            .reservations
            .get(&token)
            .ok_or(Failure::InsufficientCapacity)?;
        if reservation.expires_at <= now.instant {
            return Err(Failure::InsufficientCapacity); // its timer releases the port
        }
        if reservation.family != family {
            return Err(Failure::BadRequest);
        }
        let reservation = self
            .reservations
            .remove(&token)
            .ok_or(Failure::InsufficientCapacity)?;
        self.timers
            .cancel(reservation.timer, Due::Reservation(token));
        // Its slot passes to the allocation that claims it.
        self.uncount_user(&reservation.user);
        let mut ports = [None, None];
        ports[family.index()] = Some(reservation.port);
        Ok(ports)
    }

    /// Holds the odd neighbour of the even port just taken, for RESERVATION_LIFETIME.
    fn reserve_next(
        &mut self,
        user: &str,
        family: Family,
        ports: &[Option<u16>; 2],
        now: Now,
    ) -> u64 {
        let token = self.rng.next_u64();
        if let Some(port) = ports[family.index()].and_then(|p| p.checked_add(1))
            && self.ports[family.index()].take_exact(port)
        {
            let expires_at = now.instant + RESERVATION_LIFETIME;
            let timer = self
                .timers
                .schedule(now.instant, expires_at, Due::Reservation(token));
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
            self.count_user(user);
        }
        token
    }

    /// Another port for a relay socket whose port was in use, of the same kind. With
    /// EVEN-PORT's R bit the reservation moves along: the reserved port is always the relayed
    /// port + 1 (RFC 8656 §7.2).
    pub(super) fn retry_port(&mut self, id: AllocationId, family: Family) -> Option<u16> {
        let allocation = self.allocations.get(id)?;
        let (need, token) = (allocation.retry_need?, allocation.reservation);
        let port = self.ports[family.index()].take(&mut self.rng, need)?;
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

    /// Gives a reservation back to the pool (its allocation failed).
    fn cancel_reservation(&mut self, token: u64) {
        if let Some(reservation) = self.reservations.remove(&token) {
            self.timers
                .cancel(reservation.timer, Due::Reservation(token));
            self.uncount_user(&reservation.user);
            self.ports[reservation.family.index()].release(reservation.port);
        }
    }

    /// REQUESTED-ADDRESS-FAMILY and ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §7.2).
    fn requested_families(
        &self,
        request: &Decoded,
        client: SocketAddr,
    ) -> Result<Vec<Family>, Failure> {
        let message = &request.message;
        let requested = message.get_attribute::<RequestedAddressFamily>();
        let additional = message.get_attribute::<AdditionalAddressFamily>();
        let families = match (requested, additional) {
            (Some(_), Some(_)) => return Err(Failure::BadRequest),
            (Some(r), None) => vec![family_of(r.address_family())],
            (None, Some(a)) => {
                if a.address_family() != AddressFamily::V6 {
                    return Err(Failure::BadRequest);
                }
                vec![Family::V4, Family::V6]
            }
            // IPv4 by default, whatever the client's own family (RFC 8656 §7.2). With
            // --keep-client-family, the client's family if the relay has it; else IPv4,
            // since a client that did not ask for a family should not get 440 for it.
            (None, None) => {
                let own = Family::of_addr(client);
                if self.config.keep_client_family && self.config.relay_address(own).is_some() {
                    vec![own]
                } else {
                    vec![Family::V4]
                }
            }
        };
        if families
            .iter()
            .any(|f| self.config.relay_address(*f).is_none())
        {
            return Err(Failure::AddressFamilyNotSupported);
        }
        Ok(families)
    }

    /// The lifetime an Allocate or a non-zero Refresh gets (RFC 8656 §7.2, §7.3): the
    /// request capped at the maximum, and never shorter than the default.
    fn granted_lifetime(&self, requested: Option<&Lifetime>) -> Duration {
        let limits = self.config.lifetimes;
        let requested = requested.map_or(limits.allocation_default, |l| l.lifetime());
        requested.clamp(limits.allocation_default, limits.allocation_max)
    }

    /// Called once every relay socket of a new allocation is bound.
    pub(super) fn finish_allocate(&mut self, now: Now, id: AllocationId) {
        let Some(allocation) = self.allocations.get(id) else {
            return;
        };
        let mut attributes = Vec::with_capacity(4);
        for family in Family::ALL {
            let (RelaySocket::Open { port, .. }, Some(address)) =
                (allocation.relay(family), self.config.relay_address(family))
            else {
                continue;
            };
            let relayed = SocketAddr::new(address.public, port);
            attributes.push(Attribute::XorRelayAddress(XorRelayAddress::new(relayed)));
        }
        let remaining = allocation.expires_at.saturating_duration_since(now.instant);
        attributes.push(lifetime_attribute(remaining));
        attributes.push(Attribute::XorMappedAddress(XorMappedAddress::new(
            allocation.client,
        )));
        if let Some(token) = allocation.reservation {
            attributes.push(Attribute::ReservationToken(ReservationToken::new(token)));
        }
        let requester = self.allocate_requester(allocation);
        let mut response = message::new_message(MessageClass::SuccessResponse, &requester.header);
        for attribute in attributes {
            response.add_attribute(attribute);
        }
        let bytes = message::encode(response, Some(&allocation.key), requester.fingerprint);
        if let Some(allocation) = self.allocations.get_mut(id) {
            allocation.allocate_response = Some(bytes.clone());
        }
        self.counters.allocations_created += 1;
        self.counters.count_response(ALLOCATE.as_u16(), 200);
        self.schedule(id, now.instant);
        self.reply(requester.listener, requester.client, bytes);
    }

    /// Gives up on a new allocation (no relay socket could be bound): 508.
    pub(super) fn fail_allocate(&mut self, id: AllocationId) {
        let Some(allocation) = self.allocations.get(id) else {
            return;
        };
        let requester = self.allocate_requester(allocation);
        let key = allocation.key;
        if let Some(token) = allocation.reservation {
            self.cancel_reservation(token);
        }
        self.remove_allocation(id);
        self.reply_error(&requester, Failure::InsufficientCapacity, Some(&key));
    }

    fn allocate_requester(&self, allocation: &Allocation) -> Requester {
        Requester {
            listener: allocation.listener,
            client: allocation.client,
            header: Header {
                class: MessageClass::Request,
                method: ALLOCATE.as_u16(),
                transaction_id: allocation.allocate_transaction,
            },
            fingerprint: allocation.allocate_fingerprint,
        }
    }

    fn refresh(
        &mut self,
        now: Now,
        id: AllocationId,
        request: &Decoded,
    ) -> Result<Vec<Attribute>, Failure> {
        let message = &request.message;
        let requested = message.get_attribute::<Lifetime>();
        let lifetime = self.granted_lifetime(requested);
        let allocation = self
            .allocations
            .get_mut(id)
            .ok_or(Failure::AllocationMismatch)?;
        if let Some(family) = message.get_attribute::<RequestedAddressFamily>()
            && !allocation.has_family(family_of(family.address_family()))
        {
            return Err(Failure::PeerAddressFamilyMismatch);
        }
        if requested.is_some_and(|l| l.lifetime().is_zero()) {
            self.remove_allocation(id);
            return Ok(vec![lifetime_attribute(Duration::ZERO)]);
        }
        allocation.expires_at = now.instant + lifetime;
        self.schedule(id, now.instant);
        Ok(vec![lifetime_attribute(lifetime)])
    }

    fn channel_bind(
        &mut self,
        now: Now,
        id: AllocationId,
        request: &Decoded,
    ) -> Result<Vec<Attribute>, Failure> {
        let message = &request.message;
        let (Some(number), Some(peer)) = (
            message.get_attribute::<ChannelNumber>(),
            message.get_attribute::<XorPeerAddress>(),
        ) else {
            return Err(Failure::BadRequest);
        };
        let peer = peer.address();
        self.check_peer(id, peer, PeerUse::ChannelOrSend)?;
        let limits = self.config.lifetimes;
        let allocation = self
            .allocations
            .get_mut(id)
            .ok_or(Failure::AllocationMismatch)?;
        if !allocation.can_permit_all(&[peer.ip()], now.instant) {
            return Err(Failure::InsufficientCapacity);
        }
        allocation
            .bind_channel(
                number.value(),
                peer,
                now.instant,
                limits.channel,
                limits.channel_hold,
            )
            .map_err(|refusal| match refusal {
                BindRefusal::Conflict => Failure::BadRequest,
                BindRefusal::Full => Failure::InsufficientCapacity,
            })?;
        allocation.permit(peer.ip(), now.instant, limits.permission);
        self.schedule(id, now.instant);
        Ok(Vec::new())
    }

    /// CreatePermission (RFC 8656 §9): all of the peers' permissions installed, or none.
    ///
    /// The work is bounded by MAX_PERMISSIONS, not by the request: one datagram can carry
    /// ~5,400 XOR-PEER-ADDRESS attributes, and no request can install more than
    /// MAX_PERMISSIONS, so the peers are counted into a fixed array first and a request
    /// with more is refused (508) before any of them is policy-checked.
    fn create_permission(
        &mut self,
        now: Now,
        id: AllocationId,
        request: &Decoded,
    ) -> Result<Vec<Attribute>, Failure> {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut peers = [unspecified; MAX_PERMISSIONS];
        let mut count = 0;
        for attribute in request.message.attributes() {
            if let Attribute::XorPeerAddress(peer) = attribute {
                let slot = peers.get_mut(count).ok_or(Failure::InsufficientCapacity)?;
                *slot = peer.address();
                count += 1;
            }
        }
        let peers = &peers[..count];
        if peers.is_empty() {
            return Err(Failure::BadRequest);
        }
        for peer in peers {
            self.check_peer(id, *peer, PeerUse::Permission)?;
        }
        // A permission is per IP: sorted and deduplicated, the set of IPs to install.
        let mut ips = [IpAddr::from([0, 0, 0, 0]); MAX_PERMISSIONS];
        for (ip, peer) in ips.iter_mut().zip(peers) {
            *ip = peer.ip();
        }
        let ips = &mut ips[..count];
        ips.sort_unstable();
        let mut unique = 0;
        for i in 0..ips.len() {
            if unique == 0 || ips[i] != ips[unique - 1] {
                ips[unique] = ips[i];
                unique += 1;
            }
        }
        let lifetime = self.config.lifetimes.permission;
        let allocation = self
            .allocations
            .get_mut(id)
            .ok_or(Failure::AllocationMismatch)?;
        if !allocation.permit_all(&ips[..unique], now.instant, lifetime) {
            return Err(Failure::InsufficientCapacity);
        }
        self.schedule(id, now.instant);
        Ok(Vec::new())
    }

    /// The peer's family must be one the allocation relays (443), and policy must allow it (403).
    fn check_peer(
        &self,
        id: AllocationId,
        peer: SocketAddr,
        usage: PeerUse,
    ) -> Result<(), Failure> {
        let allocation = self
            .allocations
            .get(id)
            .ok_or(Failure::AllocationMismatch)?;
        if !allocation.has_family(Family::of_addr(peer)) {
            return Err(Failure::PeerAddressFamilyMismatch);
        }
        if !self.policy.allows(peer, usage) {
            return Err(Failure::Forbidden);
        }
        Ok(())
    }

    /// Send indication (RFC 8656 §10.2): relayed when a permission exists, otherwise dropped
    /// and counted. Indications are never answered.
    fn send_indication(
        &mut self,
        now: Now,
        requester: &Requester,
        datagram: &[u8],
        request: &Decoded,
    ) -> Option<Forward> {
        let forward = self.send_target(now, requester, datagram, request);
        if forward.is_none() {
            self.counters.send_dropped += 1;
        }
        forward
    }

    fn send_target(
        &mut self,
        now: Now,
        requester: &Requester,
        datagram: &[u8],
        request: &Decoded,
    ) -> Option<Forward> {
        let message = &request.message;
        if !message::unknown_required(message).is_empty() {
            return None;
        }
        let peer = message.get_attribute::<XorPeerAddress>()?.address();
        let data_len = message.get_attribute::<Data>()?.data().len();
        let allocation = self.live_allocation(requester.listener, requester.client, now.instant)?;
        // RFC 8656 §10.2: DONT-FRAGMENT on a Send we cannot honour (the socket was opened
        // without DF) means drop it.
        if message.get_attribute::<DontFragment>().is_some() && !allocation.dont_fragment {
            return None;
        }
        if !allocation.has_permission(peer.ip(), now.instant)
            || !self.policy.allows(peer, PeerUse::ChannelOrSend)
        {
            return None;
        }
        let RelaySocket::Open { relay, .. } = allocation.relay(Family::of_addr(peer)) else {
            return None;
        };
        let payload = message::attribute_value(datagram, Data::CODEPOINT)?;
        if payload.len() != data_len {
            return None;
        }
        self.counters.relayed_to_peer_packets += 1;
        self.counters.relayed_to_peer_bytes += payload.len() as u64;
        Some(Forward {
            relay,
            peer,
            payload,
        })
    }

    pub(super) fn reply_success(
        &mut self,
        requester: &Requester,
        attributes: Vec<Attribute>,
        key: Option<&[u8; 16]>,
    ) {
        let mut response = message::new_message(MessageClass::SuccessResponse, &requester.header);
        for attribute in attributes {
            response.add_attribute(attribute);
        }
        let bytes = message::encode(response, key.map(|k| &k[..]), requester.fingerprint);
        self.counters.count_response(requester.header.method, 200);
        self.reply(requester.listener, requester.client, bytes);
    }

    /// An error answer to a request that is not authenticated (yet).
    fn reply_unauthenticated(
        &mut self,
        requester: &Requester,
        request_len: usize,
        failure: Failure,
    ) {
        let code = failure.code();
        let bytes = self.error_response(requester, failure, None);
        self.send_unauthenticated(requester, request_len, code, bytes);
    }

    /// Sends an answer to an unauthenticated request if its source's byte credit covers it
    /// (`admission`): these are what a spoofed source could reflect at a victim.
    fn send_unauthenticated(
        &mut self,
        requester: &Requester,
        request_len: usize,
        code: u16,
        bytes: Vec<u8>,
    ) {
        if !Self::is_request(&requester.header) {
            return;
        }
        if self
            .unauthenticated_answers
            .admit(requester.client.ip(), request_len, bytes.len())
        {
            self.counters.count_response(requester.header.method, code);
            self.reply(requester.listener, requester.client, bytes);
        } else {
            self.counters.rate_limited += 1;
        }
    }

    /// The one place an error response is built and sent. `key` signs it when the request
    /// was authenticated; 401 and 438 never are.
    pub(super) fn reply_error(
        &mut self,
        requester: &Requester,
        failure: Failure,
        key: Option<&[u8; 16]>,
    ) {
        if !Self::is_request(&requester.header) {
            return;
        }
        self.counters
            .count_response(requester.header.method, failure.code());
        let bytes = self.error_response(requester, failure, key);
        self.reply(requester.listener, requester.client, bytes);
    }

    fn error_response(
        &self,
        requester: &Requester,
        failure: Failure,
        key: Option<&[u8; 16]>,
    ) -> Vec<u8> {
        let mut response = message::new_message(MessageClass::ErrorResponse, &requester.header);
        for attribute in failure.attributes(&self.config.realm) {
            response.add_attribute(attribute);
        }
        message::encode(response, key.map(|k| &k[..]), requester.fingerprint)
    }
}

fn family_of(family: AddressFamily) -> Family {
    match family {
        AddressFamily::V4 => Family::V4,
        AddressFamily::V6 => Family::V6,
    }
}

fn lifetime_attribute(lifetime: Duration) -> Attribute {
    let seconds = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
    Attribute::Lifetime(Lifetime::from_u32(seconds))
}
