//! Long-term credentials with the TURN REST API shared secret (RFC 8489 §9.2), checked on
//! the raw bytes before any attribute is decoded. Nothing is stored for a client until its
//! MESSAGE-INTEGRITY checks out.

use std::net::SocketAddr;

use stun_codec::rfc5389::attributes::{Nonce, Realm, Username};

use super::credentials::{self, Credentials};
use super::nonce::NonceCheck;
use crate::core::failure::Failure;
use crate::core::ids::ListenerId;
use crate::core::server::Server;
use crate::core::time::Now;
use crate::core::wire::{self as message, integrity};

impl Server {
    /// RFC 8489 §9.2.4 up to and including MESSAGE-INTEGRITY: present (else 401), USERNAME,
    /// REALM and NONCE present (400), the username a REST username not expired (401), the
    /// MESSAGE-INTEGRITY right for it (401). The nonce is judged after this, by the caller
    /// (`nonce_is_fresh`), so that a wrong password is 401 whatever the nonce.
    ///
    /// The expiry is that of the credentials' creation of an allocation: a request on a live
    /// allocation of this 5-tuple made with the same username is accepted after the username
    /// expired, unless `strict_credential_expiry` is set.
    pub(crate) fn authenticate(
        &self,
        now: Now,
        listener: ListenerId,
        client: SocketAddr,
        datagram: &[u8],
        integrity_at: Option<usize>,
    ) -> Result<Credentials, Failure> {
        let unauthorized = || Failure::Unauthorized {
            nonce: self.nonce_for(now, client),
        };
        let Some(integrity_at) = integrity_at else {
            return Err(unauthorized());
        };
        let (Some(username), Some(_realm), Some(_nonce)) = (
            message::attribute_value(datagram, Username::CODEPOINT),
            message::attribute_value(datagram, Realm::CODEPOINT),
            message::attribute_value(datagram, Nonce::CODEPOINT),
        ) else {
            return Err(Failure::BadRequest);
        };
        let username = datagram
            .get(username)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .ok_or_else(unauthorized)?;
        let expiry = credentials::username_expiry(username).ok_or_else(unauthorized)?;
        if expiry < now.unix_secs && !self.lives_on(now, listener, client, username) {
            return Err(unauthorized());
        }
        // The key uses our realm: a client that answered with another one fails the MAC.
        for secret in &self.config.auth_secrets {
            let password = credentials::rest_api_password(secret, username);
            let key = credentials::long_term_key(username, &self.config.realm, &password);
            if integrity::verify_message_integrity(datagram, integrity_at, &key) {
                return Ok(Credentials {
                    username: username.to_owned(),
                    key,
                });
            }
        }
        Err(unauthorized())
    }

    /// Whether `username` made the live allocation of this 5-tuple, so that its expiry no
    /// longer counts (checked when the allocation was created).
    fn lives_on(&self, now: Now, listener: ListenerId, client: SocketAddr, username: &str) -> bool {
        !self.config.strict_credential_expiry
            && self
                .by_client
                .get(&(listener, client))
                .and_then(|id| self.allocations.get(*id))
                .is_some_and(|a| now.instant < a.expires_at && a.username == username)
    }

    /// Whether the request's NONCE is one we issued to this client within its lifetime.
    pub(crate) fn nonce_is_fresh(&self, now: Now, client: SocketAddr, datagram: &[u8]) -> bool {
        let nonce = message::attribute_value(datagram, Nonce::CODEPOINT)
            .and_then(|range| datagram.get(range))
            .and_then(|bytes| std::str::from_utf8(bytes).ok());
        let lifetime = self.config.lifetimes.nonce_secs;
        nonce.is_some_and(|nonce| {
            self.nonces.check(nonce, now.unix_secs, client, lifetime) == NonceCheck::Valid
        })
    }
}
