//! The two credential schemes: TURN REST API (coturn's `--use-auth-secret`) and Firezone's
//! (a relay made its secret and handed it to the portal, which mints credentials from it):
//! the password a secret gives a username, the long-term key (RFC 8489 §9.2.2), the
//! username's expiry, and `Credentials`, who an authenticated request is from.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// Who an authenticated request is from, and the key that signs our answer.
pub struct Credentials {
    /// The USERNAME of the request.
    pub username: String,
    /// The long-term key, which signs the answer.
    pub key: [u8; 16],
}
/// How a username and a secret give a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthScheme {
    /// `<expiry>[:<id>]`, password base64(HMAC-SHA1(secret, username)).
    #[default]
    Rest,
    /// Firezone's: `<expiry>:<salt>` (exactly one ':'), password
    /// base64-without-padding(SHA-256(`"<expiry>:<secret>:<salt>"`)).
    Firezone,
}

impl AuthScheme {
    /// The username's expiry if it is well-formed for this scheme.
    pub fn expiry(self, username: &str) -> Option<u64> {
        match self {
            AuthScheme::Rest => username_expiry(username),
            AuthScheme::Firezone => firezone_username(username).map(|(expiry, _)| expiry),
        }
    }

    /// The password `secret` gives `username` (whose form `expiry` has checked).
    pub fn password(self, secret: &[u8], username: &str) -> String {
        match self {
            AuthScheme::Rest => rest_api_password(secret, username),
            AuthScheme::Firezone => match firezone_username(username) {
                Some((expiry, salt)) => firezone_password(secret, expiry, salt),
                None => String::new(),
            },
        }
    }
}

/// base64(HMAC-SHA1(secret, username)), standard alphabet with padding
/// (coturn's --use-auth-secret convention).
pub fn rest_api_password(secret: &[u8], username: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        // HMAC takes keys of any length; this arm cannot be reached.
        return String::new();
    };
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Firezone's password: base64 (standard alphabet, no padding) of
/// SHA-256(`"<expiry>:<secret>:<salt>"`); the secret is used as its text (64 hex characters).
pub fn firezone_password(secret: &[u8], expiry: u64, salt: &str) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(expiry.to_string().as_bytes());
    context.update(b":");
    context.update(secret);
    context.update(b":");
    context.update(salt.as_bytes());
    STANDARD_NO_PAD.encode(context.finish().as_ref())
}

/// Splits a Firezone username `<expiry>:<salt>`: exactly one ':', the expiry a plain
/// decimal u64 (as `username_expiry` takes it), the salt anything without ':'.
pub fn firezone_username(username: &str) -> Option<(u64, &str)> {
    let (expiry, salt) = username.split_once(':')?;
    if salt.contains(':') {
        return None;
    }
    Some((username_expiry(expiry)?, salt))
}

/// MD5(username ":" realm ":" password) — RFC 8489 §9.2.2 long-term key (no
/// SASLprep: REST API passwords are base64).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    Md5::new()
        .chain_update(username)
        .chain_update(":")
        .chain_update(realm)
        .chain_update(":")
        .chain_update(password)
        .finalize()
        .into()
}

/// Parses `<unix-expiry>[:<id>]` and returns the expiry.
///
/// None if the part before the first ':' is not a plain decimal u64 (no sign,
/// no spaces, 1..=20 digits). The id may be anything, including empty.
pub fn username_expiry(username: &str) -> Option<u64> {
    let expiry = username.split_once(':').map_or(username, |(e, _)| e);
    // u64::from_str would also take a leading '+'.
    if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    expiry.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_api_password_known_answer() {
        // python3: base64.b64encode(hmac.new(b'secret', b'1700000000:alice', hashlib.sha1).digest())
        assert_eq!(
            rest_api_password(b"secret", "1700000000:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
    }

    #[test]
    fn firezone_password_known_answers() {
        // Firezone's relay (rust/relay auth.rs, 2023): its own test vectors.
        let secret = b"4c98bf59c99b3e467ecd7cf9d6b3e5279645fca59be67bc5bb4af3cf653761ab";
        assert_eq!(
            firezone_password(secret, 60 * 60 * 24 * 365 * 60, "n23JJ2wKKtt30oXi"),
            "00hqldgk5xLeKKOB+xls9mHMVtgqzie9DulfgQwMv68"
        );
        assert_eq!(
            firezone_password(
                b"1cab293a-4032-46f4-862a-40e5d174b0d2",
                1685984278,
                "uvdgKvS9GXYZ_vmv"
            ),
            "6xUIoZ+QvxKhRasLifwfRkMXl+ETLJUsFkHlXjlHAkg"
        );
    }

    #[test]
    fn firezone_username_cases() {
        assert_eq!(
            firezone_username("1700000000:salt"),
            Some((1_700_000_000, "salt"))
        );
        assert_eq!(firezone_username("1:"), Some((1, "")));
        for bad in ["1700000000", "1:2:3", ":salt", "+1:salt", "x:salt", ""] {
            assert_eq!(firezone_username(bad), None, "{bad:?}");
        }
        assert_eq!(AuthScheme::Firezone.expiry("1:2:3"), None);
        assert_eq!(AuthScheme::Rest.expiry("1:2:3"), Some(1));
        assert_eq!(AuthScheme::Firezone.password(b"s", "1:2:3"), "");
    }

    #[test]
    fn long_term_key_known_answer() {
        // python3: hashlib.md5(b'alice:example.org:pass').hexdigest()
        assert_eq!(
            long_term_key("alice", "example.org", "pass"),
            [
                0x14, 0xf5, 0xd3, 0x6e, 0x9e, 0x37, 0xe3, 0xeb, 0xd1, 0x0d, 0x4d, 0x1e, 0x20, 0x6e,
                0xb3, 0x49
            ]
        );
        // RFC 5769 §2.4's credentials, hashed over their UTF-8 bytes.
        assert_eq!(
            long_term_key("マトリックス", "example.org", "TheMatrIX"),
            [
                0xe8, 0xca, 0x7a, 0xd5, 0x9d, 0x5e, 0xb0, 0x51, 0x8e, 0x31, 0x29, 0x11, 0xd2, 0xda,
                0xb2, 0xa9
            ]
        );
    }

    #[test]
    fn username_expiry_cases() {
        assert_eq!(username_expiry("1700000000"), Some(1_700_000_000));
        assert_eq!(username_expiry("1700000000:bob"), Some(1_700_000_000));
        assert_eq!(username_expiry("123:"), Some(123));
        assert_eq!(username_expiry("1:2:3"), Some(1));
        assert_eq!(username_expiry("0"), Some(0));
        assert_eq!(username_expiry("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "abc",
            "",
            ":bob",
            "-1",
            "+5",
            " 1",
            "1 ",
            "1 :bob",
            "１２３",
            "18446744073709551616",
            "000000000000000000001",
        ] {
            assert_eq!(username_expiry(bad), None, "{bad:?}");
        }
    }
}
