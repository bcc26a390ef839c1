//! Send indications (RFC 8656 §10.2): the control-path way to relay data to a peer. Decoded
//! like a request, so unlike ChannelData it allocates (see `server`).

use stun_codec::rfc5766::attributes::{Data, DontFragment, XorPeerAddress};

use super::Requester;
use crate::core::allocations::allocation::RelaySocket;
use crate::core::ids::Family;
use crate::core::policy::PeerUse;
use crate::core::server::{Forward, Server};
use crate::core::time::Now;
use crate::core::wire::{self as message, Decoded};

impl Server {
    /// Send indication (RFC 8656 §10.2): relayed when a permission exists, otherwise dropped
    /// and counted. Indications are never answered.
    pub(super) fn send_indication(
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

    pub(super) fn send_target(
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
        let (id, allocation) = self.allocations.live(&requester.client, now.instant)?;
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
        if payload.len() != data_len || !self.within_bandwidth(id, payload.len(), now.instant) {
            return None;
        }
        self.count_relayed_to_peer(id, payload.len());
        Some(Forward {
            relay,
            peer,
            payload,
        })
    }
}
