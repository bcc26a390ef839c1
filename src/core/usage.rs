//! What an allocation used, reported once when it ends: the usage record (issue 13). The
//! core fills it in as data (`Server::poll_usage_record`); the driver logs it. It is a
//! separate queue from `Output` because it asks the driver to do nothing.

use std::net::SocketAddr;
use std::time::Duration;

use super::client::Transport;

/// Datagrams and payload bytes relayed in one direction. Plain counters: one add each per
/// relayed datagram, nothing more on the data path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Datagrams relayed.
    pub packets: u64,
    /// Application bytes relayed (the payload, without ChannelData or STUN framing).
    pub bytes: u64,
}

impl Traffic {
    pub(crate) fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// An allocation's traffic, both ways.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// From the client, relayed to peers.
    pub client_to_peer: Traffic,
    /// From peers, relayed to the client.
    pub peer_to_client: Traffic,
}

/// How an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// A Refresh with lifetime 0.
    Deleted,
    /// Its lifetime ran out.
    Expired,
    /// Its TCP or TLS connection closed.
    ConnectionClosed,
    /// The relay ended it while draining (`Server::end_all`).
    Drained,
}

impl EndReason {
    /// The name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Deleted => "deleted",
            EndReason::Expired => "expired",
            EndReason::ConnectionClosed => "connection_closed",
            EndReason::Drained => "drained",
        }
    }
}

/// One allocation's usage, reported when it ends (only for allocations that were granted:
/// one whose relay socket could not be opened never started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// The allocation's number: never reused in the life of the process.
    pub allocation: u64,
    /// The user it counted against: the `<id>` of a REST username `<expiry>:<id>`, else the
    /// whole username.
    pub user: String,
    /// How the client reached us (the driver tells TCP from TLS by the connection).
    pub transport: Transport,
    /// The client's address (the driver logs it only when told to: privacy).
    pub client: SocketAddr,
    /// The relayed transport addresses (as announced in XOR-RELAYED-ADDRESS), IPv4 first.
    pub relayed: Vec<SocketAddr>,
    /// From the Allocate to its end.
    pub duration: Duration,
    /// What it relayed.
    pub usage: Usage,
    /// How it ended.
    pub reason: EndReason,
}
