//! What happens to connections with time: TLS handshake and Allocate deadlines, making room
//! by closing the oldest connection still without an allocation, closing a connection whose
//! allocation ended, and retrying listeners whose accept ran out of descriptors.

use std::io;
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::{Close, Due};
use crate::core::{ConnectionId, Now};
use crate::driver::{Driver, Socket};

/// How soon a listener whose accept failed (out of descriptors) is tried again, when no
/// connection closes before.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

impl Driver {
    /// Closes the connections past a deadline. (A write error is not handled where it
    /// happens, in the middle of draining outputs: the socket reports it again as readable
    /// and the read closes the connection.)
    pub(in crate::driver) fn expire_connections(&mut self, now: Now) {
        while let Some(due) = self.streams.handshake_due.front().copied() {
            if due.at > now.instant {
                break;
            }
            self.streams.handshake_due.pop_front();
            if let Some(Socket::Connection(conn)) = self.live(due)
                && conn.is_handshaking()
            {
                self.close_connection(due.key, now, Close::HandshakeTimeout);
            }
        }
        while let Some(due) = self.streams.pending_due.front().copied() {
            if due.at > now.instant {
                break;
            }
            self.streams.pending_due.pop_front();
            if let Some(Socket::Connection(conn)) = self.live(due)
                && conn.pending
            {
                self.close_connection(due.key, now, Close::NoAllocation);
            }
        }
    }

    /// Closes the oldest connection still without an allocation; false if there is none.
    pub(super) fn evict_oldest_pending(&mut self, now: Now) -> bool {
        while let Some(due) = self.streams.pending_due.pop_front() {
            if let Some(Socket::Connection(conn)) = self.live(due)
                && conn.pending
            {
                self.close_connection(due.key, now, Close::Evicted);
                return true;
            }
        }
        false
    }

    /// Drops the entries of closed connections once they outnumber the open ones: the
    /// queues stay O(connections) however fast clients come and go.
    pub(super) fn compact_deadlines(&mut self) {
        let bound = 2 * self.streams.options.max_connections + 64;
        let sockets = &self.sockets;
        let live = |due: &Due| matches!(sockets.get(due.key), Some(Socket::Connection(c)) if c.generation == due.generation);
        for queue in [
            &mut self.streams.pending_due,
            &mut self.streams.handshake_due,
        ] {
            if queue.len() > bound {
                queue.retain(live);
            }
        }
    }

    /// The connection a deadline was set for, if it is still open (slab keys are reused).
    fn live(&self, due: Due) -> Option<&Socket> {
        self.sockets
            .get(due.key)
            .filter(|s| matches!(s, Socket::Connection(c) if c.generation == due.generation))
    }

    /// accept() on listener `key` failed: try again soon, or when a connection closes.
    pub(super) fn accept_failed(&mut self, key: usize, now: Instant, e: &io::Error) {
        let streams = &mut self.streams;
        streams.counters.accept_failed += 1;
        if !streams.accept_failing {
            streams.accept_failing = true;
            warn!("cannot accept TCP connections: {e}; retrying every {ACCEPT_RETRY:?}");
        } else {
            debug!("accept on {key}: {e}");
        }
        if !streams.starved.contains(&key) {
            streams.starved.push(key);
        }
        streams.accept_retry_at = Some(now + ACCEPT_RETRY);
    }

    /// The listeners to accept on again this turn (their retry is due).
    pub(in crate::driver) fn due_accepts(&mut self, now: Instant, ready: &mut Vec<usize>) {
        let streams = &mut self.streams;
        if streams.accept_retry_at.is_some_and(|at| at <= now) {
            streams.accept_retry_at = None;
            ready.append(&mut streams.starved);
        }
    }

    /// A relay socket of connection `owner` (key, generation) closed: its allocation ended.
    pub(in crate::driver) fn allocation_ended(&mut self, owner: (usize, u64)) {
        self.streams.ended.push(owner);
    }

    /// Closes the connections whose allocation ended this turn (expiry, Refresh 0), unless
    /// they hold a new one already. RFC 8656 leaves it to the server; a connection without
    /// its allocation serves nothing, and its slot is worth more to a new client.
    pub(in crate::driver) fn close_ended_connections(&mut self, now: Now) {
        while let Some((key, generation)) = self.streams.ended.pop() {
            let Some(Socket::Connection(conn)) = self.sockets.get(key) else {
                continue;
            };
            if conn.generation == generation
                && !self
                    .core
                    .has_stream_allocation(ConnectionId(key), conn.peer)
            {
                self.close_connection(key, now, Close::AllocationEnded);
            }
        }
    }
}
