//! STUN requests and indications from clients: Binding, Allocate, Refresh, ChannelBind,
//! CreatePermission and Send. Every failure is a `Failure`, turned into an error response
//! in one place (`Server::reply_error`).

mod allocate;
mod binding;
mod channel_bind;
mod create_permission;
mod refresh;
mod respond;
mod send;

use std::time::Duration;

use stun_codec::MessageClass;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::Lifetime;
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};
use stun_codec::rfc8656::attributes::AddressFamily;

use crate::core::auth::authenticate::{Refused, Verifier, nonce_is_fresh, nonce_issued_to};
use crate::core::auth::credentials::Credentials;
use crate::core::client::ClientKey;
use crate::core::failure::Failure;
use crate::core::ids::Family;
use crate::core::server::{Forward, Server};
use crate::core::time::Now;
use crate::core::wire::integrity::IntegrityLayout;
use crate::core::wire::{self as message, Attribute, DecodeError, Decoded, Header};

/// Who asked, so the answer goes back on the same 5-tuple and mirrors FINGERPRINT.
#[derive(Clone, Copy)]
pub(crate) struct Requester {
    pub(crate) client: ClientKey,
    pub(crate) header: Header,
    pub(crate) fingerprint: bool,
}

impl Server {
    pub(crate) fn handle_stun(
        &mut self,
        now: Now,
        client: ClientKey,
        datagram: &[u8],
        header: Header,
    ) -> Option<Forward> {
        let is_send = header.class == MessageClass::Indication && header.method == SEND.as_u16();
        if !Self::is_request(&header) && !is_send {
            self.counters.unexpected_stun += 1;
            return None;
        }
        let mut requester = Requester {
            client,
            header,
            fingerprint: false,
        };
        let layout = match message::layout(datagram) {
            Ok(layout) => layout,
            Err(DecodeError::BadAttributes { fingerprint }) if !is_send => {
                requester.fingerprint = fingerprint;
                self.reply_unauthenticated(&requester, datagram.len(), Failure::BadRequest);
                return None;
            }
            Err(_) => {
                self.counters.malformed += 1;
                return None;
            }
        };
        requester.fingerprint = layout.fingerprint.is_some();
        let method = message::method(header.method);
        if is_send || ![ALLOCATE, REFRESH, CHANNEL_BIND, CREATE_PERMISSION].contains(&method) {
            return self.unauthenticated(now, &requester, datagram, layout, is_send);
        }
        // RFC 8489 §9.2.4: the credentials and MESSAGE-INTEGRITY are checked on the raw
        // bytes first, so that every later answer (400 for attributes that do not decode,
        // 420, 438) is known to go to the holder of the key, signed and never limited.
        let credentials = match self.authenticate(now, client, datagram, layout) {
            Ok(credentials) => credentials,
            Err(failure) => {
                self.reply_unauthenticated(&requester, datagram.len(), failure);
                return None;
            }
        };
        // The MAC proves the key, and a web app hands keys to every visitor; only a nonce
        // issued to this address within its lifetime shows the request came from there.
        // Answers to anything less (438, a signed 400, a closing Refresh with a stale
        // nonce) are paid from the source's byte credit like every unauthenticated answer.
        let proven = nonce_is_fresh(
            &self.nonces,
            datagram,
            now.unix_secs,
            client.addr,
            self.config.lifetimes.nonce_secs,
        );
        let key = Some(&credentials.key);
        let (code, bytes) =
            match self.authenticated(now, &requester, datagram, layout, &credentials, proven) {
                Ok(Some(attributes)) => (200, self.success_response(&requester, attributes, key)),
                Ok(None) => return None, // answered later (Allocate waits for its relay socket)
                // RFC 8489 §9.2.4: a 438 SHOULD NOT carry MESSAGE-INTEGRITY.
                Err(failure @ Failure::StaleNonce { .. }) => {
                    (438, self.error_response(&requester, failure, None))
                }
                Err(failure) => (
                    failure.code(),
                    self.error_response(&requester, failure, key),
                ),
            };
        if proven {
            self.counters.count_response(requester.header.method, code);
            self.reply(client, bytes);
        } else {
            self.send_unauthenticated(&requester, datagram.len(), code, bytes);
        }
        None
    }

    /// The credentials of a request (`auth::authenticate`). The expiry of a username counts
    /// when it creates an allocation: a request on a live allocation of this client made
    /// with the same username is accepted after it expired, unless
    /// `strict_credential_expiry` is set.
    fn authenticate(
        &self,
        now: Now,
        client: ClientKey,
        datagram: &[u8],
        layout: IntegrityLayout,
    ) -> Result<Credentials, Failure> {
        let verifier = Verifier {
            realm: &self.config.realm,
            scheme: self.config.auth_scheme,
            secrets: &self.config.auth_secrets,
        };
        let lives_on = |username: &str| {
            !self.config.strict_credential_expiry
                && self
                    .allocations
                    .of_client(&client)
                    .is_some_and(|(_, a)| now.instant < a.expires_at && a.username == username)
        };
        verifier
            .authenticate(now.unix_secs, datagram, layout.message_integrity, lives_on)
            .map_err(|refused| match refused {
                Refused::BadRequest => Failure::BadRequest,
                Refused::Unauthorized => Failure::Unauthorized {
                    nonce: self.nonce_for(now, client.addr),
                },
            })
    }

    /// Send indications, Binding and unknown methods: never authenticated.
    pub(super) fn unauthenticated(
        &mut self,
        now: Now,
        requester: &Requester,
        datagram: &[u8],
        layout: IntegrityLayout,
        is_send: bool,
    ) -> Option<Forward> {
        let decoded = match message::decode_attributes(datagram, requester.header, layout) {
            Ok(decoded) => decoded,
            Err(DecodeError::BadAttributes { .. }) if !is_send => {
                self.reply_unauthenticated(requester, datagram.len(), Failure::BadRequest);
                return None;
            }
            Err(_) => {
                self.counters.malformed += 1;
                return None;
            }
        };
        if is_send {
            return self.send_indication(now, requester, datagram, &decoded);
        }
        if decoded.message.method() != BINDING {
            self.reply_unauthenticated(requester, datagram.len(), Failure::BadRequest);
            return None;
        }
        let unknown = message::unknown_required(&decoded.message);
        if unknown.is_empty() {
            self.binding(requester, datagram.len());
        } else {
            let failure = Failure::UnknownAttributes(unknown);
            self.reply_unauthenticated(requester, datagram.len(), failure);
        }
        None
    }

    /// A TURN request whose MESSAGE-INTEGRITY verified: its attributes (400), its nonce
    /// (438), unknown comprehension-required attributes (420, RFC 8489 §6.3.1), the method.
    pub(super) fn authenticated(
        &mut self,
        now: Now,
        requester: &Requester,
        datagram: &[u8],
        layout: IntegrityLayout,
        credentials: &Credentials,
        nonce_fresh: bool,
    ) -> Result<Option<Vec<Attribute>>, Failure> {
        let decoded = message::decode_attributes(datagram, requester.header, layout)
            .map_err(|_| Failure::BadRequest)?;
        let message = &decoded.message;
        // A closing Refresh is honoured with a stale nonce: Chrome and Firefox do not retry
        // it after a 438, and the allocation would hold its port and quota until it expired.
        let closing = message.method() == REFRESH
            && message
                .get_attribute::<Lifetime>()
                .is_some_and(|l| l.lifetime().is_zero());
        let closes_with_stale_nonce =
            closing && self.may_close_with(now, requester.client, datagram);
        if !nonce_fresh && !closes_with_stale_nonce {
            return Err(Failure::StaleNonce {
                nonce: self.nonce_for(now, requester.client.addr),
            });
        }
        let unknown = message::unknown_required(message);
        if !unknown.is_empty() {
            return Err(Failure::UnknownAttributes(unknown));
        }
        if message.method() == ALLOCATE {
            self.allocate(now, requester, &decoded, credentials)
        } else {
            self.on_allocation(now, requester, &decoded, credentials)
        }
    }

    /// Whether a closing Refresh's stale nonce still proves enough: we issued it to this
    /// very address, and no earlier than a nonce lifetime before the client's live
    /// allocation was created. So it can only be this allocation's own client's Refresh
    /// (or a replay of it from the same address, which deletes what it deleted); not an
    /// earlier allocation's closing Refresh replayed later on a reused 5-tuple, nor one
    /// sent from or to another address by someone else who holds the same credentials.
    fn may_close_with(&self, now: Now, client: ClientKey, datagram: &[u8]) -> bool {
        let Some((_, allocation)) = self.allocations.of_client(&client) else {
            return false;
        };
        let Some(issued) = nonce_issued_to(&self.nonces, datagram, client.addr) else {
            return false;
        };
        // Ages mod 2^32 seconds, as the nonce carries its issue time.
        let floor =
            (allocation.created_unix as u32).wrapping_sub(self.config.lifetimes.nonce_secs as u32);
        issued.wrapping_sub(floor) <= (now.unix_secs as u32).wrapping_sub(floor)
    }

    /// Requests that act on an existing allocation: Refresh, ChannelBind, CreatePermission.
    pub(super) fn on_allocation(
        &mut self,
        now: Now,
        requester: &Requester,
        request: &Decoded,
        credentials: &Credentials,
    ) -> Result<Option<Vec<Attribute>>, Failure> {
        let (id, allocation) = self
            .allocations
            .live(&requester.client, now.instant)
            .ok_or(Failure::AllocationMismatch)?;
        if allocation.username != credentials.username {
            return Err(Failure::WrongCredentials);
        }
        let method = request.message.method();
        let attributes = if method == REFRESH {
            self.refresh(now, id, request)?
        } else if method == CHANNEL_BIND {
            self.channel_bind(now, id, request)?
        } else {
            self.create_permission(now, id, request)?
        };
        Ok(Some(attributes))
    }
}

pub(super) fn family_of(family: AddressFamily) -> Family {
    match family {
        AddressFamily::V4 => Family::V4,
        AddressFamily::V6 => Family::V6,
    }
}

pub(super) fn lifetime_attribute(lifetime: Duration) -> Attribute {
    let seconds = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
    Attribute::Lifetime(Lifetime::from_u32(seconds))
}
