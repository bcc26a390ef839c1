//! Refresh (RFC 8656 §8): a new lifetime, or the allocation's end with a lifetime of zero.

use std::time::Duration;

use stun_codec::rfc5766::attributes::Lifetime;
use stun_codec::rfc8656::attributes::RequestedAddressFamily;

use super::{family_of, lifetime_attribute};
use crate::core::failure::Failure;
use crate::core::ids::AllocationId;
use crate::core::server::Server;
use crate::core::time::Now;
use crate::core::usage::EndReason;
use crate::core::wire::{Attribute, Decoded};

impl Server {
    pub(super) fn refresh(
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
            .get(id)
            .ok_or(Failure::AllocationMismatch)?;
        if let Some(family) = message.get_attribute::<RequestedAddressFamily>()
            && !allocation.has_family(family_of(family.address_family()))
        {
            return Err(Failure::PeerAddressFamilyMismatch);
        }
        if requested.is_some_and(|l| l.lifetime().is_zero()) {
            self.end_allocation(id, now.instant, EndReason::Deleted);
            return Ok(vec![lifetime_attribute(Duration::ZERO)]);
        }
        self.allocations
            .update(id, now.instant, |allocation| {
                allocation.expires_at = now.instant + lifetime;
                Ok(vec![lifetime_attribute(lifetime)])
            })
            .ok_or(Failure::AllocationMismatch)?
    }

    /// The lifetime an Allocate or a non-zero Refresh gets (RFC 8656 §7.2, §7.3): the
    /// request capped at the maximum, and never shorter than the default.
    pub(super) fn granted_lifetime(&self, requested: Option<&Lifetime>) -> Duration {
        let limits = self.config.lifetimes;
        let requested = requested.map_or(limits.allocation_default, |l| l.lifetime());
        requested.clamp(limits.allocation_default, limits.allocation_max)
    }
}
