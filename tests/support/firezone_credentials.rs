//! Firezone credentials minted the way a Firezone portal does, independently of the relay's
//! code: SHA-256 from `sha256.rs` (FIPS 180-4 written for the tests), base64 written here.
#![allow(dead_code)]

use crate::sha256::sha256;

/// base64, standard alphabet (RFC 4648 §4), no padding.
pub fn base64_no_pad(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        // 1 byte gives 2 characters, 2 give 3, 3 give 4.
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// Username `<expiry>:<salt>` and password base64-no-pad(SHA-256("<expiry>:<secret>:<salt>")).
pub fn firezone_credentials(secret: &str, expiry: u64, salt: &str) -> (String, String) {
    let digest = sha256(format!("{expiry}:{secret}:{salt}").as_bytes());
    (format!("{expiry}:{salt}"), base64_no_pad(&digest))
}

#[test]
fn base64_no_pad_known_answers() {
    // RFC 4648 §10, padding removed.
    for (input, expected) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64_no_pad(input.as_bytes()), expected);
    }
}

#[test]
fn firezone_credentials_known_answer() {
    // The test vector of Firezone's relay (rust/relay auth.rs).
    let (username, password) = firezone_credentials(
        "4c98bf59c99b3e467ecd7cf9d6b3e5279645fca59be67bc5bb4af3cf653761ab",
        60 * 60 * 24 * 365 * 60,
        "n23JJ2wKKtt30oXi",
    );
    assert_eq!(username, "1892160000:n23JJ2wKKtt30oXi");
    assert_eq!(password, "00hqldgk5xLeKKOB+xls9mHMVtgqzie9DulfgQwMv68");
}
