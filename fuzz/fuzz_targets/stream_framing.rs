//! Any bytes a TCP/TLS client can send, arriving in any chunks, through the stream framer as
//! the driver uses it: append what was read to a bounded buffer, take every whole frame,
//! stop at an incomplete or invalid one. Findings: a panic, a frame that is not what the
//! header says, asking for more than one maximal frame, or framing in chunks that differs
//! from framing the same bytes all at once.
//!
//! Input: byte 0 is the number of chunk sizes `k` (at most 16), bytes 1..=k the sizes
//! (each + 1, used in turn), the rest the stream. With no sizes the stream is one chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::core::wire::stream_framing::{FrameKind, MAX_FRAME_LEN, NextFrame, next_frame};

/// What framing a stream gives: the messages, and why it stopped (how many bytes were
/// still needed, or that the rest was invalid) with the bytes left over.
#[derive(Debug, PartialEq, Eq)]
struct Framed {
    messages: Vec<(FrameKind, Vec<u8>)>,
    end: NextFrame,
    left_over: usize,
}

/// Takes every whole frame from the start of `buffered`; returns the bytes consumed and
/// how framing stopped.
fn drain(buffered: &[u8], messages: &mut Vec<(FrameKind, Vec<u8>)>) -> (usize, NextFrame) {
    let mut at = 0;
    loop {
        let next = next_frame(&buffered[at..]);
        match next {
            NextFrame::Complete(frame) => {
                let bytes = &buffered[at..at + frame.frame_len];
                assert!(frame.message_len <= frame.frame_len);
                assert!(frame.frame_len - frame.message_len <= 3);
                assert_eq!(frame.frame_len % 4, 0);
                assert!(frame.frame_len <= MAX_FRAME_LEN);
                let length = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
                match frame.kind {
                    FrameKind::Stun => {
                        assert!(bytes[0] < 0x40);
                        assert_eq!(frame.message_len, 20 + length);
                    }
                    FrameKind::ChannelData => {
                        assert!((0x40..=0x4F).contains(&bytes[0]));
                        assert_eq!(frame.message_len, 4 + length);
                    }
                }
                messages.push((frame.kind, bytes[..frame.message_len].to_vec()));
                at += frame.frame_len;
            }
            NextFrame::Incomplete { needed } => {
                let buffered_now = buffered.len() - at;
                assert!(needed >= 1);
                assert!(
                    buffered_now + needed <= MAX_FRAME_LEN,
                    "asks for {needed} more after {buffered_now}"
                );
                return (at, next);
            }
            NextFrame::Invalid(_) => return (at, next),
        }
    }
}

fn all_at_once(stream: &[u8]) -> Framed {
    let mut messages = Vec::new();
    let (consumed, end) = drain(stream, &mut messages);
    Framed {
        messages,
        end,
        left_over: stream.len() - consumed,
    }
}

/// As the driver reads: a buffer that never holds more than one maximal frame.
fn in_chunks(stream: &[u8], sizes: &[u8]) -> Framed {
    let mut messages = Vec::new();
    let mut buffered: Vec<u8> = Vec::with_capacity(MAX_FRAME_LEN);
    let mut rest = stream;
    let mut sizes = sizes.iter().map(|s| usize::from(*s) + 1).cycle();
    let mut end = next_frame(&[]);
    while !rest.is_empty() {
        let room = MAX_FRAME_LEN - buffered.len();
        assert!(room > 0, "a full buffer holds a whole frame");
        let size = sizes.next().unwrap_or(usize::MAX).min(rest.len()).min(room);
        buffered.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        let (consumed, stopped) = drain(&buffered, &mut messages);
        buffered.drain(..consumed);
        end = stopped;
        if matches!(end, NextFrame::Invalid(_)) {
            // The driver closes the connection: the rest is never read.
            return Framed {
                messages,
                end,
                left_over: buffered.len() + rest.len(),
            };
        }
    }
    Framed {
        messages,
        end,
        left_over: buffered.len(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count).min(16).min(rest.len());
    let (sizes, stream) = rest.split_at(count);
    assert_eq!(in_chunks(stream, sizes), all_at_once(stream));
});
