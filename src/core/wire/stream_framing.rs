//! Framing a byte stream (TURN over TCP or TLS) into messages: STUN messages and ChannelData
//! back to back, ChannelData padded to a multiple of 4 bytes (RFC 8656 §12.5).
//!
//! A pure function of the bytes buffered so far, so the driver can call it after every read
//! and the fuzzer can check that reading in chunks frames exactly like reading all at once.
//! Bytes that cannot start a frame are refused as soon as they are seen: a stream has no
//! datagram boundaries to resynchronise on, so the connection is closed.

use std::ops::Range;

use crate::core::TAILROOM;

const STUN_HEADER_LEN: usize = 20;
const CHANNEL_DATA_HEADER_LEN: usize = 4;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// The largest STUN length: 16 bits, a multiple of 4 (attributes are padded).
const MAX_STUN_BODY: usize = 0xFFFC;

/// The longest STUN frame: header plus the largest body.
pub const MAX_STUN_FRAME_LEN: usize = STUN_HEADER_LEN + MAX_STUN_BODY;
/// The longest ChannelData frame: header, 65535 bytes of data, 1 byte of padding.
pub const MAX_CHANNEL_DATA_FRAME_LEN: usize = stream_len(CHANNEL_DATA_HEADER_LEN + 0xFFFF);
/// No frame is longer: a read buffer of this size always has room for the next frame once
/// the frames before it are consumed, so a connection never needs more.
pub const MAX_FRAME_LEN: usize = if MAX_STUN_FRAME_LEN > MAX_CHANNEL_DATA_FRAME_LEN {
    MAX_STUN_FRAME_LEN
} else {
    MAX_CHANNEL_DATA_FRAME_LEN
};

/// The first byte of a TLS handshake record (a ClientHello). No STUN message starts with it
/// (its method would be above 0x400, none is defined), so one port can serve plain TCP and
/// TLS by peeking at the first byte of a connection.
pub const TLS_HANDSHAKE_FIRST_BYTE: u8 = 0x16;

/// What the buffered bytes of a stream hold next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextFrame {
    /// A whole frame is at the start of the buffer.
    Complete(Frame),
    /// The frame is not whole yet: read at least `needed` more bytes (never beyond
    /// `MAX_FRAME_LEN` in all).
    Incomplete { needed: usize },
    /// These bytes cannot start a frame: close the connection.
    Invalid(Invalid),
}

/// One frame at the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    /// The message is `buf[..message_len]`: what the core is handed, as if it were a
    /// datagram (ChannelData without its stream padding).
    pub message_len: usize,
    /// The bytes to consume, padding included.
    pub frame_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Stun,
    ChannelData,
}

/// Why bytes cannot start a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Neither STUN (0x00–0x3F) nor ChannelData (0x40–0x4F).
    FirstByte,
    /// A STUN header without the magic cookie.
    MagicCookie,
    /// A STUN length that is not a multiple of 4.
    StunLength,
}

/// Frames the start of `buf`, the bytes buffered from a stream not yet consumed.
pub fn next_frame(buf: &[u8]) -> NextFrame {
    match buf.first() {
        None => NextFrame::Incomplete {
            needed: CHANNEL_DATA_HEADER_LEN,
        },
        Some(0x00..=0x3F) => stun(buf),
        Some(0x40..=0x4F) => channel_data(buf),
        Some(_) => NextFrame::Invalid(Invalid::FirstByte),
    }
}

fn stun(buf: &[u8]) -> NextFrame {
    // Judge what is there already, so that garbage is refused before a whole header arrives,
    // and in the order the bytes come, so that the verdict does not depend on the chunks.
    if let Some(&low) = buf.get(3)
        && low % 4 != 0
    {
        return NextFrame::Invalid(Invalid::StunLength);
    }
    let cookie_seen = buf.get(4..).unwrap_or_default();
    let cookie_seen = &cookie_seen[..cookie_seen.len().min(MAGIC_COOKIE.len())];
    if *cookie_seen != MAGIC_COOKIE[..cookie_seen.len()] {
        return NextFrame::Invalid(Invalid::MagicCookie);
    }
    match length_field(buf) {
        Some(body) => complete_or_needed(buf, FrameKind::Stun, STUN_HEADER_LEN + body),
        None => incomplete(buf, STUN_HEADER_LEN),
    }
}

fn channel_data(buf: &[u8]) -> NextFrame {
    match length_field(buf) {
        Some(data) => {
            complete_or_needed(buf, FrameKind::ChannelData, CHANNEL_DATA_HEADER_LEN + data)
        }
        None => incomplete(buf, CHANNEL_DATA_HEADER_LEN),
    }
}

/// The 16-bit length at bytes 2..4, which STUN and ChannelData share.
fn length_field(buf: &[u8]) -> Option<usize> {
    let bytes = buf.get(2..4)?;
    Some(usize::from(u16::from_be_bytes([bytes[0], bytes[1]])))
}

fn complete_or_needed(buf: &[u8], kind: FrameKind, message_len: usize) -> NextFrame {
    let frame_len = stream_len(message_len);
    if buf.len() < frame_len {
        return incomplete(buf, frame_len);
    }
    NextFrame::Complete(Frame {
        kind,
        message_len,
        frame_len,
    })
}

fn incomplete(buf: &[u8], at_least: usize) -> NextFrame {
    NextFrame::Incomplete {
        needed: at_least - buf.len(),
    }
}

/// A message's length on a stream: padded to a multiple of 4 (a no-op for STUN).
pub const fn stream_len(message_len: usize) -> usize {
    message_len.next_multiple_of(4)
}

/// Bytes of padding a message of `message_len` bytes needs on a stream (0 to 3).
pub const fn stream_padding(message_len: usize) -> usize {
    stream_len(message_len) - message_len
}

// The core writes ChannelData in place with TAILROOM spare bytes after it: enough to pad.
const _: () = assert!(stream_padding(CHANNEL_DATA_HEADER_LEN + 1) <= TAILROOM);

/// Pads the frame `buf[frame]` (as the core delivers it) for a stream: zeroes the padding
/// bytes after it (the tailroom may hold an earlier datagram's bytes) and returns the range
/// to write. `None` if `buf` has no room for the padding.
pub fn pad_for_stream(buf: &mut [u8], frame: Range<usize>) -> Option<Range<usize>> {
    let end = frame.start.checked_add(stream_len(frame.len()))?;
    buf.get_mut(frame.end..end)?.fill(0);
    Some(frame.start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed, TestRunner};

    fn stun_message(body_len: usize) -> Vec<u8> {
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(body_len as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend((0..body_len).map(|i| i as u8));
        m
    }

    fn channel_data_message(channel: u16, data_len: usize) -> Vec<u8> {
        let mut m = channel.to_be_bytes().to_vec();
        m.extend_from_slice(&(data_len as u16).to_be_bytes());
        m.extend((0..data_len).map(|i| (i * 7) as u8));
        m
    }

    /// The message as it travels on a stream: padded with `pad_byte`s.
    fn on_stream(message: &[u8], pad_byte: u8) -> Vec<u8> {
        let mut f = message.to_vec();
        f.resize(stream_len(message.len()), pad_byte);
        f
    }

    fn complete(kind: FrameKind, message_len: usize, frame_len: usize) -> NextFrame {
        NextFrame::Complete(Frame {
            kind,
            message_len,
            frame_len,
        })
    }

    /// Every frame of `stream` in order, and what is left: how framing the stream all at
    /// once ends (incomplete or invalid).
    fn frame_all(mut stream: &[u8]) -> (Vec<(FrameKind, Vec<u8>)>, NextFrame) {
        let mut frames = Vec::new();
        loop {
            match next_frame(stream) {
                NextFrame::Complete(f) => {
                    frames.push((f.kind, stream[..f.message_len].to_vec()));
                    stream = &stream[f.frame_len..];
                }
                end => return (frames, end),
            }
        }
    }

    #[test]
    fn empty_buffer_needs_a_channel_data_header() {
        assert_eq!(next_frame(&[]), NextFrame::Incomplete { needed: 4 });
    }

    #[test]
    fn stun_message_arriving_byte_by_byte() {
        let message = stun_message(8);
        for len in 1..message.len() {
            // The length is known after 4 bytes.
            let needed = if len < 4 { 20 - len } else { 28 - len };
            assert_eq!(
                next_frame(&message[..len]),
                NextFrame::Incomplete { needed },
                "after {len} bytes"
            );
        }
        assert_eq!(next_frame(&message), complete(FrameKind::Stun, 28, 28));
    }

    #[test]
    fn channel_data_arriving_byte_by_byte_with_its_padding() {
        let message = channel_data_message(0x4001, 5);
        let frame = on_stream(&message, 0xEE);
        assert_eq!(frame.len(), 12);
        for len in 1..frame.len() {
            let needed = if len < 4 { 4 - len } else { 12 - len };
            assert_eq!(
                next_frame(&frame[..len]),
                NextFrame::Incomplete { needed },
                "after {len} bytes"
            );
        }
        assert_eq!(next_frame(&frame), complete(FrameKind::ChannelData, 9, 12));
    }

    #[test]
    fn channel_data_padding_for_each_length() {
        for (data_len, frame_len) in [(0, 4), (1, 8), (2, 8), (3, 8), (4, 8), (5, 12)] {
            let frame = on_stream(&channel_data_message(0x4FFF, data_len), 0);
            assert_eq!(frame.len(), frame_len);
            assert_eq!(
                next_frame(&frame),
                complete(FrameKind::ChannelData, 4 + data_len, frame_len)
            );
            assert_eq!(stream_padding(4 + data_len), frame_len - 4 - data_len);
        }
    }

    #[test]
    fn zero_length_channel_data_is_a_bare_header() {
        assert_eq!(
            next_frame(&[0x40, 0x00, 0x00, 0x00]),
            complete(FrameKind::ChannelData, 4, 4)
        );
        assert_eq!(
            next_frame(&[0x40, 0x00, 0x00]),
            NextFrame::Incomplete { needed: 1 }
        );
    }

    #[test]
    fn back_to_back_frames() {
        let a = stun_message(0);
        let b = channel_data_message(0x4000, 1);
        let c = stun_message(4);
        let d = channel_data_message(0x4ABC, 0);
        let mut stream = Vec::new();
        for m in [&a, &b, &c, &d] {
            stream.extend(on_stream(m, 0xAB));
        }
        stream.extend_from_slice(&[0x40, 0x00]);
        let (frames, end) = frame_all(&stream);
        assert_eq!(
            frames,
            vec![
                (FrameKind::Stun, a),
                (FrameKind::ChannelData, b),
                (FrameKind::Stun, c),
                (FrameKind::ChannelData, d),
            ]
        );
        assert_eq!(end, NextFrame::Incomplete { needed: 2 });
    }

    #[test]
    fn garbage_first_byte_is_invalid_at_once() {
        for first in 0x50..=0xFFu8 {
            assert_eq!(
                next_frame(&[first]),
                NextFrame::Invalid(Invalid::FirstByte),
                "{first:#x}"
            );
        }
        // A TLS ClientHello on a plain TCP port is STUN-like at first, then has no cookie
        // (record header 16 03 01 00 c8: a STUN length of 0x0100, then no cookie).
        let client_hello = [0x16, 0x03, 0x01, 0x00, 0xC8, 0x01, 0x00, 0x00, 0xC4];
        assert_eq!(
            next_frame(&client_hello[..4]),
            NextFrame::Incomplete {
                needed: 20 + 256 - 4
            }
        );
        assert_eq!(
            next_frame(&client_hello),
            NextFrame::Invalid(Invalid::MagicCookie)
        );
    }

    #[test]
    fn stun_without_the_magic_cookie_is_invalid_from_its_first_wrong_byte() {
        let mut message = stun_message(0);
        message[5] = 0x13;
        assert_eq!(
            next_frame(&message[..5]),
            NextFrame::Incomplete { needed: 15 }
        );
        for len in 6..=message.len() {
            assert_eq!(
                next_frame(&message[..len]),
                NextFrame::Invalid(Invalid::MagicCookie)
            );
        }
    }

    #[test]
    fn stun_length_not_a_multiple_of_four_is_invalid() {
        let mut message = stun_message(8);
        message[3] = 6;
        assert_eq!(
            next_frame(&message[..4]),
            NextFrame::Invalid(Invalid::StunLength)
        );
        assert_eq!(
            next_frame(&message),
            NextFrame::Invalid(Invalid::StunLength)
        );
    }

    /// Found by the fuzzer: a bad length and a bad cookie give the same verdict whether the
    /// header arrives in one piece or in two.
    #[test]
    fn the_verdict_does_not_depend_on_the_chunks() {
        let header = [0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x01, 0x00];
        assert_eq!(
            next_frame(&header[..4]),
            NextFrame::Invalid(Invalid::StunLength)
        );
        assert_eq!(next_frame(&header), NextFrame::Invalid(Invalid::StunLength));
    }

    #[test]
    fn maximal_frames() {
        let stun = stun_message(MAX_STUN_BODY);
        assert_eq!(stun.len(), MAX_STUN_FRAME_LEN);
        assert_eq!(
            next_frame(&stun[..20]),
            NextFrame::Incomplete {
                needed: MAX_STUN_BODY
            }
        );
        assert_eq!(
            next_frame(&stun),
            complete(FrameKind::Stun, MAX_STUN_FRAME_LEN, MAX_STUN_FRAME_LEN)
        );

        let channel_data = on_stream(&channel_data_message(0x4000, 0xFFFF), 0);
        assert_eq!(channel_data.len(), MAX_CHANNEL_DATA_FRAME_LEN);
        assert_eq!(MAX_CHANNEL_DATA_FRAME_LEN, 4 + 0xFFFF + 1);
        assert_eq!(
            next_frame(&channel_data[..4]),
            NextFrame::Incomplete {
                needed: MAX_CHANNEL_DATA_FRAME_LEN - 4
            }
        );
        assert_eq!(
            next_frame(&channel_data),
            complete(
                FrameKind::ChannelData,
                4 + 0xFFFF,
                MAX_CHANNEL_DATA_FRAME_LEN
            )
        );
        assert_eq!(MAX_FRAME_LEN, 20 + 0xFFFC);
    }

    #[test]
    fn pad_for_stream_zeroes_the_tailroom() {
        // As the core delivers it: header and 5 bytes, then old bytes in the tailroom.
        let mut buf = [0xAA; 4 + 5 + TAILROOM];
        buf[..4].copy_from_slice(&[0x40, 0x00, 0x00, 0x05]);
        let padded = pad_for_stream(&mut buf, 0..9).unwrap();
        assert_eq!(padded, 0..12);
        assert_eq!(&buf[9..12], &[0, 0, 0]);
        assert_eq!(
            next_frame(&buf[padded]),
            complete(FrameKind::ChannelData, 9, 12)
        );

        let mut aligned = [0xAA; 10];
        assert_eq!(pad_for_stream(&mut aligned, 2..10), Some(2..10));
        assert_eq!(aligned, [0xAA; 10], "nothing to pad");
        assert_eq!(pad_for_stream(&mut [0u8; 9], 2..9), None, "no room");
    }

    /// Any sequence of valid frames, cut into arbitrary chunks and framed as the chunks
    /// arrive (as the driver will), gives back the same messages, and framing never asks
    /// for more than one maximal frame.
    #[test]
    fn concatenated_frames_split_anywhere_frame_back() {
        let message = prop_oneof![
            (0usize..64).prop_map(|words| (FrameKind::Stun, stun_message(words * 4))),
            (0x4000u16..=0x4FFF, 0usize..70).prop_map(|(channel, len)| {
                (FrameKind::ChannelData, channel_data_message(channel, len))
            }),
        ];
        let input = (
            proptest::collection::vec((message, any::<u8>()), 0..12),
            proptest::collection::vec(1usize..40, 1..20),
        );
        let mut runner = TestRunner::new(Config {
            cases: 512,
            rng_seed: RngSeed::Fixed(0x12_f4_a3),
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&input, |(messages, chunks)| {
                let mut stream = Vec::new();
                for ((_, message), pad) in &messages {
                    stream.extend(on_stream(message, *pad));
                }
                let mut got = Vec::new();
                let mut buffered: Vec<u8> = Vec::new();
                let mut rest = &stream[..];
                for chunk in chunks.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (now, later) = rest.split_at((*chunk).min(rest.len()));
                    buffered.extend_from_slice(now);
                    rest = later;
                    loop {
                        match next_frame(&buffered) {
                            NextFrame::Complete(f) => {
                                got.push((f.kind, buffered[..f.message_len].to_vec()));
                                buffered.drain(..f.frame_len);
                            }
                            NextFrame::Incomplete { needed } => {
                                prop_assert!(needed >= 1);
                                prop_assert!(buffered.len() + needed <= MAX_FRAME_LEN);
                                break;
                            }
                            NextFrame::Invalid(why) => {
                                return Err(TestCaseError::fail(format!("invalid: {why:?}")));
                            }
                        }
                    }
                }
                let want: Vec<_> = messages.into_iter().map(|(m, _)| m).collect();
                prop_assert_eq!(got, want);
                prop_assert!(buffered.is_empty());
                Ok(())
            })
            .unwrap();
    }
}
