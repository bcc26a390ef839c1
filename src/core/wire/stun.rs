//! Decoding and encoding STUN messages (with stun_codec). The framing is checked on the raw
//! bytes first (`framing`, `integrity`); attributes up to MESSAGE-INTEGRITY are decoded
//! (RFC 8489 §14.5: everything after MESSAGE-INTEGRITY but FINGERPRINT is ignored, so it is
//! never even parsed).

use std::ops::Range;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5389::attributes::{
    AlternateServer, ErrorCode, Nonce, Realm, Software, UnknownAttributes, Username,
    XorMappedAddress,
};
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Data, DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken,
    XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc8656::attributes::{AdditionalAddressFamily, RequestedAddressFamily};
use stun_codec::{Attribute as _, Message, MessageClass, MessageDecoder, MessageEncoder, Method};

use super::framing::{Header, message_type};
use super::integrity;
use super::{HEADER_LEN, be16};

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
        AlternateServer,
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

/// A STUN message from a client whose framing and attributes decoded.
pub struct Decoded {
    /// The fixed header.
    pub header: Header,
    /// The attributes before MESSAGE-INTEGRITY, decoded.
    pub message: Message<Attribute>,
    /// Offset of MESSAGE-INTEGRITY in the datagram, if present.
    pub integrity: Option<usize>,
    /// Whether a (valid) FINGERPRINT ends the message.
    pub fingerprint: bool,
}

/// Why a STUN datagram could not be decoded.
pub enum DecodeError {
    /// Broken TLVs, a bad FINGERPRINT: drop silently (RFC 8489 §7.3).
    Drop,
    /// The header is fine but an attribute is not: a request gets 400, with FINGERPRINT
    /// when the request had a valid one.
    BadAttributes {
        /// Whether the request ended in a valid FINGERPRINT (mirrored in the 400).
        fingerprint: bool,
    },
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

/// The longest value RFC 8489 allows for the text attributes (§14.3 USERNAME, as RFC 5389
/// had it; §14.9 REALM, §14.10 NONCE, §14.14 SOFTWARE: fewer than 763 bytes), by type.
/// Decoding text costs per byte, so a 60 KB SOFTWARE in a Binding cost 0.6-0.8 ms before
/// anything was authenticated; past these it is refused unread.
const TEXT_ATTRIBUTE_MAX: [(u16, usize); 4] =
    [(0x0006, 512), (0x0014, 762), (0x0015, 762), (0x8022, 762)];

/// Whether a USERNAME, REALM, NONCE or SOFTWARE is longer than the RFC allows. Call after
/// `too_many_attributes` said no: it walks every TLV header.
pub fn text_attribute_too_long(datagram: &[u8]) -> bool {
    let mut at = HEADER_LEN;
    while let (Some(kind), Some(len)) = (be16(datagram, at), be16(datagram, at + 2)) {
        let len = usize::from(len);
        if TEXT_ATTRIBUTE_MAX
            .iter()
            .any(|&(text, max)| kind == text && len > max)
        {
            return true;
        }
        at += 4 + len.next_multiple_of(4);
    }
    false
}

/// Checks the framing of a STUN datagram's attributes (TLVs, attribute count, FINGERPRINT)
/// and finds MESSAGE-INTEGRITY, without decoding any attribute.
pub fn layout(datagram: &[u8]) -> Result<integrity::IntegrityLayout, DecodeError> {
    // First, so that everything after it walks at most MAX_ATTRIBUTES TLVs and decodes no
    // oversized text. Whether a FINGERPRINT ends such a datagram is not looked for: its 400
    // goes without one.
    if too_many_attributes(datagram) || text_attribute_too_long(datagram) {
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

/// Checks the framing (`layout`) and decodes the attributes of a STUN datagram.
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

/// The method of a 12-bit method code.
pub fn method(code: u16) -> Method {
    // Every u16 below 0x1000 is a valid method; our header parser yields at most 0x0FFF.
    Method::new(code & 0x0FFF).unwrap_or(stun_codec::rfc5389::methods::BINDING)
}

/// A message of `class` answering the transaction of `header`.
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
