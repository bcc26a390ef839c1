//! ChannelBind (RFC 8656 §11).

use stun_codec::rfc5766::attributes::{ChannelNumber, XorPeerAddress};

use crate::core::allocations::allocation::BindRefusal;
use crate::core::failure::Failure;
use crate::core::ids::AllocationId;
use crate::core::policy::PeerUse;
use crate::core::server::Server;
use crate::core::time::Now;
use crate::core::wire::{Attribute, Decoded};

impl Server {
    pub(super) fn channel_bind(
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
        self.allocations
            .update(id, now.instant, |allocation| {
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
                Ok(Vec::new())
            })
            .ok_or(Failure::AllocationMismatch)?
    }
}
