//! The tests' own STUN encoder, written from the RFCs and independent of the core's encoder
//! and MAC code, so that a bug there cannot hide itself behind the same bug in the request
//! a test sends: the header (RFC 8489 §5), TLVs with padding (§14), XOR address encoding
//! (§14.2), MESSAGE-INTEGRITY (§14.5, HMAC-SHA1), FINGERPRINT (§14.7, CRC-32 xor
//! 0x5354554E), the long-term key (§9.2.2, MD5) and the TURN REST API password
//! (base64(HMAC-SHA1(secret, username))).
//!
//! Pinned by known answers (RFC 5769's test vectors, RFC 2202's HMAC-SHA1 vector) in
//! `tests/scenarios/known_answers.rs`, so that an encoder bug shows itself there first.
//! Every test crate that uses it declares it at its root:
//! `#[path = "support/stun_encoder.rs"] mod stun_encoder;`.
#![allow(dead_code)] // each test crate uses a different part of this

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine;
use hmac::{KeyInit, Mac};

pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// FINGERPRINT is the CRC-32 of the message XOR this (RFC 8489 §14.7).
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;
pub const HEADER_LEN: usize = 20;

/// Attribute codepoints (RFC 8489 §18.3, RFC 8656 §18, RFC 5766).
pub mod kind {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PRIORITY: u16 = 0x0024;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
}

/// The two class bits of a message type (RFC 8489 §5: C1 is bit 8, C0 bit 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0x000,
            Class::Indication => 0x010,
            Class::Success => 0x100,
            Class::Error => 0x110,
        }
    }

    /// The class of a message type.
    pub fn of(message_type: u16) -> Class {
        match message_type & 0x110 {
            0x000 => Class::Request,
            0x010 => Class::Indication,
            0x100 => Class::Success,
            _ => Class::Error,
        }
    }
}

impl From<stun_codec::MessageClass> for Class {
    fn from(class: stun_codec::MessageClass) -> Class {
        match class {
            stun_codec::MessageClass::Request => Class::Request,
            stun_codec::MessageClass::Indication => Class::Indication,
            stun_codec::MessageClass::SuccessResponse => Class::Success,
            stun_codec::MessageClass::ErrorResponse => Class::Error,
        }
    }
}

/// The message type: the 12 method bits M0..M11 interleaved with the class bits
/// (RFC 8489 §5, figure 3: M0-M3 at bits 0-3, M4-M6 at 5-7, M7-M11 at 9-13).
pub fn message_type(class: Class, method: u16) -> u16 {
    (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | class.bits()
}

/// The method of a message type (the inverse of `message_type`).
pub fn method_of(message_type: u16) -> u16 {
    (message_type & 0x000F) | ((message_type >> 1) & 0x0070) | ((message_type >> 2) & 0x0F80)
}

/// The value of an XOR-MAPPED-ADDRESS-style attribute (RFC 8489 §14.2): family, port XOR
/// the cookie's top half, address XOR the cookie (and, for IPv6, the transaction ID).
pub fn xor_address(addr: SocketAddr, tid: &[u8; 12]) -> Vec<u8> {
    let mask = xor_mask(tid);
    let port = addr.port() ^ 0x2112;
    let mut value = vec![0, if addr.is_ipv4() { 0x01 } else { 0x02 }];
    value.extend_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(v4) => value.extend(v4.octets().iter().zip(mask).map(|(b, m)| b ^ m)),
        IpAddr::V6(v6) => value.extend(v6.octets().iter().zip(mask).map(|(b, m)| b ^ m)),
    }
    value
}

/// The address in an XOR-*-ADDRESS value; None if it is not well-formed.
pub fn xor_address_decode(value: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    let mask = xor_mask(tid);
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ 0x2112;
    let ip = match (value.get(1)?, value.len()) {
        (0x01, 8) => {
            let mut o = [0u8; 4];
            for (i, b) in o.iter_mut().enumerate() {
                *b = value[4 + i] ^ mask[i];
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (0x02, 20) => {
            let mut o = [0u8; 16];
            for (i, b) in o.iter_mut().enumerate() {
                *b = value[4 + i] ^ mask[i];
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn xor_mask(tid: &[u8; 12]) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE);
    mask[4..].copy_from_slice(tid);
    mask
}

/// HMAC-SHA1 (RFC 2104).
pub fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The long-term credential key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(format!("{username}:{realm}:{password}").as_bytes()).into()
}

/// The TURN REST API password: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac_sha1(secret, username.as_bytes()))
}

/// The FINGERPRINT value of `bytes` (everything before the FINGERPRINT attribute, with the
/// header's length already counting it).
pub fn fingerprint_of(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes) ^ FINGERPRINT_XOR
}

/// A STUN message being written: header first, then TLVs in the order they are added.
#[derive(Debug, Clone)]
pub struct Encoder {
    bytes: Vec<u8>,
    tid: [u8; 12],
    /// The byte padding is made of (RFC 8489 §14: any value; RFC 5769 uses spaces).
    pad: u8,
}

impl Encoder {
    pub fn new(class: Class, method: u16, tid: [u8; 12]) -> Encoder {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&message_type(class, method).to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&MAGIC_COOKIE);
        bytes.extend_from_slice(&tid);
        Encoder { bytes, tid, pad: 0 }
    }

    /// Goes on writing a message whose header and TLVs are already in `bytes`.
    pub fn resume(bytes: Vec<u8>) -> Encoder {
        let tid = bytes[8..HEADER_LEN].try_into().expect("a STUN header");
        Encoder { bytes, tid, pad: 0 }
    }

    /// Pads with `byte` instead of zeros from now on.
    pub fn padding(mut self, byte: u8) -> Encoder {
        self.pad = byte;
        self
    }

    pub fn tid(&self) -> [u8; 12] {
        self.tid
    }

    /// One TLV, padded to 4 bytes; the header's length field follows.
    pub fn tlv(&mut self, kind: u16, value: &[u8]) -> &mut Encoder {
        let len = u16::try_from(value.len()).expect("attribute under 64 KiB");
        self.bytes.extend_from_slice(&kind.to_be_bytes());
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes.extend_from_slice(value);
        let padded = self.bytes.len().next_multiple_of(4);
        self.bytes.resize(padded, self.pad);
        self.set_length(self.bytes.len() - HEADER_LEN);
        self
    }

    /// An attribute; XOR addresses are encoded with this message's transaction ID.
    pub fn attr(&mut self, attr: &Attr) -> &mut Encoder {
        match &attr.value {
            Value::Bytes(value) => self.tlv(attr.kind, value),
            Value::XorAddress(addr) => {
                let value = xor_address(*addr, &self.tid);
                self.tlv(attr.kind, &value)
            }
        }
    }

    /// MESSAGE-INTEGRITY under `key` (RFC 8489 §14.5): the length field counts the
    /// attribute while the HMAC is computed over everything before it.
    pub fn integrity(&mut self, key: &[u8]) -> &mut Encoder {
        self.set_length(self.bytes.len() - HEADER_LEN + 24);
        let mac = hmac_sha1(key, &self.bytes);
        self.tlv(kind::MESSAGE_INTEGRITY, &mac)
    }

    /// FINGERPRINT (RFC 8489 §14.7), which must come last.
    pub fn fingerprint(&mut self) -> &mut Encoder {
        self.set_length(self.bytes.len() - HEADER_LEN + 8);
        let crc = fingerprint_of(&self.bytes);
        self.tlv(kind::FINGERPRINT, &crc.to_be_bytes())
    }

    /// Flips the lowest bit of the last byte written (to corrupt a MAC just added).
    pub fn flip_last_bit(&mut self) -> &mut Encoder {
        if let Some(last) = self.bytes.last_mut() {
            *last ^= 0x01;
        }
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    fn set_length(&mut self, len: usize) {
        let len = u16::try_from(len).expect("message under 64 KiB");
        self.bytes[2..4].copy_from_slice(&len.to_be_bytes());
    }
}

/// A message some test spelled with stun_codec's types, written by this encoder: its
/// attributes in order, then MESSAGE-INTEGRITY under `key` and FINGERPRINT if asked.
pub fn encode_message(
    message: &stun_codec::Message<codec::Attribute>,
    key: Option<&[u8]>,
    fingerprint: bool,
) -> Vec<u8> {
    let tid = *message.transaction_id().as_bytes();
    let mut m = Encoder::new(message.class().into(), message.method().as_u16(), tid);
    for attribute in message.attributes() {
        m.attr(&attribute.clone().into());
    }
    if let Some(key) = key {
        m.integrity(key);
    }
    if fingerprint {
        m.fingerprint();
    }
    m.bytes()
}

/// The (type, value) TLVs of a STUN message, in order; None if they do not exactly fill the
/// length the header gives.
pub fn tlvs(bytes: &[u8]) -> Option<Vec<(u16, Vec<u8>)>> {
    let len = usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]));
    if bytes.len() != HEADER_LEN + len {
        return None;
    }
    let mut out = Vec::new();
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let kind = u16::from_be_bytes([bytes[at], *bytes.get(at + 1)?]);
        let len = usize::from(u16::from_be_bytes([
            *bytes.get(at + 2)?,
            *bytes.get(at + 3)?,
        ]));
        out.push((kind, bytes.get(at + 4..at + 4 + len)?.to_vec()));
        at += 4 + len.next_multiple_of(4);
    }
    (at == bytes.len()).then_some(out)
}

/// Where the first attribute of `kind` starts (its TLV header), if the TLVs are sound.
fn offset_of(bytes: &[u8], wanted: u16) -> Option<usize> {
    let mut at = HEADER_LEN;
    for (kind, value) in tlvs(bytes)? {
        if kind == wanted {
            return Some(at);
        }
        at += 4 + value.len().next_multiple_of(4);
    }
    None
}

/// Whether `bytes` carries a MESSAGE-INTEGRITY that is valid under `key`, recomputed here
/// (RFC 8489 §14.5: over the message up to it, the length field counting it).
pub fn integrity_valid(bytes: &[u8], key: &[u8]) -> bool {
    let Some(at) = offset_of(bytes, kind::MESSAGE_INTEGRITY) else {
        return false;
    };
    let mut signed = bytes[..at].to_vec();
    let len = u16::try_from(at - HEADER_LEN + 24).expect("short message");
    signed[2..4].copy_from_slice(&len.to_be_bytes());
    bytes.get(at + 4..at + 24) == Some(&hmac_sha1(key, &signed)[..])
}

/// FINGERPRINT of `bytes`: None if absent; Some(valid and last) if present.
pub fn fingerprint_valid(bytes: &[u8]) -> Option<bool> {
    let at = offset_of(bytes, kind::FINGERPRINT)?;
    let mut covered = bytes[..at].to_vec();
    let len = u16::try_from(at - HEADER_LEN + 8).expect("short message");
    covered[2..4].copy_from_slice(&len.to_be_bytes());
    let value = bytes.get(at + 4..at + 8)?;
    Some(at + 8 == bytes.len() && value == fingerprint_of(&covered).to_be_bytes())
}

// ---------------------------------------------------------------------------------------
// Attributes as the tests write them
// ---------------------------------------------------------------------------------------

/// One attribute to encode. Tests write them with stun_codec's typed attributes (only as
/// a way of naming a value: `XorPeerAddress::new(peer).into()`); the bytes are ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub kind: u16,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bytes(Vec<u8>),
    /// XOR-encoded with the message's transaction ID when written.
    XorAddress(SocketAddr),
}

impl Attr {
    pub fn raw(kind: u16, value: &[u8]) -> Attr {
        Attr {
            kind,
            value: Value::Bytes(value.to_vec()),
        }
    }

    pub fn xor_address(kind: u16, addr: SocketAddr) -> Attr {
        Attr {
            kind,
            value: Value::XorAddress(addr),
        }
    }

    fn family(kind: u16, family: stun_codec::rfc8656::attributes::AddressFamily) -> Attr {
        use stun_codec::rfc8656::attributes::AddressFamily;
        let byte = match family {
            AddressFamily::V4 => 0x01,
            AddressFamily::V6 => 0x02,
        };
        Attr::raw(kind, &[byte, 0, 0, 0])
    }
}

mod typed {
    use super::{Attr, kind};
    use stun_codec::rfc5389::attributes::{Nonce, Realm, Software, Username, XorMappedAddress};
    use stun_codec::rfc5766::attributes::{
        ChannelNumber, Data, DontFragment, EvenPort, Lifetime, RequestedTransport,
        ReservationToken, XorPeerAddress, XorRelayAddress,
    };
    use stun_codec::rfc8656::attributes::{AdditionalAddressFamily, RequestedAddressFamily};

    impl From<RequestedTransport> for Attr {
        /// Protocol, then 3 bytes RFFU (RFC 8656 §18.7).
        fn from(a: RequestedTransport) -> Attr {
            Attr::raw(kind::REQUESTED_TRANSPORT, &[a.protocol(), 0, 0, 0])
        }
    }

    impl From<Lifetime> for Attr {
        fn from(a: Lifetime) -> Attr {
            let secs = u32::try_from(a.lifetime().as_secs()).expect("lifetime fits 32 bits");
            Attr::raw(kind::LIFETIME, &secs.to_be_bytes())
        }
    }

    impl From<XorPeerAddress> for Attr {
        fn from(a: XorPeerAddress) -> Attr {
            Attr::xor_address(kind::XOR_PEER_ADDRESS, a.address())
        }
    }

    impl From<XorRelayAddress> for Attr {
        fn from(a: XorRelayAddress) -> Attr {
            Attr::xor_address(kind::XOR_RELAYED_ADDRESS, a.address())
        }
    }

    impl From<XorMappedAddress> for Attr {
        fn from(a: XorMappedAddress) -> Attr {
            Attr::xor_address(kind::XOR_MAPPED_ADDRESS, a.address())
        }
    }

    impl From<ChannelNumber> for Attr {
        /// Number, then 2 bytes RFFU (RFC 8656 §18.1).
        fn from(a: ChannelNumber) -> Attr {
            let n = a.value().to_be_bytes();
            Attr::raw(kind::CHANNEL_NUMBER, &[n[0], n[1], 0, 0])
        }
    }

    impl From<Data> for Attr {
        fn from(a: Data) -> Attr {
            Attr::raw(kind::DATA, a.data())
        }
    }

    impl From<DontFragment> for Attr {
        fn from(_: DontFragment) -> Attr {
            Attr::raw(kind::DONT_FRAGMENT, &[])
        }
    }

    impl From<EvenPort> for Attr {
        /// One byte, R in the top bit (RFC 8656 §18.8).
        fn from(a: EvenPort) -> Attr {
            Attr::raw(kind::EVEN_PORT, &[if a.is_requested() { 0x80 } else { 0 }])
        }
    }

    impl From<ReservationToken> for Attr {
        fn from(a: ReservationToken) -> Attr {
            Attr::raw(kind::RESERVATION_TOKEN, &a.token().to_be_bytes())
        }
    }

    impl From<RequestedAddressFamily> for Attr {
        fn from(a: RequestedAddressFamily) -> Attr {
            Attr::family(kind::REQUESTED_ADDRESS_FAMILY, a.address_family())
        }
    }

    impl From<AdditionalAddressFamily> for Attr {
        fn from(a: AdditionalAddressFamily) -> Attr {
            Attr::family(kind::ADDITIONAL_ADDRESS_FAMILY, a.address_family())
        }
    }

    impl From<Software> for Attr {
        fn from(a: Software) -> Attr {
            Attr::raw(kind::SOFTWARE, a.description().as_bytes())
        }
    }

    impl From<Username> for Attr {
        fn from(a: Username) -> Attr {
            Attr::raw(kind::USERNAME, a.name().as_bytes())
        }
    }

    impl From<Realm> for Attr {
        fn from(a: Realm) -> Attr {
            Attr::raw(kind::REALM, a.text().as_bytes())
        }
    }

    impl From<Nonce> for Attr {
        fn from(a: Nonce) -> Attr {
            Attr::raw(kind::NONCE, a.value().as_bytes())
        }
    }
}

/// The attribute set of a TURN exchange as stun_codec (an independent library) names it:
/// the tests decode answers with it, and may name request attributes by its variants
/// (which `Attr::from` writes with this encoder).
pub mod codec {
    use stun_codec::rfc5389::attributes::{
        ErrorCode, Nonce, Realm, Software, UnknownAttributes, Username, XorMappedAddress,
    };
    use stun_codec::rfc5766::attributes::{
        ChannelNumber, Data, DontFragment, EvenPort, Lifetime, RequestedTransport,
        ReservationToken, XorPeerAddress, XorRelayAddress,
    };
    use stun_codec::rfc8656::attributes::{AdditionalAddressFamily, RequestedAddressFamily};

    stun_codec::define_attribute_enums!(
        Attribute,
        AttributeDecoder,
        AttributeEncoder,
        [
            Username,
            Realm,
            Nonce,
            ErrorCode,
            UnknownAttributes,
            Software,
            XorMappedAddress,
            RequestedTransport,
            Lifetime,
            XorRelayAddress,
            XorPeerAddress,
            ChannelNumber,
            Data,
            EvenPort,
            ReservationToken,
            DontFragment,
            RequestedAddressFamily,
            AdditionalAddressFamily
        ]
    );

    impl From<Attribute> for super::Attr {
        fn from(a: Attribute) -> super::Attr {
            match a {
                Attribute::Username(a) => a.into(),
                Attribute::Realm(a) => a.into(),
                Attribute::Nonce(a) => a.into(),
                Attribute::Software(a) => a.into(),
                Attribute::XorMappedAddress(a) => a.into(),
                Attribute::RequestedTransport(a) => a.into(),
                Attribute::Lifetime(a) => a.into(),
                Attribute::XorRelayAddress(a) => a.into(),
                Attribute::XorPeerAddress(a) => a.into(),
                Attribute::ChannelNumber(a) => a.into(),
                Attribute::Data(a) => a.into(),
                Attribute::EvenPort(a) => a.into(),
                Attribute::ReservationToken(a) => a.into(),
                Attribute::DontFragment(a) => a.into(),
                Attribute::RequestedAddressFamily(a) => a.into(),
                Attribute::AdditionalAddressFamily(a) => a.into(),
                other => panic!("the test encoder does not write {other:?} in requests"),
            }
        }
    }
}
