//! Just enough STUN/TURN (RFC 8489, RFC 8656) for a load generator: encode Binding,
//! Allocate and ChannelBind requests with MESSAGE-INTEGRITY and FINGERPRINT, ChannelData
//! frames, and decode the few response attributes a client needs. Written here rather than
//! taken from the relay crate so that the benchmark shares no code (and no bug) with the
//! server it measures, and the relay's dependencies stay as they are.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

pub const BINDING_REQUEST: u16 = 0x0001;
pub const BINDING_SUCCESS: u16 = 0x0101;
pub const ALLOCATE_REQUEST: u16 = 0x0003;
pub const ALLOCATE_SUCCESS: u16 = 0x0103;
pub const ALLOCATE_ERROR: u16 = 0x0113;
pub const CHANNEL_BIND_REQUEST: u16 = 0x0009;
pub const CHANNEL_BIND_SUCCESS: u16 = 0x0109;
pub const CHANNEL_BIND_ERROR: u16 = 0x0119;

pub const ATTR_USERNAME: u16 = 0x0006;
pub const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ATTR_ERROR_CODE: u16 = 0x0009;
pub const ATTR_CHANNEL_NUMBER: u16 = 0x000C;
pub const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
pub const ATTR_REALM: u16 = 0x0014;
pub const ATTR_NONCE: u16 = 0x0015;
pub const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
pub const ATTR_FINGERPRINT: u16 = 0x8028;

/// TURN REST API credentials: username `<expiry>:<id>`, password base64(HMAC-SHA1(secret,
/// username)), long-term key MD5(username:realm:password).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub key: [u8; 16],
}

impl Credentials {
    pub fn rest_api(secret: &str, realm: &str, id: &str) -> Credentials {
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 24 * 3600;
        let username = format!("{expiry}:{id}");
        let mut mac =
            <Hmac<Sha1> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(username.as_bytes());
        let password = STANDARD.encode(mac.finalize().into_bytes());
        let key: [u8; 16] = Md5::new()
            .chain_update(&username)
            .chain_update(":")
            .chain_update(realm)
            .chain_update(":")
            .chain_update(&password)
            .finalize()
            .into();
        Credentials { username, key }
    }
}

/// A STUN message under construction.
pub struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    pub fn new(msg_type: u16, tid: [u8; 12]) -> Builder {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&msg_type.to_be_bytes());
        buf.extend_from_slice(&0u16.to_be_bytes());
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid);
        Builder { buf }
    }

    fn set_length(&mut self, len: usize) {
        let len = (len as u16).to_be_bytes();
        self.buf[2..4].copy_from_slice(&len);
    }

    pub fn attr(mut self, attr_type: u16, value: &[u8]) -> Builder {
        self.buf.extend_from_slice(&attr_type.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        let len = self.buf.len() - 20;
        self.set_length(len);
        self
    }

    pub fn xor_address(self, attr_type: u16, addr: SocketAddr, tid: &[u8; 12]) -> Builder {
        let value = encode_xor_address(addr, tid);
        self.attr(attr_type, &value)
    }

    /// USERNAME, REALM, NONCE, then MESSAGE-INTEGRITY over everything before it.
    pub fn authenticate(self, creds: &Credentials, realm: &[u8], nonce: &[u8]) -> Builder {
        let mut b = self
            .attr(ATTR_USERNAME, creds.username.as_bytes())
            .attr(ATTR_REALM, realm)
            .attr(ATTR_NONCE, nonce);
        // The length field covers the MESSAGE-INTEGRITY attribute (24 bytes) when hashing.
        let len = b.buf.len() - 20 + 24;
        b.set_length(len);
        let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(&creds.key).expect("any key length");
        mac.update(&b.buf);
        let digest = mac.finalize().into_bytes();
        b.attr(ATTR_MESSAGE_INTEGRITY, &digest)
    }

    pub fn fingerprint(mut self) -> Vec<u8> {
        let len = self.buf.len() - 20 + 8;
        self.set_length(len);
        let crc = crc32fast::hash(&self.buf) ^ FINGERPRINT_XOR;
        self.attr(ATTR_FINGERPRINT, &crc.to_be_bytes()).buf
    }
}

pub fn encode_xor_address(addr: SocketAddr, tid: &[u8; 12]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    v.push(0);
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.push(0x01);
            v.extend_from_slice(&port.to_be_bytes());
            let x = u32::from(ip) ^ MAGIC_COOKIE;
            v.extend_from_slice(&x.to_be_bytes());
        }
        IpAddr::V6(ip) => {
            v.push(0x02);
            v.extend_from_slice(&port.to_be_bytes());
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(tid);
            for (o, m) in ip.octets().iter().zip(mask) {
                v.push(o ^ m);
            }
        }
    }
    v
}

fn decode_xor_address(value: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    if value.len() < 8 {
        return None;
    }
    let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    match value[1] {
        0x01 => {
            let x = u32::from_be_bytes([value[4], value[5], value[6], value[7]]) ^ MAGIC_COOKIE;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(x)), port))
        }
        0x02 if value.len() >= 20 => {
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(tid);
            let mut o = [0u8; 16];
            for i in 0..16 {
                o[i] = value[4 + i] ^ mask[i];
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => None,
    }
}

/// A decoded STUN message: its type, transaction id and attributes (borrowed).
pub struct Parsed<'a> {
    pub msg_type: u16,
    pub tid: [u8; 12],
    attrs: Vec<(u16, &'a [u8])>,
}

impl<'a> Parsed<'a> {
    pub fn parse(buf: &'a [u8]) -> Option<Parsed<'a>> {
        if buf.len() < 20 || buf[0] & 0xC0 != 0 {
            return None;
        }
        let msg_type = u16::from_be_bytes([buf[0], buf[1]]);
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        if u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE
            || 20 + len > buf.len()
        {
            return None;
        }
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&buf[8..20]);
        let mut attrs = Vec::new();
        let mut at = 20;
        while at + 4 <= 20 + len {
            let t = u16::from_be_bytes([buf[at], buf[at + 1]]);
            let l = u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize;
            if at + 4 + l > 20 + len {
                return None;
            }
            attrs.push((t, &buf[at + 4..at + 4 + l]));
            at += 4 + l.div_ceil(4) * 4;
        }
        Some(Parsed {
            msg_type,
            tid,
            attrs,
        })
    }

    pub fn attr(&self, t: u16) -> Option<&'a [u8]> {
        self.attrs.iter().find(|(at, _)| *at == t).map(|(_, v)| *v)
    }

    pub fn error_code(&self) -> Option<u16> {
        let v = self.attr(ATTR_ERROR_CODE)?;
        if v.len() < 4 {
            return None;
        }
        Some(u16::from(v[2] & 0x07) * 100 + u16::from(v[3]))
    }

    pub fn xor_address(&self, t: u16) -> Option<SocketAddr> {
        decode_xor_address(self.attr(t)?, &self.tid)
    }
}

/// A ChannelData frame header for `len` bytes of payload on `channel`.
pub fn channel_data_header(channel: u16, len: usize) -> [u8; 4] {
    let c = channel.to_be_bytes();
    let l = (len as u16).to_be_bytes();
    [c[0], c[1], l[0], l[1]]
}

/// Transaction ids: a counter in the low bytes, a per-run tag in the high bytes.
pub struct TidSource {
    tag: [u8; 4],
    next: u64,
}

impl TidSource {
    pub fn new() -> TidSource {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        TidSource {
            tag: (nanos ^ std::process::id()).to_be_bytes(),
            next: 1,
        }
    }

    pub fn next(&mut self) -> [u8; 12] {
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(&self.tag);
        t[4..].copy_from_slice(&self.next.to_be_bytes());
        self.next += 1;
        t
    }
}

impl Default for TidSource {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_round_trips() {
        let tid = [7u8; 12];
        let creds = Credentials::rest_api("s", "bench", "x");
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let msg = Builder::new(CHANNEL_BIND_REQUEST, tid)
            .attr(ATTR_CHANNEL_NUMBER, &[0x40, 0, 0, 0])
            .xor_address(ATTR_XOR_PEER_ADDRESS, peer, &tid)
            .authenticate(&creds, b"bench", b"nonce")
            .fingerprint();
        let p = Parsed::parse(&msg).unwrap();
        assert_eq!(p.msg_type, CHANNEL_BIND_REQUEST);
        assert_eq!(p.xor_address(ATTR_XOR_PEER_ADDRESS), Some(peer));
        assert_eq!(p.attr(ATTR_NONCE), Some(&b"nonce"[..]));
        assert_eq!(p.attr(ATTR_MESSAGE_INTEGRITY).unwrap().len(), 20);
        assert_eq!(p.attr(ATTR_FINGERPRINT).unwrap().len(), 4);
        assert_eq!(msg.len() % 4, 0);
    }
}
