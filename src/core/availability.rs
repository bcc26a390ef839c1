//! Whether the relay takes new allocations. Two features close the door while everything
//! already allocated goes on refreshing and relaying: a drain before stopping (SIGUSR1,
//! `--drain-seconds`) and a portal that has not yet sent `init` (Firezone mode).

use std::net::SocketAddr;

/// The relay's answer to a new Allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Availability {
    /// Allocates as usual.
    #[default]
    Serving,
    /// Waiting for the portal's `init`: new Allocates get 508 (Insufficient Capacity).
    NotReady,
    /// Draining before exit: new Allocates get 300 (Try Alternate) with ALTERNATE-SERVER
    /// when an alternate is configured, else 508.
    Draining { alternate: Option<SocketAddr> },
}

impl Availability {
    /// Whether new allocations are taken (what `/healthz` reports).
    pub fn is_serving(&self) -> bool {
        matches!(self, Availability::Serving)
    }
}
