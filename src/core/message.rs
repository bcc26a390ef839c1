//! Classifying and decoding datagrams from clients.
//!
//! The first byte tells STUN (0x00–0x3F) from ChannelData (0x40–0x4F, RFC 8656 §12).
//! STUN framing is checked on the raw bytes here; attributes up to MESSAGE-INTEGRITY are
//! decoded by stun_codec (RFC 8489 §14.5: everything after MESSAGE-INTEGRITY but FINGERPRINT
//! is ignored, so it is never even parsed).

use std::ops::Range;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5389::attributes::{
    ErrorCode, Nonce, Realm, Software, UnknownAttributes, Username, XorMappedAddress,
};
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Data, DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken,
    XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc8656::attributes::{AdditionalAddressFamily, RequestedAddressFamily};
use stun_codec::{
    Attribute as _, Message, MessageClass, MessageDecoder, MessageEncoder, Method, TransactionId,
};

use super::integrity::{self, HEADER_LEN};

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

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// What a datagram from a client is, judged by its framing alone.
pub enum Framing {
    Stun(Header),
    ChannelData { channel: u16, payload: Range<usize> },
    Malformed,
}

/// The fixed STUN header, enough to answer even when the attributes cannot be decoded.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub class: MessageClass,
    pub method: u16,
    pub transaction_id: TransactionId,
}

pub fn classify(datagram: &[u8]) -> Framing {
    match datagram.first() {
        Some(0x00..=0x3F) => stun_header(datagram).map_or(Framing::Malformed, Framing::Stun),
        Some(0x40..=0x4F) => channel_data(datagram),
        _ => Framing::Malformed,
    }
}

fn channel_data(datagram: &[u8]) -> Framing {
    let (Some(number), Some(length)) = (be16(datagram, 0), be16(datagram, 2)) else {
        return Framing::Malformed;
    };
    let end = 4 + usize::from(length);
    // Over UDP the frame may carry up to 3 bytes of padding after the payload (§12.5).
    if end > datagram.len() {
        return Framing::Malformed;
    }
    Framing::ChannelData {
        channel: number,
        payload: 4..end,
    }
}

fn stun_header(datagram: &[u8]) -> Option<Header> {
    let message_type = be16(datagram, 0)?;
    let length = usize::from(be16(datagram, 2)?);
    if datagram.get(4..8)? != MAGIC_COOKIE
        || length % 4 != 0
        || HEADER_LEN + length != datagram.len()
    {
        return None;
    }
    let mut id = [0u8; 12];
    id.copy_from_slice(datagram.get(8..20)?);
    // The class bits are interleaved with the method bits (RFC 8489 §5).
    let class = match ((message_type >> 7) & 0b10) | ((message_type >> 4) & 0b1) {
        0 => MessageClass::Request,
        1 => MessageClass::Indication,
        2 => MessageClass::SuccessResponse,
        _ => MessageClass::ErrorResponse,
    };
    let method =
        (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2);
    Some(Header {
        class,
        method,
        transaction_id: TransactionId::new(id),
    })
}

/// The STUN message type of `class` and `method` (RFC 8489 §5): the class bits C0 and C1 sit
/// at bits 4 and 8, between the method's bits M0-M3, M4-M6 and M7-M11.
fn message_type(class: MessageClass, method: u16) -> u16 {
    let class: u16 = match class {
        MessageClass::Request => 0b00,
        MessageClass::Indication => 0b01,
        MessageClass::SuccessResponse => 0b10,
        MessageClass::ErrorResponse => 0b11,
    };
    (method & 0x000F)
        | ((class & 0b01) << 4)
        | ((method & 0x0070) << 1)
        | ((class & 0b10) << 7)
        | ((method & 0x0F80) << 2)
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// A STUN message from a client whose framing and attributes decoded.
pub struct Decoded {
    pub header: Header,
    pub message: Message<Attribute>,
    /// Offset of MESSAGE-INTEGRITY in the datagram, if present.
    pub integrity: Option<usize>,
    pub fingerprint: bool,
}

pub enum DecodeError {
    /// Broken TLVs, a bad FINGERPRINT: drop silently (RFC 8489 §7.3).
    Drop,
    /// The header is fine but an attribute is not: a request gets 400, with FINGERPRINT
    /// when the request had a valid one.
    BadAttributes { fingerprint: bool },
}

/// Attributes a request may carry (400 beyond). Real clients send about ten (Chrome, Firefox
/// and aioice an Allocate of 2-8, a CreatePermission of one XOR-PEER-ADDRESS per peer plus the
/// credentials); 128 leaves room for a CreatePermission at the permission cap (64 peers) and
/// then some, while bounding what one datagram costs before anyone is authenticated.
pub const MAX_ATTRIBUTES: usize = 128;

/// Whether the datagram holds more than `MAX_ATTRIBUTES` TLVs. Walks at most that many TLV
/// headers, so that a datagram of 16,000 empty attributes costs no more than one of 129; a
/// broken TLV stops the walk (the framing checks report it).
pub fn too_many_attributes(datagram: &[u8]) -> bool {
    let mut at = HEADER_LEN;
    for _ in 0..=MAX_ATTRIBUTES {
        let Some(len) = be16(datagram, at + 2) else {
            return false;
        };
        at += 4 + usize::from(len).next_multiple_of(4);
    }
    at <= datagram.len()
}

/// Checks the framing of a STUN datagram's attributes (TLVs, attribute count, FINGERPRINT)
/// and finds MESSAGE-INTEGRITY, without decoding any attribute.
pub fn layout(datagram: &[u8]) -> Result<integrity::IntegrityLayout, DecodeError> {
    // First, so that everything after it walks at most MAX_ATTRIBUTES TLVs. Whether a
    // FINGERPRINT ends such a datagram is not looked for: its 400 goes without one.
    if too_many_attributes(datagram) {
        return Err(DecodeError::BadAttributes { fingerprint: false });
    }
    let layout = integrity::locate(datagram).map_err(|_| DecodeError::Drop)?;
    if let Some(at) = layout.fingerprint
        && !integrity::verify_fingerprint(datagram, at)
    {
        return Err(DecodeError::Drop);
    }
    Ok(layout)
}

pub fn decode(datagram: &[u8], header: Header) -> Result<Decoded, DecodeError> {
    let layout = layout(datagram)?;
    decode_attributes(datagram, header, layout)
}

/// Decodes the attributes before MESSAGE-INTEGRITY of a datagram whose `layout` is checked.
pub fn decode_attributes(
    datagram: &[u8],
    header: Header,
    layout: integrity::IntegrityLayout,
) -> Result<Decoded, DecodeError> {
    let end = layout
        .message_integrity
        .or(layout.fingerprint)
        .unwrap_or(datagram.len());
    // Hand stun_codec only what precedes MESSAGE-INTEGRITY (or FINGERPRINT), with the length
    // field saying so; the copy is on the control path only.
    let mut head = datagram.get(..end).ok_or(DecodeError::Drop)?.to_vec();
    let length = u16::try_from(end - HEADER_LEN).map_err(|_| DecodeError::Drop)?;
    head[2..4].copy_from_slice(&length.to_be_bytes());
    let bad_attributes = DecodeError::BadAttributes {
        fingerprint: layout.fingerprint.is_some(),
    };
    let message = match MessageDecoder::<Attribute>::new().decode_from_bytes(&head) {
        Ok(Ok(message)) => message,
        Ok(Err(_)) | Err(_) => return Err(bad_attributes),
    };
    Ok(Decoded {
        header,
        message,
        integrity: layout.message_integrity,
        fingerprint: layout.fingerprint.is_some(),
    })
}

/// Comprehension-required attributes (type < 0x8000) that stun_codec did not know.
pub fn unknown_required(message: &Message<Attribute>) -> Vec<u16> {
    message
        .unknown_attributes()
        .map(|a| a.get_type().as_u16())
        .filter(|t| *t < 0x8000)
        .collect()
}

/// Encodes a message, then appends MESSAGE-INTEGRITY (when a key is given) and FINGERPRINT.
pub fn encode(message: Message<Attribute>, key: Option<&[u8]>, fingerprint: bool) -> Vec<u8> {
    let message_type = message_type(message.class(), message.method().as_u16());
    let mut bytes = match MessageEncoder::new().encode_into_bytes(message) {
        Ok(bytes) => bytes,
        // Only attributes we built ourselves get here; an encoder failure is a bug, and an
        // empty datagram is never sent (the caller drops it).
        Err(_) => return Vec::new(),
    };
    // stun_codec 0.4.0 places method bits 4-11 wrongly in the message type (its decoder is
    // right): write the type ourselves, before anything that signs the header.
    match bytes.get_mut(0..2) {
        Some(field) => field.copy_from_slice(&message_type.to_be_bytes()),
        None => return Vec::new(),
    }
    if let Some(key) = key {
        integrity::append_message_integrity(&mut bytes, key);
    }
    if fingerprint {
        integrity::append_fingerprint(&mut bytes);
    }
    bytes
}

pub fn method(code: u16) -> Method {
    // Every u16 below 0x1000 is a valid method; our header parser yields at most 0x0FFF.
    Method::new(code & 0x0FFF).unwrap_or(stun_codec::rfc5389::methods::BINDING)
}

pub fn new_message(class: MessageClass, header: &Header) -> Message<Attribute> {
    Message::new(class, method(header.method), header.transaction_id)
}

/// The value range of the first attribute of type `wanted` before MESSAGE-INTEGRITY, found
/// by walking the TLVs of a datagram whose framing is already checked. Lets the data path
/// point into the datagram instead of copying a decoded value.
pub fn attribute_value(datagram: &[u8], wanted: u16) -> Option<Range<usize>> {
    let mut at = HEADER_LEN;
    while at + 4 <= datagram.len() {
        let kind = be16(datagram, at)?;
        let len = usize::from(be16(datagram, at + 2)?);
        let value = at + 4..at + 4 + len;
        if value.end > datagram.len() || kind == integrity::MESSAGE_INTEGRITY {
            return None;
        }
        if kind == wanted {
            return Some(value);
        }
        at = value.end + (4 - len % 4) % 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_first_byte_and_framing() {
        assert!(matches!(classify(&[]), Framing::Malformed));
        assert!(matches!(classify(&[0x80, 0, 0, 0]), Framing::Malformed));
        assert!(matches!(classify(&[0x40, 0x00, 0x00]), Framing::Malformed));
        // Length beyond the datagram.
        assert!(matches!(
            classify(&[0x40, 0x00, 0x00, 0x05, 1, 2]),
            Framing::Malformed
        ));
        match classify(&[0x40, 0x01, 0x00, 0x02, 9, 8, 0, 0]) {
            Framing::ChannelData { channel, payload } => {
                assert_eq!(channel, 0x4001);
                assert_eq!(payload, 4..6);
            }
            _ => panic!("expected ChannelData"),
        }
        // Binding request, no attributes.
        let mut binding = vec![0x00, 0x01, 0x00, 0x00];
        binding.extend_from_slice(&MAGIC_COOKIE);
        binding.extend_from_slice(&[7; 12]);
        match classify(&binding) {
            Framing::Stun(h) => {
                assert_eq!(h.method, 0x001);
                assert_eq!(h.class, MessageClass::Request);
            }
            _ => panic!("expected STUN"),
        }
        // Wrong cookie, wrong length, unaligned length.
        let mut bad = binding.clone();
        bad[4] = 0;
        assert!(matches!(classify(&bad), Framing::Malformed));
        let mut bad = binding.clone();
        bad[3] = 4;
        assert!(matches!(classify(&bad), Framing::Malformed));
        let mut bad = binding.clone();
        bad[3] = 2;
        bad.extend_from_slice(&[0, 0]);
        assert!(matches!(classify(&bad), Framing::Malformed));
    }

    #[test]
    fn encoded_message_type_round_trips_for_every_method_and_class() {
        let classes = [
            MessageClass::Request,
            MessageClass::Indication,
            MessageClass::SuccessResponse,
            MessageClass::ErrorResponse,
        ];
        for method in 0..0x1000u16 {
            for class in classes {
                let header = Header {
                    class,
                    method,
                    transaction_id: TransactionId::new([3; 12]),
                };
                let bytes = encode(new_message(class, &header), None, false);
                assert_eq!(bytes.len(), HEADER_LEN);
                let Framing::Stun(back) = classify(&bytes) else {
                    panic!("{method:#05x} {class:?} is not STUN: {bytes:02x?}");
                };
                assert_eq!((back.class, back.method), (class, method));
            }
        }
        // RFC 8489 §5's own example: a Binding success response is 0x0101.
        assert_eq!(message_type(MessageClass::SuccessResponse, 0x001), 0x0101);
        assert_eq!(message_type(MessageClass::ErrorResponse, 0xFFF), 0x3FFF);
    }

    #[test]
    fn decodes_class_and_method_bits() {
        // 0x0113 = Allocate error response; 0x0016 = Send indication.
        for (message_type, class, method) in [
            (0x0113u16, MessageClass::ErrorResponse, 0x003u16),
            (0x0016, MessageClass::Indication, 0x006),
            (0x0103, MessageClass::SuccessResponse, 0x003),
            (0x0009, MessageClass::Request, 0x009),
        ] {
            let mut bytes = message_type.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[0, 0]);
            bytes.extend_from_slice(&MAGIC_COOKIE);
            bytes.extend_from_slice(&[1; 12]);
            let Framing::Stun(h) = classify(&bytes) else {
                panic!("expected STUN for {message_type:#06x}");
            };
            assert_eq!((h.class, h.method), (class, method), "{message_type:#06x}");
        }
    }
}
