//! What the metrics listener answers: `/metrics` (Prometheus text), `/livez` (the loop
//! runs) and `/healthz` (new allocations are taken: not draining, initialised, a port free).

use std::time::Instant;

use mio::Token;

use super::{Driver, http, metrics};
use crate::core::Family;

impl Driver {
    pub(super) fn accept_http(&mut self, now: Instant) {
        if let Some(http) = self.http.as_mut() {
            http.accept(self.poll.registry(), now);
        }
    }

    /// Answers a scrape or a health check. Rendering is O(allocations), per request only.
    pub(super) fn serve_http(&mut self, token: Token, now: Instant) {
        let stream_allocations = self.stream_allocations();
        let (core, io, start_time_unix) = (&self.core, &self.io, self.start_time_unix);
        let streams = &self.streams.counters;
        let Some(http) = self.http.as_mut() else {
            return;
        };
        let http_evicted = http.evicted();
        http.handle(token, self.poll.registry(), |route| match route {
            Some(http::Route::Metrics) => {
                let gauges = core.gauges(now);
                let snapshot = metrics::Snapshot {
                    counters: core.counters(),
                    gauges: &gauges,
                    io,
                    http_evicted,
                    start_time_unix,
                    streams,
                    stream_allocations,
                };
                (200, "text/plain; version=0.0.4", metrics::render(&snapshot))
            }
            Some(http::Route::Live) => (200, "text/plain", "ok\n".into()),
            Some(http::Route::Health) => {
                // Listeners are bound (or we would not be running); do we take new
                // allocations (not draining, initialised), and can we?
                if !core.availability().is_serving() {
                    (503, "text/plain", "not taking new allocations\n".into())
                } else if Family::ALL.iter().any(|f| core.can_allocate(*f)) {
                    (200, "text/plain", "ok\n".into())
                } else {
                    (503, "text/plain", "no relay capacity\n".into())
                }
            }
            None => (404, "text/plain", "not found\n".into()),
        });
    }
}
