//! One client connection: its socket, TLS or not, the start of an incomplete frame, and its
//! bounded write queue.

use std::io::{self, ErrorKind, IoSlice, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;

use crate::driver::tls::connection::TlsConnection;

/// Bytes of frames queued for one client that is slow to read (about 50 maximal media
/// datagrams): beyond it frames are dropped, so a stalled client costs this much at most.
pub(super) const WRITE_LIMIT: usize = 64 * 1024;

/// Write queue capacity kept once it is empty.
const KEEP_WRITE_CAPACITY: usize = 4096;

/// The two stream transports, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Tcp = 0,
    Tls = 1,
}

impl Kind {
    pub(crate) const ALL: [Kind; 2] = [Kind::Tcp, Kind::Tls];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Tls => "tls",
        }
    }
}

/// Why a connection closed: counted by transport, and for a TLS handshake not done, as its
/// failure reason (found by review: abandoned handshakes were counted nowhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// The client closed it, reset it, or a read or write failed.
    Client,
    /// Bytes that cannot start a frame.
    InvalidFrame,
    /// A TLS error (bad records, an alert).
    TlsError,
    /// The TLS handshake was not done by its deadline.
    HandshakeTimeout,
    /// No allocation by the deadline.
    NoAllocation,
    /// Closed, still without an allocation, to make room for a new connection.
    Evicted,
    /// Its allocation ended (expiry, Refresh 0): the connection serves nothing more.
    AllocationEnded,
}

impl Close {
    pub(crate) const COUNT: usize = 7;
    pub(crate) const ALL: [Close; Close::COUNT] = [
        Close::Client,
        Close::InvalidFrame,
        Close::TlsError,
        Close::HandshakeTimeout,
        Close::NoAllocation,
        Close::Evicted,
        Close::AllocationEnded,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Close::Client => "client",
            Close::InvalidFrame => "invalid_frame",
            Close::TlsError => "tls_error",
            Close::HandshakeTimeout => "timeout",
            Close::NoAllocation => "no_allocation",
            Close::Evicted => "evicted",
            Close::AllocationEnded => "allocation_ended",
        }
    }
}

pub(super) enum State {
    /// No byte read yet: TLS or plain is decided by the first one.
    Undecided,
    Tcp,
    Tls(Box<TlsConnection>),
}

pub(crate) struct Connection {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) generation: u64,
    /// No allocation yet: counted against the pending limit, closed at its deadline.
    pub(super) pending: bool,
    /// Frames were queued since the last flush (the key is in `Streams::unflushed`).
    pub(super) unflushed: bool,
    pub(super) state: State,
    /// The start of a frame not yet complete.
    pub(super) read: Vec<u8>,
    /// Plain TCP: bytes to write, from `written` on.
    pub(super) write: Vec<u8>,
    pub(super) written: usize,
}

impl Connection {
    pub(super) fn kind(&self) -> Kind {
        match self.state {
            State::Tls(_) => Kind::Tls,
            _ => Kind::Tcp,
        }
    }

    pub(super) fn is_handshaking(&self) -> bool {
        matches!(&self.state, State::Tls(tls) if !tls.is_handshake_complete())
    }

    /// Whether reading this connection may cost a TLS handshake step: during the handshake,
    /// and, when TLS is served, on its first read too, which carries the ClientHello (the
    /// key exchange and the certificate signature: the costly step). Found by review: a
    /// flood of ClientHellos was outside the per-turn budget and stalled UDP for seconds.
    pub(super) fn may_cost_a_handshake_step(&self, tls_enabled: bool) -> bool {
        self.is_handshaking() || (tls_enabled && matches!(self.state, State::Undecided))
    }

    /// Queues one whole frame, or refuses it when the client is too slow (false). Nothing
    /// is written here: `flush` writes all a turn queued in one call (a burst of datagrams
    /// for one client costs one write/writev, not one each).
    pub(super) fn send(&mut self, frame: &[u8]) -> bool {
        match &mut self.state {
            State::Tls(tls) => tls.queue_plaintext(frame),
            State::Tcp | State::Undecided => {
                if self.write.len() - self.written + frame.len() > WRITE_LIMIT {
                    return false;
                }
                self.write.extend_from_slice(frame);
                true
            }
        }
    }

    /// Writes what is queued until done or the socket would block; counts the write calls.
    pub(super) fn flush(&mut self, writes: &mut u64) -> io::Result<()> {
        let mut out = Counted {
            stream: &mut self.stream,
            calls: writes,
        };
        match &mut self.state {
            State::Tls(tls) => tls.write_ciphertext(&mut out).map(|_| ()),
            State::Tcp | State::Undecided => {
                while self.written < self.write.len() {
                    match out.write(&self.write[self.written..]) {
                        Ok(0) => return Err(ErrorKind::WriteZero.into()),
                        Ok(n) => self.written += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                if self.written == self.write.len() {
                    self.write.clear();
                    self.written = 0;
                    // An idle connection keeps a small queue (a few frames: no allocation
                    // per turn for a steady flow), not what a burst needed.
                    if self.write.capacity() > KEEP_WRITE_CAPACITY {
                        self.write = Vec::new();
                    }
                } else if self.written >= WRITE_LIMIT {
                    // A client that reads slowly but steadily never empties its queue: drop
                    // what was written, or the queue grows by all ever sent (found by review:
                    // 32 MB for 20 MB relayed). One move of at most WRITE_LIMIT bytes per
                    // WRITE_LIMIT written.
                    self.write.drain(..self.written);
                    self.written = 0;
                }
                Ok(())
            }
        }
    }
}

/// A connection's socket that counts the write calls (syscalls) made on it.
struct Counted<'a> {
    stream: &'a mut TcpStream,
    calls: &'a mut u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        *self.calls += 1;
        self.stream.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        *self.calls += 1;
        self.stream.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// A client that reads slowly but steadily, so that the queue is never empty after a
    /// flush: the queue's memory stays bounded by the limit, not by what was ever sent.
    #[test]
    fn a_queue_that_never_empties_stays_bounded() {
        // Small socket buffers: the kernel takes about what the client read each time.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&listener)
            .set_recv_buffer_size(4096)
            .unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        socket2::SockRef::from(&stream)
            .set_send_buffer_size(4096)
            .unwrap();
        let (mut client, _) = listener.accept().unwrap();
        // Bounded: a bug that stops the writes fails the test instead of hanging it.
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let peer = client.local_addr().unwrap();
        let mut conn = Connection {
            stream,
            peer,
            generation: 1,
            pending: false,
            unflushed: false,
            state: State::Tcp,
            read: Vec::new(),
            write: Vec::new(),
            written: 0,
        };
        let frame = [0x40u8; 1024];
        let mut buf = vec![0u8; 1000];
        let mut calls = 0;
        let mut largest = 0;
        let mut connected = false;
        for _ in 0..20_000 {
            while conn.send(&frame) {}
            match conn.flush(&mut calls) {
                Ok(()) => connected = true,
                // The non-blocking connect may not be done on the first rounds.
                Err(e) if e.kind() == ErrorKind::NotConnected && !connected => {}
                Err(e) => panic!("{e}"),
            }
            largest = largest.max(conn.write.capacity());
            // Less than the queue holds: it never empties.
            client.read_exact(&mut buf).unwrap();
        }
        assert!(largest <= 4 * WRITE_LIMIT, "{largest} bytes queued");
    }
}
