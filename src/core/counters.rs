//! Counters of everything the core drops or relays. Bad input is counted, not logged.

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
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
    /// Peer datagrams with a permission but no channel (issue 4 turns these into Data indications).
    pub peer_no_channel: u64,
    /// Send indications dropped (no allocation, no permission, malformed).
    pub send_dropped: u64,
    /// Datagrams for an allocation that no longer exists (in flight while it closed).
    pub peer_no_allocation: u64,
    pub relayed_to_peer_packets: u64,
    pub relayed_to_peer_bytes: u64,
    pub relayed_to_client_packets: u64,
    pub relayed_to_client_bytes: u64,
    pub allocations_created: u64,
    pub allocations_expired: u64,
    pub relay_open_failed: u64,
}
