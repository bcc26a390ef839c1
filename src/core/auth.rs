//! Long-term credentials with the TURN REST API shared secret (RFC 8489 §9.2).
//! Nothing is stored for a client until its MESSAGE-INTEGRITY checks out.

use std::net::SocketAddr;

use stun_codec::rfc5389::attributes::{Nonce, Realm, Username};

use super::credentials::{self, NonceCheck};
use super::errors::Failure;
use super::ids::Now;
use super::integrity;
use super::message::Decoded;
use super::server::Server;

/// Who an authenticated request is from, and the key that signs our answer.
pub struct Credentials {
    pub username: String,
    pub key: [u8; 16],
}

impl Server {
    /// Checks a request's credentials in RFC 8489 §9.2.4 order: present (401), complete (400),
    /// nonce (438), username not expired (401), MESSAGE-INTEGRITY (401).
    pub(super) fn authenticate(
        &self,
        now: Now,
        client: SocketAddr,
        datagram: &[u8],
        request: &Decoded,
    ) -> Result<Credentials, Failure> {
        let unauthorized = || Failure::Unauthorized {
            nonce: self.nonce_for(now, client),
        };
        let Some(integrity_at) = request.integrity else {
            return Err(unauthorized());
        };
        let message = &request.message;
        let (Some(username), Some(_realm), Some(nonce)) = (
            message.get_attribute::<Username>(),
            message.get_attribute::<Realm>(),
            message.get_attribute::<Nonce>(),
        ) else {
            return Err(Failure::BadRequest);
        };
        let lifetime = self.config.lifetimes.nonce_secs;
        if self
            .nonces
            .check(nonce.value(), now.unix_secs, client, lifetime)
            != NonceCheck::Valid
        {
            return Err(Failure::StaleNonce {
                nonce: self.nonce_for(now, client),
            });
        }
        let username = username.name();
        match credentials::username_expiry(username) {
            Some(expiry) if expiry >= now.unix_secs => {}
            _ => return Err(unauthorized()),
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
}
