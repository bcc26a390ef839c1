//! How allocations end: their relay sockets are closed (`Output::CloseRelay`) and, for one
//! that was granted, a usage record is queued (`Server::poll_usage_record`). Every way an
//! allocation goes passes through here, so no end goes unrecorded.

use std::net::SocketAddr;
use std::time::Instant;

use crate::core::allocations::allocation::{Allocation, RelaySocket};
use crate::core::allocations::{Expired, RelaysToClose, quota_user};
use crate::core::ids::{AllocationId, Family};
use crate::core::server::{Output, Server};
use crate::core::time::Now;
use crate::core::usage::{EndReason, UsageRecord};

impl Server {
    /// Ends an allocation for `reason`: closes its relay sockets, queues its usage record.
    pub(crate) fn end_allocation(&mut self, id: AllocationId, now: Instant, reason: EndReason) {
        if let Some((allocation, close)) = self.allocations.remove(id) {
            self.close_relays(close);
            self.record_usage(id, &allocation, now, reason);
        }
    }

    /// Removes an allocation that was never granted (no relay socket could be bound): no
    /// usage record, there was no usage.
    pub(crate) fn discard_allocation(&mut self, id: AllocationId) {
        if let Some((_, close)) = self.allocations.remove(id) {
            self.close_relays(close);
        }
    }

    /// Ends every allocation for `reason` (the drain's deadline), each with its usage
    /// record. O(allocations); once per process.
    pub fn end_all(&mut self, now: Now, reason: EndReason) {
        let ids: Vec<AllocationId> = self.allocations.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.end_allocation(id, now.instant, reason);
        }
    }

    /// The next usage record of an allocation that ended, if any. The driver drains them
    /// (as it drains `poll_output`) after every input: the queue holds one record per
    /// allocation ended since.
    pub fn poll_usage_record(&mut self) -> Option<UsageRecord> {
        self.usage_records.pop_front()
    }

    /// Counts what expired, closes its relay sockets, queues its usage records.
    pub(crate) fn expired(&mut self, expired: Expired, now: Instant) {
        self.counters.allocations_expired += expired.ended.len() as u64;
        for relay in expired.close {
            self.outputs.push_back(Output::CloseRelay { relay });
        }
        for (id, allocation) in &expired.ended {
            self.record_usage(*id, allocation, now, EndReason::Expired);
        }
    }

    fn close_relays(&mut self, close: RelaysToClose) {
        for relay in close.into_iter().flatten() {
            self.outputs.push_back(Output::CloseRelay { relay });
        }
    }

    fn record_usage(
        &mut self,
        id: AllocationId,
        allocation: &Allocation,
        now: Instant,
        reason: EndReason,
    ) {
        // Granted = answered with success; one still opening its sockets never started.
        if allocation.allocate_response.is_none() {
            return;
        }
        let relayed = Family::ALL
            .into_iter()
            .filter_map(|family| match allocation.relay(family) {
                RelaySocket::Open { port, .. } => self
                    .config
                    .relay_address(family)
                    .map(|address| SocketAddr::new(address.public, port)),
                _ => None,
            })
            .collect();
        let client = allocation.client();
        self.usage_records.push_back(UsageRecord {
            allocation: id.generation,
            user: quota_user(&allocation.username).to_owned(),
            transport: client.transport,
            client: client.addr,
            relayed,
            duration: now.saturating_duration_since(allocation.created_at),
            usage: allocation.usage,
            reason,
        });
    }
}
