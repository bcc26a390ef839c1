//! The core's drops of client messages, split by stream transport (issue 12 item 5) without
//! touching the core: the core counts a drop, not the transport it came over, and cannot
//! tell TCP from TLS. Around each stream frame the driver reads the few client-side drop
//! counters before and after (plain loads and adds: no allocation, no hashing) and adds the
//! difference to the frame's transport; the same around each peer datagram for a stream
//! client (its relay socket knows the connection). UDP's share is the total minus both.

use super::{Kind, StreamCounters};
use crate::core::{Counters, Server};

/// The reasons a client's message, or a peer's datagram for a client, is dropped in the
/// core, as in `relay_drops_total`.
pub(crate) const REASONS: [&str; 10] = [
    "malformed",
    "unexpected_stun",
    "channel_data_no_allocation",
    "channel_data_unbound",
    "send_indication",
    "rate_limited",
    "peer_no_permission",
    "peer_no_allocation",
    "peer_too_large",
    "from_own_socket",
];

/// One count per entry of `REASONS`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClientDrops(pub [u64; REASONS.len()]);

impl ClientDrops {
    pub(crate) fn of(c: &Counters) -> ClientDrops {
        ClientDrops([
            c.malformed,
            c.unexpected_stun,
            c.channel_data_no_allocation,
            c.channel_data_unbound,
            c.send_dropped,
            c.rate_limited,
            c.peer_no_permission,
            c.peer_no_allocation,
            c.peer_too_large,
            c.from_own_socket,
        ])
    }

    /// Adds what grew from `before` to `after`.
    pub(crate) fn add_growth(&mut self, before: &ClientDrops, after: &ClientDrops) {
        for ((total, b), a) in self.0.iter_mut().zip(before.0).zip(after.0) {
            *total += a.wrapping_sub(b);
        }
    }

    /// `self` minus both stream transports' counts: UDP's share.
    pub(crate) fn minus(&self, streams: &[ClientDrops; 2]) -> ClientDrops {
        let mut rest = *self;
        for (i, total) in rest.0.iter_mut().enumerate() {
            *total = total.saturating_sub(streams[0].0[i] + streams[1].0[i]);
        }
        rest
    }
}

/// Runs `handle` (the core handling a peer datagram for an allocation whose client uses the
/// stream transport `kind`, if any) and counts its drops under that transport.
pub(in crate::driver) fn peer_datagram<T>(
    core: &mut Server,
    counters: &mut StreamCounters,
    kind: Option<Kind>,
    handle: impl FnOnce(&mut Server) -> T,
) -> T {
    let Some(kind) = kind else {
        return handle(core);
    };
    let before = ClientDrops::of(core.counters());
    let result = handle(core);
    let after = ClientDrops::of(core.counters());
    if after != before {
        counters.client_drops[kind as usize].add_growth(&before, &after);
    }
    result
}
