//! Counters of everything the core drops or relays. Bad input is counted, not logged.

use super::failure::{ERROR_TABLE, response_codes};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
/// What the core counted since it started.
pub struct Counters {
    /// Responses sent, by method and code (see `RESPONSE_METHODS`, `RESPONSE_CODES`).
    pub responses: [[u64; RESPONSE_CODES.len()]; RESPONSE_METHODS.len()],
    /// Datagrams that are neither STUN nor ChannelData, or whose framing is broken.
    pub malformed: u64,
    /// STUN responses and unsupported indications from clients, which a server ignores.
    pub unexpected_stun: u64,
    /// ChannelData from a 5-tuple without an allocation.
    pub channel_data_no_allocation: u64,
    /// ChannelData on a channel that is not bound (or whose binding expired).
    pub channel_data_unbound: u64,
    /// Peer datagrams from an address without a permission.
    pub peer_no_permission: u64,
    /// Peer datagrams too large to wrap in a Data indication (no channel bound, and the
    /// STUN length field cannot hold payload plus header).
    pub peer_too_large: u64,
    /// Send indications dropped (no allocation, no permission, malformed).
    pub send_dropped: u64,
    /// Datagrams for an allocation that no longer exists (in flight while it closed).
    pub peer_no_allocation: u64,
    /// Datagrams relayed from clients to peers.
    pub relayed_to_peer_packets: u64,
    /// Their payload bytes.
    pub relayed_to_peer_bytes: u64,
    /// Datagrams relayed from peers to clients.
    pub relayed_to_client_packets: u64,
    /// Their payload bytes.
    pub relayed_to_client_bytes: u64,
    /// Allocations answered with success.
    pub allocations_created: u64,
    /// Allocations removed because their lifetime ran out.
    pub allocations_expired: u64,
    /// Allocations deleted because their TCP or TLS connection closed.
    pub allocations_closed_with_connection: u64,
    /// Relay socket opens that failed (each port tried counts).
    pub relay_open_failed: u64,
    /// Datagrams from one of the relay's own sockets (a relay socket or a listen socket as a
    /// client, a listen socket as a peer): dropped unanswered, so the relay never loops.
    pub from_own_socket: u64,
    /// Unauthenticated error responses not sent because their source exceeded its rate.
    pub rate_limited: u64,
    /// Relayed datagrams (either direction) dropped by `--max-bps-per-allocation`.
    pub bandwidth_per_allocation: u64,
    /// Dropped by `--max-bps-per-user`.
    pub bandwidth_per_user: u64,
    /// Dropped by `--max-bps-total`.
    pub bandwidth_total: u64,
}

/// Methods responses are counted by; anything else counts as "other".
pub const RESPONSE_METHODS: [(u16, &str); 6] = [
    (0x001, "binding"),
    (0x003, "allocate"),
    (0x004, "refresh"),
    (0x008, "create_permission"),
    (0x009, "channel_bind"),
    (0xFFFF, "other"),
];
/// Codes responses are counted by: 200 for success, then every code of the error table
/// (`failure::ERROR_TABLE`).
pub const RESPONSE_CODES: [u16; ERROR_TABLE.len() + 1] = response_codes();

impl Counters {
    /// Counts a response of `method` with `code` (200 for success).
    pub fn count_response(&mut self, method: u16, code: u16) {
        let m = RESPONSE_METHODS
            .iter()
            .position(|(known, _)| *known == method)
            .unwrap_or(RESPONSE_METHODS.len() - 1);
        if let Some(c) = RESPONSE_CODES.iter().position(|known| *known == code) {
            self.responses[m][c] += 1;
        }
    }
}

/// Point-in-time totals, computed on demand (a scrape), not maintained per packet.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Gauges {
    /// Indexed by `Family::index()`.
    pub allocations: [usize; 2],
    /// Live permissions, by family.
    pub permissions: [usize; 2],
    /// Bound channels, by family.
    pub channels: [usize; 2],
    /// Ports held by allocations (and binds in flight), by EVEN-PORT reservations, and free;
    /// together the configured range.
    pub ports_used: [usize; 2],
    /// Ports held by EVEN-PORT reservations.
    pub ports_reserved: [usize; 2],
    /// Ports free to allocate.
    pub ports_free: [usize; 2],
}
