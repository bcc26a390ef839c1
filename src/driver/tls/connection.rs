//! One TLS connection, sans-IO: the driver hands in the ciphertext it read from the socket,
//! takes plaintext out into its own bounded buffer, queues whole frames to send, and writes
//! the ciphertext out when the socket is writable. rustls does the rest
//! (`read_tls`/`process_new_packets`/`write_tls`, DESIGN.md).

use std::io::{self, ErrorKind, Read};
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

/// `read_tls` calls per `receive`: each reads at most one of rustls' buffer fills (4 KiB, or
/// the rest of a record), so one call does bounded work however much the client sent.
const READS_PER_RECEIVE: usize = 4;
/// The most a TLS record adds to its plaintext with ring's suites (TLS 1.2 AES-GCM: 5-byte
/// header, 8-byte explicit nonce, 16-byte tag; TLS 1.3 and ChaCha20 add less).
const MAX_RECORD_OVERHEAD: usize = 29;
/// rustls splits plaintext into records of at most 16 KiB.
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// What one `receive` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Ciphertext bytes taken; the caller keeps the rest for the next call.
    pub consumed: usize,
    /// Plaintext bytes waiting for `read_plaintext`.
    pub plaintext: usize,
    /// The client sent close_notify: nothing more will come.
    pub peer_closed: bool,
}

pub struct TlsConnection {
    conn: ServerConnection,
    /// Most ciphertext to hold for a client that does not read; beyond it frames are refused.
    write_limit: usize,
    /// An upper bound on the ciphertext of queued frames not yet written.
    unsent: usize,
}

impl TlsConnection {
    /// A connection that will hold at most about `write_limit` bytes of ciphertext to send
    /// (plus the handshake's own flight).
    pub fn new(config: Arc<ServerConfig>, write_limit: usize) -> Result<Self, rustls::Error> {
        let mut conn = ServerConnection::new(config)?;
        // The bound is ours (queue_plaintext): rustls' own would cut a frame in two.
        conn.set_buffer_limit(None);
        Ok(TlsConnection {
            conn,
            write_limit,
            unsent: 0,
        })
    }

    /// Feeds ciphertext read from the socket and processes the records it completes. Takes
    /// what rustls can buffer now, at most `READS_PER_RECEIVE` reads, and stops early while
    /// plaintext waits to be read. On error the connection is over: write out the alert
    /// (`write_ciphertext`) and close.
    pub fn receive(&mut self, ciphertext: &[u8]) -> Result<Received, rustls::Error> {
        let mut rest = ciphertext;
        let mut state = self.conn.process_new_packets()?;
        for _ in 0..READS_PER_RECEIVE {
            if rest.is_empty() || state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
                break;
            }
            match self.conn.read_tls(&mut rest) {
                // close_notify came before: the rest is ignored.
                Ok(0) => break,
                Ok(_) => state = self.conn.process_new_packets()?,
                // Backpressure: rustls' received-plaintext buffer is full.
                Err(e) if e.kind() == ErrorKind::Other => break,
                // A handshake message beyond rustls' limit (64 KiB).
                Err(e) => return Err(rustls::Error::General(e.to_string())),
            }
        }
        Ok(Received {
            consumed: ciphertext.len() - rest.len(),
            plaintext: state.plaintext_bytes_to_read(),
            peer_closed: state.peer_has_closed(),
        })
    }

    /// Moves received plaintext into `out`; returns the bytes moved (0 when none waits).
    pub fn read_plaintext(&mut self, out: &mut [u8]) -> usize {
        // WouldBlock (nothing yet) and the peer's end of data both read as 0.
        self.conn.reader().read(out).unwrap_or(0)
    }

    /// Queues one whole frame to send, or refuses it (false: the caller counts a drop) if
    /// the client is not reading fast enough. Before the handshake completes the frame waits
    /// in rustls and is encrypted once it does.
    pub fn queue_plaintext(&mut self, frame: &[u8]) -> bool {
        if self.is_drained() {
            self.unsent = 0;
        }
        let records = frame.len().div_ceil(MAX_RECORD_PLAINTEXT).max(1);
        let cost = frame.len() + records * MAX_RECORD_OVERHEAD;
        if self.unsent + cost > self.write_limit {
            return false;
        }
        // Without a rustls buffer limit a write takes everything.
        match io::Write::write_all(&mut self.conn.writer(), frame) {
            Ok(()) => {
                self.unsent += cost;
                true
            }
            Err(_) => false,
        }
    }

    /// Writes queued ciphertext (handshake, frames, alerts) to `out` until it is drained or
    /// `out` would block; returns the bytes written. The queue is bounded, so is the work.
    pub fn write_ciphertext(&mut self, out: &mut dyn io::Write) -> io::Result<usize> {
        let mut written = 0;
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.unsent = if self.is_drained() {
            0
        } else {
            self.unsent.saturating_sub(written)
        };
        Ok(written)
    }

    /// Nothing queued: before the handshake completes frames wait unencrypted in rustls,
    /// where `wants_write` does not see them.
    fn is_drained(&self) -> bool {
        self.is_handshake_complete() && !self.conn.wants_write()
    }

    /// Ciphertext waits to be written: ask for writability.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    pub fn is_handshake_complete(&self) -> bool {
        !self.conn.is_handshaking()
    }

    /// The ALPN protocol chosen, if the client offered one we serve.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Queues close_notify; write it out, then close the socket.
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_pki::{Pki, handshake, handshake_with, pump, server_config};
    use super::*;
    use rustls::version::{TLS12, TLS13};

    #[test]
    fn full_handshake_and_bytes_both_ways_over_tls_1_2_and_1_3() {
        let pki = Pki::new();
        let server = pki.server("relay.test");
        for version in [&TLS12, &TLS13] {
            let config = server_config(&server);
            let mut done = handshake(&pki, config, "relay.test", version, None);
            assert_eq!(done.server.protocol_version(), Some(version.version));
            assert!(done.server.is_handshake_complete());
            assert_eq!(done.peer_leaf, server.cert_der);

            // Client to server: a STUN-sized message and a large one across several records.
            let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
            for message in [&b"\x00\x01 binding"[..], &big] {
                io::Write::write_all(&mut done.client.writer(), message).unwrap();
                let got = pump(&mut done.client, &mut done.server);
                assert_eq!(got, message);
            }
            // Server to client.
            assert!(done.server.queue_plaintext(b"\x40\x00\x00\x01x\0\0\0"));
            pump(&mut done.client, &mut done.server);
            let mut got = [0u8; 16];
            let n = done.client.reader().read(&mut got).unwrap();
            assert_eq!(&got[..n], b"\x40\x00\x00\x01x\0\0\0");
        }
    }

    #[test]
    fn alpn_stun_turn_when_offered_and_none_when_not() {
        let pki = Pki::new();
        let server = pki.server("relay.test");
        for version in [&TLS12, &TLS13] {
            let done = handshake(
                &pki,
                server_config(&server),
                "relay.test",
                version,
                Some(vec![b"h2".to_vec(), b"stun.turn".to_vec()]),
            );
            assert_eq!(done.server.alpn_protocol(), Some(&b"stun.turn"[..]));
            assert_eq!(done.client.alpn_protocol(), Some(&b"stun.turn"[..]));

            let done = handshake(&pki, server_config(&server), "relay.test", version, None);
            assert_eq!(done.server.alpn_protocol(), None);
        }
    }

    #[test]
    fn a_client_that_does_not_read_loses_frames_not_memory() {
        let pki = Pki::new();
        let server = pki.server("relay.test");
        let frame = [0x40u8; 1200];
        // 3 x (1200 + 29) fit in 4096, a fourth does not.
        let mut fresh = TlsConnection::new(server_config(&server), 4096).unwrap();
        let accepted = (0..10).filter(|_| fresh.queue_plaintext(&frame)).count();
        assert_eq!(accepted, 3, "before the handshake, frames wait and count");

        let limited = TlsConnection::new(server_config(&server), 4096).unwrap();
        let mut done = handshake_with(&pki, limited, "relay.test", &TLS13, None);
        let mut refused = 0;
        for _ in 0..3 {
            let accepted = (0..10)
                .filter(|_| done.server.queue_plaintext(&frame))
                .count();
            assert_eq!(accepted, 3);
            refused += 10 - accepted;
            // The client reads: once written out, there is room again.
            let mut wire = Vec::new();
            done.server.write_ciphertext(&mut wire).unwrap();
            assert!(!done.server.wants_write());
            done.client.read_tls(&mut &wire[..]).unwrap();
            let state = done.client.process_new_packets().unwrap();
            assert_eq!(state.plaintext_bytes_to_read(), 3 * 1200);
            let mut got = vec![0u8; 3 * 1200];
            done.client.reader().read_exact(&mut got).unwrap();
            assert!(got.iter().all(|b| *b == 0x40), "whole frames only");
        }
        assert_eq!(refused, 21);
    }

    #[test]
    fn receive_does_bounded_work_and_garbage_is_an_error() {
        let pki = Pki::new();
        let server = pki.server("relay.test");
        let mut done = handshake(&pki, server_config(&server), "relay.test", &TLS13, None);
        let big = vec![7u8; 200_000];
        done.client.set_buffer_limit(None);
        io::Write::write_all(&mut done.client.writer(), &big).unwrap();
        let mut ciphertext = Vec::new();
        while done.client.wants_write() {
            done.client.write_tls(&mut ciphertext).unwrap();
        }
        // Fed everything at once, each call takes a bounded bite; all of it arrives.
        let mut rest = &ciphertext[..];
        let mut got = Vec::new();
        let mut plaintext = [0u8; 1500];
        let mut calls = 0;
        while !rest.is_empty() || got.len() < big.len() {
            let received = done.server.receive(rest).unwrap();
            calls += 1;
            assert!(received.consumed <= READS_PER_RECEIVE * 4096 + MAX_RECORD_PLAINTEXT);
            assert!(received.plaintext <= 16 * 1024 + MAX_RECORD_PLAINTEXT);
            rest = &rest[received.consumed..];
            loop {
                let n = done.server.read_plaintext(&mut plaintext);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&plaintext[..n]);
            }
            assert!(calls < 1000);
        }
        assert_eq!(got, big);
        assert!(calls >= ciphertext.len() / (READS_PER_RECEIVE * 4096 + MAX_RECORD_PLAINTEXT));

        let mut fresh = TlsConnection::new(server_config(&server), 65536).unwrap();
        assert!(fresh.receive(b"GET / HTTP/1.1\r\n\r\n").is_err());
        let mut alert = Vec::new();
        fresh.write_ciphertext(&mut alert).unwrap();
        assert_eq!(alert.first(), Some(&0x15), "an alert record for the client");
    }
}
