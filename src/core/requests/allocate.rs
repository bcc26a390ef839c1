//! Allocate (RFC 8656 §7): the 5-tuple, the quotas, the families, EVEN-PORT reservations,
//! and the answer once every relay socket is bound (`finish_allocate`) or none could be
//! (`fail_allocate`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun_codec::MessageClass;
use stun_codec::rfc5389::attributes::XorMappedAddress;
use stun_codec::rfc5766::attributes::{
    DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorRelayAddress,
};
use stun_codec::rfc5766::methods::ALLOCATE;
use stun_codec::rfc8656::attributes::{
    AdditionalAddressFamily, AddressFamily, RequestedAddressFamily,
};

use super::{Requester, family_of, lifetime_attribute};
use crate::core::allocations::allocation::{Allocation, RelaySocket};
use crate::core::allocations::ports::PortNeed;
use crate::core::allocations::timer_wheel::Due;
use crate::core::auth::credentials::Credentials;
use crate::core::failure::Failure;
use crate::core::ids::{AllocationId, Family};
use crate::core::server::{Reservation, Server};
use crate::core::time::Now;
use crate::core::wire::{self as message, Attribute, Decoded, Header};

const UDP: u8 = 17;
/// What a new allocation takes of the quotas: one slot, or two with EVEN-PORT's R bit; a
/// RESERVATION-TOKEN's claim gives its reservation's slot back.
#[derive(Clone, Copy)]
pub(super) struct Demand {
    slots: usize,
    claim: Option<u64>,
}

/// How long a port reserved by EVEN-PORT's R bit waits to be claimed (RFC 8656 §7.2: ~30 s).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

impl Server {
    pub(super) fn allocate(
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
        let user = crate::core::server::quota_user(&credentials.username);
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
    pub(super) fn within_limits(
        &self,
        user: &str,
        demand: Demand,
        now: Instant,
    ) -> Result<(), Failure> {
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
    pub(super) fn take_ports(
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
    pub(super) fn claim_reservation(
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
    pub(super) fn reserve_next(
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
    pub(crate) fn retry_port(&mut self, id: AllocationId, family: Family) -> Option<u16> {
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
    pub(super) fn cancel_reservation(&mut self, token: u64) {
        if let Some(reservation) = self.reservations.remove(&token) {
            self.timers
                .cancel(reservation.timer, Due::Reservation(token));
            self.uncount_user(&reservation.user);
            self.ports[reservation.family.index()].release(reservation.port);
        }
    }

    /// REQUESTED-ADDRESS-FAMILY and ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §7.2).
    pub(super) fn requested_families(
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

    /// Called once every relay socket of a new allocation is bound.
    pub(crate) fn finish_allocate(&mut self, now: Now, id: AllocationId) {
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
    pub(crate) fn fail_allocate(&mut self, id: AllocationId) {
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

    pub(super) fn allocate_requester(&self, allocation: &Allocation) -> Requester {
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
}
