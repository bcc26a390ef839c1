//! CreatePermission (RFC 8656 §9), and the peer check it shares with ChannelBind.

use std::net::{IpAddr, SocketAddr};

use crate::core::allocations::allocation::MAX_PERMISSIONS;
use crate::core::failure::Failure;
use crate::core::ids::{AllocationId, Family};
use crate::core::policy::PeerUse;
use crate::core::server::Server;
use crate::core::time::Now;
use crate::core::wire::{Attribute, Decoded};

impl Server {
    /// CreatePermission (RFC 8656 §9): all of the peers' permissions installed, or none.
    ///
    /// The work is bounded by MAX_PERMISSIONS, not by the request: one datagram can carry
    /// ~5,400 XOR-PEER-ADDRESS attributes, and no request can install more than
    /// MAX_PERMISSIONS, so the peers are counted into a fixed array first and a request
    /// with more is refused (508) before any of them is policy-checked.
    pub(super) fn create_permission(
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
        let ips = &ips[..unique];
        self.allocations
            .update(id, now.instant, |allocation| {
                if allocation.permit_all(ips, now.instant, lifetime) {
                    Ok(Vec::new())
                } else {
                    Err(Failure::InsufficientCapacity)
                }
            })
            .ok_or(Failure::AllocationMismatch)?
    }

    /// The peer's family must be one the allocation relays (443), and policy must allow it (403).
    pub(super) fn check_peer(
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
}
