//! Who a client is, as the core knows it: the transport it reached us over and its address.
//! An allocation is keyed by this (RFC 8656 §2: the 5-tuple). UDP is the only transport
//! today; a TCP or TLS connection adds a `Transport` variant (its connection id), and the
//! compiler then shows every place that must learn about it. Over TCP or TLS the connection
//! is the 5-tuple: two connections from one address are two clients.

use std::net::SocketAddr;

use super::ids::{ConnectionId, ListenerId};

/// The transport a client's requests arrive on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// UDP datagrams on one of the listen sockets.
    Udp(ListenerId),
    /// A TCP or TLS connection (framed by the driver; ChannelData to it is padded).
    Stream(ConnectionId),
}

/// A client: its transport and its (reflexive) transport address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    /// How the client reaches us.
    pub transport: Transport,
    /// The client's address as we see it (XOR-MAPPED-ADDRESS, nonces).
    pub addr: SocketAddr,
}

impl ClientKey {
    /// A client sending UDP datagrams to listen socket `listener`.
    pub fn udp(listener: ListenerId, addr: SocketAddr) -> Self {
        ClientKey {
            transport: Transport::Udp(listener),
            addr,
        }
    }

    /// A client on TCP or TLS connection `connection` from `addr`.
    pub fn stream(connection: ConnectionId, addr: SocketAddr) -> Self {
        ClientKey {
            transport: Transport::Stream(connection),
            addr,
        }
    }
}
