//! The core's drops of client messages, split by stream transport (issue 12 item 5) without
//! touching the core: the core counts a drop, not the transport it came over, and cannot
//! tell TCP from TLS. Around each stream frame the driver reads the few client-side drop
//! counters before and after (plain loads and adds: no allocation, no hashing) and adds the
//! difference to the frame's transport; UDP's share is the total minus both.

use crate::core::Counters;

/// The reasons a client's message is dropped in the core, as in `relay_drops_total`.
pub(crate) const REASONS: [&str; 6] = [
    "malformed",
    "unexpected_stun",
    "channel_data_no_allocation",
    "channel_data_unbound",
    "send_indication",
    "rate_limited",
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
