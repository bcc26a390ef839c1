//! Stateless nonces (RFC 8489 §9.2): a MAC over the issue time and the client's address, so
//! that no state exists for a client before its MESSAGE-INTEGRITY verifies.

use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// Characters of a nonce: base64url of 4 bytes of issue time and 8 of MAC.
const NONCE_LEN: usize = 16;
const NONCE_MAC_LEN: usize = 8;
/// How far in the future an issue time may lie before we assume the clock
/// stepped back since issuing.
const MAX_FUTURE_SECS: u32 = 60;

/// Issues and checks stateless nonces: base64url (no padding) of the issue time
/// (unix seconds mod 2^32, big-endian) followed by the first 8 bytes of
/// HMAC-SHA1(key, issue_time_be_u32 || client ip octets || client port be).
///
/// Binding the nonce to the client's transport address stops a nonce seen on
/// the wire from being replayed from elsewhere, without any per-client state.
/// 16 characters, so that a 401 (ERROR-CODE, REALM, NONCE) stays within three
/// times the size of the smallest Allocate that gets it (see `admission`).
pub(crate) struct NonceKey {
    // Keyed once: cloning the HMAC state is cheaper than re-deriving it.
    mac: Hmac<Sha1>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceCheck {
    Valid,
    Stale,
    Invalid,
}

impl NonceKey {
    pub(crate) fn new(key: [u8; 32]) -> Self {
        // HMAC zero-pads short keys to the block size, so this is the same MAC
        // as keying with the 32 bytes, through the constructor that cannot fail.
        let mut block = [0u8; 64];
        let (head, _) = block.split_at_mut(32);
        head.copy_from_slice(&key);
        Self {
            mac: Hmac::new(&block.into()),
        }
    }

    pub(crate) fn issue(&self, unix_now: u64, client: SocketAddr) -> String {
        let issued = truncate_time(unix_now);
        let tag = self.mac(issued, client).finalize().into_bytes();
        let mut raw = [0u8; 4 + NONCE_MAC_LEN];
        raw[..4].copy_from_slice(&issued.to_be_bytes());
        raw[4..].copy_from_slice(&tag[..NONCE_MAC_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Valid if the MAC matches (constant-time) and the nonce is at most
    /// lifetime_secs old; Stale if the MAC matches but it is too old, or was issued
    /// more than 60 s in the future (clock step); Invalid if not our format or
    /// the MAC does not match. Ages are reckoned modulo 2^32 seconds (136 years).
    pub(crate) fn check(
        &self,
        nonce: &str,
        unix_now: u64,
        client: SocketAddr,
        lifetime_secs: u64,
    ) -> NonceCheck {
        let Some(issued) = self.issued_to(nonce, client) else {
            return NonceCheck::Invalid;
        };
        let age = truncate_time(unix_now).wrapping_sub(issued);
        let ahead = issued.wrapping_sub(truncate_time(unix_now));
        if ahead <= MAX_FUTURE_SECS || u64::from(age) <= lifetime_secs {
            return NonceCheck::Valid;
        }
        NonceCheck::Stale
    }

    /// The issue time (Unix seconds mod 2^32) of a nonce we issued to `client`, however
    /// old; None if it is not ours or was issued to another address.
    pub(crate) fn issued_to(&self, nonce: &str, client: SocketAddr) -> Option<u32> {
        let (issued, tag) = parse_nonce(nonce)?;
        self.mac(issued, client)
            .verify_truncated_left(&tag)
            .ok()
            .map(|()| issued)
    }

    fn mac(&self, issued: u32, client: SocketAddr) -> Hmac<Sha1> {
        let mut mac = self.mac.clone();
        mac.update(&issued.to_be_bytes());
        match client {
            SocketAddr::V4(a) => mac.update(&a.ip().octets()),
            SocketAddr::V6(a) => mac.update(&a.ip().octets()),
        }
        mac.update(&client.port().to_be_bytes());
        mac
    }
}

fn truncate_time(unix_secs: u64) -> u32 {
    (unix_secs & u64::from(u32::MAX)) as u32
}

/// Splits a nonce into its issue time and MAC; None unless it is exactly 16
/// base64url characters, the only form `issue` produces.
fn parse_nonce(nonce: &str) -> Option<(u32, [u8; NONCE_MAC_LEN])> {
    if nonce.len() != NONCE_LEN {
        return None;
    }
    let mut raw = [0u8; 4 + NONCE_MAC_LEN];
    let written = URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw).ok()?;
    if written != raw.len() {
        return None;
    }
    let (time, mac) = raw.split_at(4);
    let issued = u32::from_be_bytes(time.try_into().ok()?);
    Some((issued, mac.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = {
        let mut k = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            k[i] = i as u8;
            i += 1;
        }
        k
    };

    fn v4() -> SocketAddr {
        "192.0.2.1:3478".parse().unwrap()
    }

    fn v6() -> SocketAddr {
        "[2001:db8::1]:3478".parse().unwrap()
    }

    #[test]
    fn nonce_known_answer() {
        // python3: t = 1700000000; base64.urlsafe_b64encode(struct.pack('>I', t)
        //   + hmac.new(bytes(range(32)), struct.pack('>I', t) + ip.packed
        //   + struct.pack('>H', port), hashlib.sha1).digest()[:8])
        let key = NonceKey::new(KEY);
        assert_eq!(key.issue(1_700_000_000, v4()), "ZVPxANnjCQ3ig2Oq");
        assert_eq!(key.issue(1_700_000_000, v6()), "ZVPxAK59CRIL4_wH");
    }

    #[test]
    fn nonce_round_trip_and_staleness() {
        let key = NonceKey::new(KEY);
        let t = 1_700_000_000;
        for client in [v4(), v6()] {
            let nonce = key.issue(t, client);
            assert_eq!(nonce.len(), 16);
            assert_eq!(key.check(&nonce, t, client, 600), NonceCheck::Valid);
            assert_eq!(key.check(&nonce, t + 600, client, 600), NonceCheck::Valid);
            assert_eq!(key.check(&nonce, t + 601, client, 600), NonceCheck::Stale);
            // Small clock steps backwards are tolerated, big ones are not.
            assert_eq!(key.check(&nonce, t - 60, client, 600), NonceCheck::Valid);
            assert_eq!(key.check(&nonce, t - 61, client, 600), NonceCheck::Stale);
        }
        // Ages are taken modulo 2^32 s: issue times across the wrap still work, and
        // extremes of the clock do not overflow.
        let wrap = u64::from(u32::MAX);
        let nonce = key.issue(wrap, v4());
        assert_eq!(key.check(&nonce, wrap + 600, v4(), 600), NonceCheck::Valid);
        assert_eq!(key.check(&nonce, wrap + 601, v4(), 600), NonceCheck::Stale);
        let nonce = key.issue(u64::MAX, v4());
        assert_eq!(key.check(&nonce, u64::MAX, v4(), 0), NonceCheck::Valid);
        assert_eq!(key.check(&nonce, u64::MAX - 61, v4(), 0), NonceCheck::Stale);
        let nonce = key.issue(0, v4());
        assert_eq!(key.check(&nonce, 0, v4(), 0), NonceCheck::Valid);
        assert_eq!(key.check(&nonce, 1000, v4(), 10), NonceCheck::Stale);
    }

    #[test]
    fn nonce_is_bound_to_client_and_key() {
        let key = NonceKey::new(KEY);
        let t = 1_700_000_000;
        let nonce = key.issue(t, v4());
        for other in [
            "192.0.2.2:3478",
            "192.0.2.1:3479",
            "[::ffff:192.0.2.1]:3478",
        ] {
            let other: SocketAddr = other.parse().unwrap();
            assert_eq!(key.check(&nonce, t, other, 600), NonceCheck::Invalid);
        }
        let other_key = NonceKey::new([7; 32]);
        assert_eq!(other_key.check(&nonce, t, v4(), 600), NonceCheck::Invalid);
    }

    #[test]
    fn nonce_tampering_is_invalid() {
        let key = NonceKey::new(KEY);
        let t = 1_700_000_000;
        let nonce = key.issue(t, v4());
        // Changing any character, in the time or in the MAC, invalidates it.
        for i in 0..nonce.len() {
            let mut bytes = nonce.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert_eq!(
                key.check(&tampered, t, v4(), u64::MAX),
                NonceCheck::Invalid,
                "{tampered}"
            );
        }
        assert_eq!(
            key.check(&nonce.to_uppercase(), t, v4(), 600),
            NonceCheck::Invalid
        );
    }

    #[test]
    fn nonce_garbage_is_invalid() {
        let key = NonceKey::new(KEY);
        let t = 1_700_000_000;
        let nonce = key.issue(t, v4());
        let cases = [
            String::new(),
            nonce[..15].to_string(),
            format!("{nonce}A"),
            "é".repeat(8), // 16 bytes, none of them base64
            "é".repeat(16),
            format!("{}é", &nonce[..14]),
            "+".repeat(16), // the standard alphabet's characters are not ours
            " ".repeat(16),
            "=".repeat(16),
        ];
        for case in cases {
            assert_eq!(
                key.check(&case, t, v4(), 600),
                NonceCheck::Invalid,
                "{case:?}"
            );
        }
    }
}
