//! Writing to stream clients: frames are queued (bounded, `Connection::send`) as they come,
//! and each connection's queue is written once per socket read (`flush_connections`): a
//! burst of datagrams for one client costs one write (a writev over TLS), not one each.
//! Measured (tests/turn_over_stream.rs): 128 ChannelData frames in 2 write calls, was 128.

use super::Streams;
use crate::driver::{Driver, Socket};

/// Queues `frame` on connection `key` (a response or a relayed datagram); counts a drop.
pub(in crate::driver) fn send_frame(
    sockets: &mut slab::Slab<Socket>,
    streams: &mut Streams,
    key: usize,
    frame: &[u8],
) -> bool {
    let Some(Socket::Connection(conn)) = sockets.get_mut(key) else {
        return false;
    };
    let kind = conn.kind() as usize;
    if conn.send(frame) {
        streams.counters.bytes_out[kind] += frame.len() as u64;
        if !conn.unflushed {
            conn.unflushed = true;
            streams.unflushed.push(key);
        }
    } else {
        streams.counters.write_queue_full[kind] += 1;
    }
    true
}

impl Driver {
    /// Writes out what each connection queued since its last flush: one write (writev over
    /// TLS) per connection, however many frames. Write errors are left for the next read.
    pub(in crate::driver) fn flush_connections(&mut self) {
        let mut unflushed = std::mem::take(&mut self.streams.unflushed);
        for key in unflushed.drain(..) {
            if let Some(Socket::Connection(conn)) = self.sockets.get_mut(key) {
                conn.unflushed = false;
                let _ = conn.flush(&mut self.streams.counters.write_calls[conn.kind() as usize]);
            }
        }
        self.streams.unflushed = unflushed;
    }
}
