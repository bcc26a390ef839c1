//! MESSAGE-INTEGRITY (RFC 8489 §14.5) and FINGERPRINT (§14.7) over raw STUN
//! bytes.
//!
//! Both are computed over the message as it was when the attribute was
//! appended, i.e. up to the attribute and with the header length field
//! pretending the attribute is the last one. Working on raw bytes keeps that
//! exact: re-encoding a parsed message could change padding bytes or
//! attribute order and break the MAC.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use super::HEADER_LEN;

/// The MESSAGE-INTEGRITY attribute type.
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
/// The FINGERPRINT attribute type.
pub const FINGERPRINT: u16 = 0x8028;

const MI_VALUE_LEN: usize = 20;
const MI_ATTR_LEN: usize = 4 + MI_VALUE_LEN;
const FP_ATTR_LEN: usize = 8;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Byte offsets (of the attribute *header*, i.e. the type field) of
/// MESSAGE-INTEGRITY and FINGERPRINT in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IntegrityLayout {
    /// Offset of the first MESSAGE-INTEGRITY.
    pub message_integrity: Option<usize>,
    /// Offset of the FINGERPRINT (always last).
    pub fingerprint: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The attribute TLVs do not fit the message.
pub struct Malformed;

/// Walks the attribute TLVs of `msg` (a whole datagram whose 20-byte header is
/// already known to be STUN: length field == msg.len()-20, multiple of 4).
///
/// Err(Malformed) if any TLV runs past the end. Records the FIRST
/// MESSAGE-INTEGRITY and the FIRST FINGERPRINT. Per RFC 8489, attributes after
/// MESSAGE-INTEGRITY other than FINGERPRINT are ignored by callers, and
/// FINGERPRINT must be last: if FINGERPRINT is not the last attribute,
/// Err(Malformed).
pub fn locate(msg: &[u8]) -> Result<IntegrityLayout, Malformed> {
    if msg.len() < HEADER_LEN {
        return Err(Malformed);
    }
    let mut layout = IntegrityLayout::default();
    let mut pos = HEADER_LEN;
    while pos < msg.len() {
        let (typ, len) = attr_header(msg, pos).ok_or(Malformed)?;
        // Padding is part of the TLV on the wire; a value whose padding does
        // not fit means the length field lies.
        let end = pos + 4 + usize::from(len).next_multiple_of(4);
        if end > msg.len() {
            return Err(Malformed);
        }
        if layout.fingerprint.is_some() {
            return Err(Malformed);
        }
        match typ {
            MESSAGE_INTEGRITY if layout.message_integrity.is_none() => {
                layout.message_integrity = Some(pos);
            }
            FINGERPRINT => layout.fingerprint = Some(pos),
            _ => {}
        }
        pos = end;
    }
    Ok(layout)
}

/// Constant-time check of the MESSAGE-INTEGRITY at `offset`:
/// HMAC-SHA1(key, msg[..offset] with the header length field rewritten to
/// offset + 24 - 20). Returns false if offset/length are inconsistent.
pub fn verify_message_integrity(msg: &[u8], offset: usize, key: &[u8]) -> bool {
    let Some(value) = attr_value(msg, offset, MESSAGE_INTEGRITY, MI_VALUE_LEN) else {
        return false;
    };
    let Some(len) = patched_len(offset, MI_ATTR_LEN) else {
        return false;
    };
    let (Some(kind), Some(rest)) = (msg.get(..2), msg.get(4..offset)) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
        return false;
    };
    // Fed in pieces so the patched length needs no copy of the message.
    mac.update(kind);
    mac.update(&len);
    mac.update(rest);
    mac.verify_slice(value).is_ok()
}

/// True if the FINGERPRINT at `offset` equals crc32(msg[..offset] with the
/// length field patched to offset + 8 - 20) ^ 0x5354554e.
pub fn verify_fingerprint(msg: &[u8], offset: usize) -> bool {
    let Some(value) = attr_value(msg, offset, FINGERPRINT, 4) else {
        return false;
    };
    let Some(len) = patched_len(offset, FP_ATTR_LEN) else {
        return false;
    };
    let (Some(kind), Some(rest)) = (msg.get(..2), msg.get(4..offset)) else {
        return false;
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(&len);
    crc.update(rest);
    let expected = (crc.finalize() ^ FINGERPRINT_XOR).to_be_bytes();
    // Not secret: FINGERPRINT only tells STUN apart from other protocols.
    value == expected
}

/// Appends a MESSAGE-INTEGRITY attribute to an encoded message (header length
/// field updated first, as the RFC requires).
///
/// `msg` must be an encoded STUN message (header plus 4-aligned attributes).
pub fn append_message_integrity(msg: &mut Vec<u8>, key: &[u8]) {
    set_len_for_appended(msg, MI_ATTR_LEN);
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
        // HMAC takes keys of any length; this arm cannot be reached.
        return;
    };
    mac.update(msg);
    let tag = mac.finalize().into_bytes();
    msg.extend_from_slice(&MESSAGE_INTEGRITY.to_be_bytes());
    msg.extend_from_slice(&(MI_VALUE_LEN as u16).to_be_bytes());
    msg.extend_from_slice(&tag);
}

/// Appends a FINGERPRINT attribute (length field updated).
///
/// `msg` must be an encoded STUN message (header plus 4-aligned attributes).
pub fn append_fingerprint(msg: &mut Vec<u8>) {
    set_len_for_appended(msg, FP_ATTR_LEN);
    let crc = crc32fast::hash(msg) ^ FINGERPRINT_XOR;
    msg.extend_from_slice(&FINGERPRINT.to_be_bytes());
    msg.extend_from_slice(&4u16.to_be_bytes());
    msg.extend_from_slice(&crc.to_be_bytes());
}

fn attr_header(msg: &[u8], pos: usize) -> Option<(u16, u16)> {
    let &[t0, t1, l0, l1] = msg.get(pos..pos.checked_add(4)?)? else {
        return None;
    };
    Some((u16::from_be_bytes([t0, t1]), u16::from_be_bytes([l0, l1])))
}

/// The value of the attribute at `offset`, if it has the expected type and
/// exactly the expected length.
fn attr_value(msg: &[u8], offset: usize, typ: u16, len: usize) -> Option<&[u8]> {
    if offset < HEADER_LEN {
        return None;
    }
    let (t, l) = attr_header(msg, offset)?;
    if t != typ || usize::from(l) != len {
        return None;
    }
    let start = offset.checked_add(4)?;
    msg.get(start..start.checked_add(len)?)
}

/// The header length field the message had when the attribute at `offset`
/// (of `attr_len` bytes) was its last one.
fn patched_len(offset: usize, attr_len: usize) -> Option<[u8; 2]> {
    let body = offset.checked_sub(HEADER_LEN)?.checked_add(attr_len)?;
    Some(u16::try_from(body).ok()?.to_be_bytes())
}

fn set_len_for_appended(msg: &mut [u8], attr_len: usize) {
    let body = msg.len().saturating_sub(HEADER_LEN) + attr_len;
    debug_assert!(msg.len() >= HEADER_LEN && body <= usize::from(u16::MAX));
    if let Some(field) = msg.get_mut(2..4) {
        field.copy_from_slice(&(body as u16).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 5769 §2.1: sample request, short-term password "VOkJxbRl1RmTxUk/WvJxBt".
    const REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74,
        0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e,
        0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
        0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5,
        0x7a, 0x3b, 0xcf,
    ];

    // RFC 5769 §2.2: sample IPv4 response, same password.
    const IPV4_RESPONSE: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    // RFC 5769 §2.3: sample IPv6 response, same password.
    const IPV6_RESPONSE: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
        0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
        0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    // RFC 5769 §2.4: request with long-term authentication; it has no FINGERPRINT.
    const LONG_TERM_REQUEST: [u8; 116] = [
        0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72,
        0xc0, 0x29, 0xda, 0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88,
        0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00,
        0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36,
        0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73,
        0x41, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72,
        0x67, 0x00, 0x00, 0x08, 0x00, 0x14, 0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02,
        0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8, 0x96, 0x66,
    ];

    const SHORT_TERM_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

    fn long_term_key() -> [u8; 16] {
        // The USERNAME bytes in the vector are "マトリックス"; the password is
        // the SASLprep'd "TheMatrIX".
        crate::core::auth::credentials::long_term_key("マトリックス", "example.org", "TheMatrIX")
    }

    /// Checks one vector end to end; `fp` is None for a message without FINGERPRINT.
    fn check_vector(msg: &[u8], key: &[u8], mi: usize, fp: Option<usize>) {
        let layout = locate(msg).unwrap();
        assert_eq!(
            layout,
            IntegrityLayout {
                message_integrity: Some(mi),
                fingerprint: fp
            }
        );
        assert!(verify_message_integrity(msg, mi, key));
        assert!(!verify_message_integrity(msg, mi, b"wrong key"));
        if let Some(fp) = fp {
            assert!(verify_fingerprint(msg, fp));
        }

        // One flipped bit in the first attribute's value breaks both checks.
        let mut flipped = msg.to_vec();
        flipped[HEADER_LEN + 4] ^= 0x01;
        assert!(!verify_message_integrity(&flipped, mi, key));
        if let Some(fp) = fp {
            assert!(!verify_fingerprint(&flipped, fp));
        }

        // So does one in the MAC itself, which FINGERPRINT also covers.
        let mut flipped = msg.to_vec();
        flipped[mi + 4 + 19] ^= 0x80;
        assert!(!verify_message_integrity(&flipped, mi, key));
        if let Some(fp) = fp {
            assert!(!verify_fingerprint(&flipped, fp));
        }

        // Re-appending onto the message cut before MI reproduces the RFC bytes,
        // including the header length field.
        let mut rebuilt = msg[..mi].to_vec();
        rebuilt[2..4].copy_from_slice(&[0xff, 0xff]);
        append_message_integrity(&mut rebuilt, key);
        if fp.is_some() {
            append_fingerprint(&mut rebuilt);
        }
        assert_eq!(rebuilt, msg);
    }

    #[test]
    fn rfc5769_sample_request() {
        check_vector(&REQUEST, SHORT_TERM_PASSWORD, 76, Some(100));
    }

    #[test]
    fn rfc5769_ipv4_response() {
        check_vector(&IPV4_RESPONSE, SHORT_TERM_PASSWORD, 48, Some(72));
    }

    #[test]
    fn rfc5769_ipv6_response() {
        check_vector(&IPV6_RESPONSE, SHORT_TERM_PASSWORD, 60, Some(84));
    }

    #[test]
    fn rfc5769_long_term_request() {
        check_vector(&LONG_TERM_REQUEST, &long_term_key(), 92, None);
        // The vector's USERNAME attribute carries exactly these UTF-8 bytes.
        assert_eq!(&LONG_TERM_REQUEST[24..42], "マトリックス".as_bytes());
    }

    #[test]
    fn attributes_between_mi_and_fingerprint_do_not_affect_mi() {
        let mut msg = IPV4_RESPONSE[..72].to_vec();
        // An unknown comprehension-optional attribute after MI.
        msg.extend_from_slice(&[0x80, 0x99, 0x00, 0x01, 0xaa, 0x00, 0x00, 0x00]);
        append_fingerprint(&mut msg);
        let layout = locate(&msg).unwrap();
        assert_eq!(layout.message_integrity, Some(48));
        assert_eq!(layout.fingerprint, Some(80));
        assert!(verify_message_integrity(&msg, 48, SHORT_TERM_PASSWORD));
        assert!(verify_fingerprint(&msg, 80));
    }

    #[test]
    fn first_message_integrity_wins() {
        let mut msg = IPV4_RESPONSE[..72].to_vec();
        append_message_integrity(&mut msg, b"other");
        let layout = locate(&msg).unwrap();
        assert_eq!(layout.message_integrity, Some(48));
        assert!(verify_message_integrity(&msg, 48, SHORT_TERM_PASSWORD));
        assert!(verify_message_integrity(&msg, 72, b"other"));
    }

    #[test]
    fn locate_empty_body_and_short_input() {
        assert_eq!(locate(&REQUEST[..20]), Ok(IntegrityLayout::default()));
        assert_eq!(locate(&REQUEST[..19]), Err(Malformed));
        assert_eq!(locate(&[]), Err(Malformed));
    }

    #[test]
    fn locate_rejects_truncated_tlvs() {
        // Every cut that is not on an attribute boundary leaves a TLV running
        // past the end.
        let boundaries = [20, 40, 48, 60, 76, 100, 108];
        for cut in 20..REQUEST.len() {
            let result = locate(&REQUEST[..cut]);
            if boundaries.contains(&cut) {
                assert!(result.is_ok(), "cut at {cut}");
            } else {
                assert_eq!(result, Err(Malformed), "cut at {cut}");
            }
        }
    }

    #[test]
    fn locate_rejects_overlong_tlvs() {
        let mut msg = REQUEST.to_vec();
        msg[22..24].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(locate(&msg), Err(Malformed));

        // The value fits but its padding does not.
        let mut msg = REQUEST[..20].to_vec();
        msg.extend_from_slice(&[0x80, 0x22, 0x00, 0x05, b'a', b'b', b'c', b'd']);
        assert_eq!(locate(&msg), Err(Malformed));
    }

    #[test]
    fn locate_rejects_fingerprint_not_last() {
        let mut msg = IPV4_RESPONSE.to_vec();
        msg.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        assert_eq!(locate(&msg), Err(Malformed));

        let mut msg = IPV4_RESPONSE.to_vec();
        append_fingerprint(&mut msg);
        assert_eq!(locate(&msg), Err(Malformed));
    }

    #[test]
    fn verify_rejects_bad_offsets_without_panicking() {
        for offset in [
            0,
            1,
            19,
            20,
            47,
            49,
            72,
            76,
            79,
            80,
            81,
            usize::MAX - 3,
            usize::MAX,
        ] {
            assert!(!verify_message_integrity(
                &IPV4_RESPONSE,
                offset,
                SHORT_TERM_PASSWORD
            ));
        }
        for offset in [0, 1, 19, 20, 48, 71, 73, 76, 80, usize::MAX - 7, usize::MAX] {
            assert!(!verify_fingerprint(&IPV4_RESPONSE, offset));
        }
        // Right type at the offset but the wrong length.
        let mut msg = IPV4_RESPONSE.to_vec();
        msg[51] = 0x10;
        assert!(!verify_message_integrity(&msg, 48, SHORT_TERM_PASSWORD));
        msg[75] = 0x08;
        assert!(!verify_fingerprint(&msg, 72));
    }
}
