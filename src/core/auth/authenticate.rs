//! Long-term credentials with the TURN REST API shared secret (RFC 8489 §9.2), checked on
//! the raw bytes before any attribute is decoded. Nothing is stored for a client until its
//! MESSAGE-INTEGRITY checks out.

use std::net::SocketAddr;

use stun_codec::rfc5389::attributes::{Nonce, Realm, Username};

use super::credentials::{self, AuthScheme, Credentials};
use super::nonce::{NonceCheck, NonceKey};
use crate::core::wire::{self as message, integrity};

/// Why a request is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No MESSAGE-INTEGRITY, an unknown or expired username, a wrong MAC: 401.
    Unauthorized,
    /// MESSAGE-INTEGRITY without USERNAME, REALM and NONCE: 400.
    BadRequest,
}

/// The relay's side of the check: its realm, credential scheme and secrets.
pub(crate) struct Verifier<'a> {
    pub(crate) realm: &'a str,
    pub(crate) scheme: AuthScheme,
    pub(crate) secrets: &'a [Vec<u8>],
}

impl Verifier<'_> {
    /// RFC 8489 §9.2.4 up to and including MESSAGE-INTEGRITY: present (else 401), USERNAME,
    /// REALM and NONCE present (400), the username well-formed for the scheme and not expired (401), the
    /// MESSAGE-INTEGRITY right for it (401). The nonce is judged after this, by the caller
    /// (`nonce_is_fresh`), so that a wrong password is 401 whatever the nonce.
    ///
    /// An expired username is accepted when `lives_on(username)`: the caller knows whether
    /// the username made a live allocation of this client (its expiry was judged then).
    pub(crate) fn authenticate(
        &self,
        unix_now: u64,
        datagram: &[u8],
        integrity_at: Option<usize>,
        lives_on: impl Fn(&str) -> bool,
    ) -> Result<Credentials, Refused> {
        let Some(integrity_at) = integrity_at else {
            return Err(Refused::Unauthorized);
        };
        let (Some(username), Some(_realm), Some(_nonce)) = (
            message::attribute_value(datagram, Username::CODEPOINT),
            message::attribute_value(datagram, Realm::CODEPOINT),
            message::attribute_value(datagram, Nonce::CODEPOINT),
        ) else {
            return Err(Refused::BadRequest);
        };
        let username = datagram
            .get(username)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .ok_or(Refused::Unauthorized)?;
        let expiry = self.scheme.expiry(username).ok_or(Refused::Unauthorized)?;
        if expiry < unix_now && !lives_on(username) {
            return Err(Refused::Unauthorized);
        }
        // The key uses our realm: a client that answered with another one fails the MAC.
        for secret in self.secrets {
            let password = self.scheme.password(secret, username);
            let key = credentials::long_term_key(username, self.realm, &password);
            if integrity::verify_message_integrity(datagram, integrity_at, &key) {
                return Ok(Credentials {
                    username: username.to_owned(),
                    key,
                });
            }
        }
        Err(Refused::Unauthorized)
    }
}

/// Whether the request's NONCE is one `nonces` issued to this client within `lifetime`.
pub(crate) fn nonce_is_fresh(
    nonces: &NonceKey,
    datagram: &[u8],
    unix_now: u64,
    client: SocketAddr,
    lifetime: u64,
) -> bool {
    nonce_of(datagram)
        .is_some_and(|nonce| nonces.check(nonce, unix_now, client, lifetime) == NonceCheck::Valid)
}

/// The issue time (Unix seconds mod 2^32) of the request's NONCE if `nonces` issued it to
/// this client, however old.
pub(crate) fn nonce_issued_to(
    nonces: &NonceKey,
    datagram: &[u8],
    client: SocketAddr,
) -> Option<u32> {
    nonce_of(datagram).and_then(|nonce| nonces.issued_to(nonce, client))
}

fn nonce_of(datagram: &[u8]) -> Option<&str> {
    message::attribute_value(datagram, Nonce::CODEPOINT)
        .and_then(|range| datagram.get(range))
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
}
