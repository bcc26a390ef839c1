//! Allocate (RFC 8656 §7): the 5-tuple, the quotas, the families, EVEN-PORT reservations,
//! and the answer once every relay socket is bound (`finish_allocate`) or none could be
//! (`fail_allocate`).

use std::net::SocketAddr;

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
use crate::core::allocations::allocation::{Allocation, NewAllocation, RelaySocket};
use crate::core::allocations::ports::PortNeed;
use crate::core::allocations::{Allocations, Demand, quota_user};
use crate::core::auth::credentials::Credentials;
use crate::core::availability::Availability;
use crate::core::failure::Failure;
use crate::core::ids::{AllocationId, Family};
use crate::core::server::Server;
use crate::core::time::Now;
use crate::core::wire::{self as message, Attribute, Decoded, Header};

const UDP: u8 = 17;

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
            .allocations
            .of_client(&requester.client)
            .is_some_and(|(_, a)| a.expires_at <= now.instant)
        {
            self.expire_due_exact(now.instant);
        }
        if let Some((_, existing)) = self.allocations.of_client(&requester.client) {
            // Another transaction, or the same transaction id under other credentials (a
            // later client on a reused 5-tuple, e.g. a NAT mapping handed on): not a
            // retransmission, and never given the earlier client's answer.
            if existing.allocate_transaction != requester.header.transaction_id
                || existing.username != credentials.username
            {
                return Err(Failure::AllocationMismatch);
            }
            // A retransmission: the same answer again, or none yet while the socket opens.
            if let Some(response) = existing.allocate_response.clone() {
                self.reply(requester.client, response);
            }
            return Ok(None);
        }
        match self.availability() {
            Availability::Serving => {}
            Availability::Draining {
                alternate: Some(server),
            } => return Err(Failure::TryAlternate { server }),
            Availability::Draining { alternate: None } | Availability::NotReady => {
                return Err(Failure::InsufficientCapacity);
            }
        }
        let transport = message
            .get_attribute::<RequestedTransport>()
            .ok_or(Failure::BadRequest)?;
        if transport.protocol() != UDP {
            return Err(Failure::UnsupportedTransport);
        }

        let families = self.requested_families(request, requester.client.addr)?;
        let user = quota_user(&credentials.username);
        let even_port = message.get_attribute::<EvenPort>();
        let token = message
            .get_attribute::<ReservationToken>()
            .map(|t| t.token());
        let reserves = even_port.is_some_and(|e| e.is_requested());
        let demand = Demand {
            slots: if reserves { 2 } else { 1 },
            claim: token,
        };
        let (per_user, total) = (
            self.config.max_allocations_per_user,
            self.config.max_allocations,
        );
        let within = |allocations: &Allocations| {
            allocations.within_limits(user, demand, now.instant, per_user, total)
        };
        if let Err(refusal) = within(&self.allocations) {
            // Refusing: first drop what expired earlier in this second, so that nothing
            // over counts (the wheel fires at the end of each second).
            self.expire_due_exact(now.instant);
            within(&self.allocations).map_err(|_| Failure::from(refusal))?;
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
            Some(token) => self
                .allocations
                .claim_reservation(token, families[0], now.instant)
                .map_err(Failure::from)?,
            None => match self.allocations.take_ports(&families, need, &mut self.rng) {
                Some(ports) => ports,
                None => {
                    self.expire_due_exact(now.instant);
                    self.allocations
                        .take_ports(&families, need, &mut self.rng)
                        .ok_or(Failure::InsufficientCapacity)?
                }
            },
        };
        let reservation = (need == PortNeed::EvenPair).then(|| {
            self.allocations
                .reserve_next(user, families[0], &ports, now.instant, &mut self.rng)
        });
        let id = self.allocations.create(NewAllocation {
            client: requester.client,
            username: credentials.username.clone(),
            key: credentials.key,
            expires_at: now.instant + lifetime,
            created_unix: now.unix_secs,
            created_at: now.instant,
            ports,
            allocate_transaction: requester.header.transaction_id,
            allocate_fingerprint: requester.fingerprint,
            dont_fragment: message.get_attribute::<DontFragment>().is_some(),
            retry_need: token.is_none().then_some(need),
            reservation,
        });
        for family in families {
            if let Some(port) = ports[family.index()] {
                self.request_relay(id, family, port);
            }
        }
        Ok(None)
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
            allocation.client().addr,
        )));
        if let Some(token) = allocation.reservation {
            attributes.push(Attribute::ReservationToken(ReservationToken::new(token)));
        }
        let requester = self.allocate_requester(allocation);
        let mut response = message::new_message(MessageClass::SuccessResponse, &requester.header);
        for attribute in attributes {
            response.add_attribute(attribute);
        }
        self.add_software(&mut response, true);
        let bytes = message::encode(response, Some(&allocation.key), requester.fingerprint);
        // Live from now on: its timer entry is filed.
        let answer = bytes.clone();
        self.allocations.update(id, now.instant, |allocation| {
            allocation.allocate_response = Some(answer);
            Ok::<(), Failure>(())
        });
        self.counters.allocations_created += 1;
        self.counters.count_response(ALLOCATE.as_u16(), 200);
        self.reply(requester.client, bytes);
    }

    /// Gives up on a new allocation (no relay socket could be bound): 508.
    pub(crate) fn fail_allocate(&mut self, id: AllocationId) {
        let Some(allocation) = self.allocations.get(id) else {
            return;
        };
        let requester = self.allocate_requester(allocation);
        let key = allocation.key;
        if let Some(token) = allocation.reservation {
            self.allocations.cancel_reservation(token);
        }
        self.discard_allocation(id);
        self.reply_error(&requester, Failure::InsufficientCapacity, Some(&key));
    }

    pub(super) fn allocate_requester(&self, allocation: &Allocation) -> Requester {
        Requester {
            client: allocation.client(),
            header: Header {
                class: MessageClass::Request,
                method: ALLOCATE.as_u16(),
                transaction_id: allocation.allocate_transaction,
            },
            fingerprint: allocation.allocate_fingerprint,
        }
    }
}
