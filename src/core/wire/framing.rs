//! What a datagram from a client is, judged by its framing alone (RFC 8656 §12, RFC 8489
//! §5): the first byte tells STUN (0x00–0x3F) from ChannelData (0x40–0x4F), and the fixed
//! STUN header is checked on the raw bytes. Nothing here decodes an attribute.

use std::ops::Range;

use stun_codec::{MessageClass, TransactionId};

use super::{HEADER_LEN, MAGIC_COOKIE, be16};

/// What a datagram from a client is, judged by its framing alone.
pub enum Framing {
    /// A STUN message, by its header.
    Stun(Header),
    /// ChannelData (RFC 8656 §12.4).
    ChannelData {
        /// The channel number (0x4000-0x4FFF once bound; the first byte only says 0x40-0x4F).
        channel: u16,
        /// Where the application data is in the datagram.
        payload: Range<usize>,
    },
    /// Neither, or a broken frame.
    Malformed,
}

/// The fixed STUN header, enough to answer even when the attributes cannot be decoded.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// Request, indication, success or error response.
    pub class: MessageClass,
    /// The method (12 bits).
    pub method: u16,
    /// The transaction ID.
    pub transaction_id: TransactionId,
}

/// What `datagram` is, by its first byte and framing.
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
    if datagram.get(4..8)? != MAGIC_COOKIE.to_be_bytes()
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
pub(super) fn message_type(class: MessageClass, method: u16) -> u16 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::stun::{encode, new_message};

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
        binding.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
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
            bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            bytes.extend_from_slice(&[1; 12]);
            let Framing::Stun(h) = classify(&bytes) else {
                panic!("expected STUN for {message_type:#06x}");
            };
            assert_eq!((h.class, h.method), (class, method), "{message_type:#06x}");
        }
    }
}
