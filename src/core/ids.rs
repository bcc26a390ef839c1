//! Identifiers shared by the core and the driver. Each role has its own type so that a
//! listener index can never be passed where a relay socket is expected.

use std::net::{IpAddr, SocketAddr};

/// One of the STUN/TURN listen sockets, by its index in `Config::listeners`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub u16);

/// A relay socket, named by the driver when it opens one (its slab index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub usize);

/// A TCP or TLS client connection, named by the driver when it accepts one (its slab
/// index). The driver reports its end through `Server::handle_connection_closed` before it
/// reuses the name, so a name always means one connection to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub usize);

/// An allocation, named by the core. The slot is reused after the allocation is gone; the
/// generation is not, so a stale name never reaches a later allocation in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationId {
    /// The slab slot, reused once the allocation is gone.
    pub slot: usize,
    /// Never reused: tells the allocation from later ones in its slot.
    pub generation: u64,
}

/// Address family of a relayed address or a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, in index order.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of an IP address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The family of a socket address.
    pub fn of_addr(addr: SocketAddr) -> Family {
        Family::of(addr.ip())
    }

    /// Index into per-family arrays.
    pub fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }
}
