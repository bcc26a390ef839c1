//! The wire format: classifying a datagram (STUN, ChannelData, junk), decoding STUN with
//! bounds, encoding, MESSAGE-INTEGRITY and FINGERPRINT, and the frames written around a
//! peer's payload in place. Pure functions over bytes; no state.

pub mod framing;
pub mod integrity;
pub mod relayed_frames;
pub mod stream_framing;
pub mod stun;

pub use framing::{Framing, Header, classify};
pub use stun::{
    Attribute, DecodeError, Decoded, MAX_ATTRIBUTES, attribute_value, decode, decode_attributes,
    encode, layout, method, new_message, too_many_attributes, unknown_required,
};

/// The magic cookie of every STUN message (RFC 8489 §6), also the mask of XOR-*-ADDRESS.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// The fixed STUN header: type, length, magic cookie, transaction ID.
pub const HEADER_LEN: usize = 20;

/// The big-endian u16 at `at`, if the bytes reach that far.
fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}
