//! Framing peer datagrams for the client in place: the header is written into the headroom
//! the driver left in front of the payload, so the data path copies nothing.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use super::MAGIC_COOKIE;

/// Data indication: method 0x007, class indication.
const DATA_INDICATION: u16 = 0x0017;
const XOR_PEER_ADDRESS: u16 = 0x0012;
const DATA: u16 = 0x0013;

/// Writes the 4-byte ChannelData header (RFC 8656 §12.4) before `buf[payload..payload+len]`.
/// Over UDP no padding is needed. The caller guarantees `payload >= 4` and the bounds.
pub fn write_channel_data_header(
    buf: &mut [u8],
    payload: usize,
    len: usize,
    channel: u16,
) -> Range<usize> {
    let start = payload - 4;
    buf[start..start + 2].copy_from_slice(&channel.to_be_bytes());
    // len fits: a UDP payload is below 65536 bytes.
    buf[start + 2..payload].copy_from_slice(&(len as u16).to_be_bytes());
    start..payload + len
}

/// Writes a Data indication (RFC 8656 §11.4: XOR-PEER-ADDRESS, DATA) around
/// `buf[payload..payload+len]`, zero-padding the DATA value to 4 bytes after the payload.
/// `None` when the frame would not fit the headroom/tailroom or STUN's 16-bit length.
pub fn write_data_indication_header(
    buf: &mut [u8],
    payload: usize,
    len: usize,
    peer: SocketAddr,
    transaction_id: [u8; 12],
) -> Option<Range<usize>> {
    let address_len = match peer.ip() {
        IpAddr::V4(_) => 8,
        IpAddr::V6(_) => 20,
    };
    let header_len = 20 + 4 + address_len + 4;
    let padding = (4 - len % 4) % 4;
    let body_len = u16::try_from(header_len - 20 + len + padding).ok()?;
    let start = payload.checked_sub(header_len)?;
    let end = payload + len + padding;
    let frame = buf.get_mut(start..end)?;

    frame[0..2].copy_from_slice(&DATA_INDICATION.to_be_bytes());
    frame[2..4].copy_from_slice(&body_len.to_be_bytes());
    frame[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    frame[8..20].copy_from_slice(&transaction_id);

    frame[20..22].copy_from_slice(&XOR_PEER_ADDRESS.to_be_bytes());
    frame[22..24].copy_from_slice(&(address_len as u16).to_be_bytes());
    let port = peer.port() ^ (MAGIC_COOKIE >> 16) as u16;
    frame[24] = 0;
    frame[26..28].copy_from_slice(&port.to_be_bytes());
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(&transaction_id);
    match peer.ip() {
        IpAddr::V4(ip) => {
            frame[25] = 0x01;
            for (i, b) in ip.octets().iter().enumerate() {
                frame[28 + i] = b ^ mask[i];
            }
        }
        IpAddr::V6(ip) => {
            frame[25] = 0x02;
            for (i, b) in ip.octets().iter().enumerate() {
                frame[28 + i] = b ^ mask[i];
            }
        }
    }
    let data_at = 24 + address_len;
    frame[data_at..data_at + 2].copy_from_slice(&DATA.to_be_bytes());
    frame[data_at + 2..data_at + 4].copy_from_slice(&(len as u16).to_be_bytes());
    frame[header_len + len..].fill(0);
    Some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::{self, Attribute, Framing};
    use bytecodec::DecodeExt;
    use stun_codec::{MessageClass, MessageDecoder};

    #[test]
    fn channel_data_header_in_headroom() {
        let mut buf = [0xAAu8; 16];
        buf[8..11].copy_from_slice(b"abc");
        let frame = write_channel_data_header(&mut buf, 8, 3, 0x4001);
        assert_eq!(&buf[frame], &[0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c']);
    }

    #[test]
    fn data_indication_decodes_with_stun_codec() {
        for (peer, len) in [
            ("198.51.100.7:4000", 5usize),
            ("[2001:db8::1]:9", 8),
            ("198.51.100.7:1", 0),
        ] {
            let peer: SocketAddr = peer.parse().unwrap();
            let mut buf = vec![0xEEu8; 48 + len + 3];
            for (i, b) in buf[48..48 + len].iter_mut().enumerate() {
                *b = i as u8;
            }
            let frame = write_data_indication_header(&mut buf, 48, len, peer, [9; 12]).unwrap();
            let bytes = &buf[frame];
            assert!(matches!(message::classify(bytes), Framing::Stun(_)));
            let decoded = MessageDecoder::<Attribute>::new()
                .decode_from_bytes(bytes)
                .unwrap()
                .unwrap();
            assert_eq!(decoded.class(), MessageClass::Indication);
            assert_eq!(decoded.method(), stun_codec::rfc5766::methods::DATA);
            let got_peer = decoded
                .get_attribute::<stun_codec::rfc5766::attributes::XorPeerAddress>()
                .unwrap()
                .address();
            assert_eq!(got_peer, peer);
            let data = decoded
                .get_attribute::<stun_codec::rfc5766::attributes::Data>()
                .unwrap()
                .data()
                .to_vec();
            assert_eq!(data, (0..len as u8).collect::<Vec<_>>());
        }
    }

    #[test]
    fn data_indication_refuses_without_room() {
        let peer: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        let mut buf = vec![0u8; 40 + 4];
        assert_eq!(
            write_data_indication_header(&mut buf, 40, 4, peer, [0; 12]),
            None
        );
        let mut buf = vec![0u8; 48 + 5];
        assert_eq!(
            write_data_indication_header(&mut buf, 48, 5, peer, [0; 12]),
            None,
            "no tailroom for padding"
        );
    }
}
