//! Client-side STUN/TURN helpers for tests: build requests (with raw extra attributes,
//! long-term MESSAGE-INTEGRITY and FINGERPRINT) and decode and check the server's answers.
//! Requests are written by the tests' own encoder (`stun_encoder.rs`, pinned to RFC 5769),
//! never the core's; answers are decoded with stun_codec and their MESSAGE-INTEGRITY and
//! FINGERPRINT recomputed by that encoder. Raw TLV walks are done by hand so a test can
//! assert the exact list of attributes on the wire.
#![allow(dead_code)]

use bytecodec::DecodeExt;
use stun_codec::rfc5389::attributes::{ErrorCode, Nonce, Realm, UnknownAttributes};
use stun_codec::{Message, MessageClass, MessageDecoder, Method};

use crate::stun_encoder::codec::Attribute;
use crate::stun_encoder::{self as enc, Attr, Encoder, long_term_key, rest_password};

/// Attribute codepoints, to assert the exact attribute list of a response.
pub use crate::stun_encoder::kind as types;

/// TURN REST API credentials as a client holds them.
#[derive(Debug, Clone)]
pub struct Creds {
    pub username: String,
    pub password: String,
    pub realm: String,
    pub key: [u8; 16],
}

impl Creds {
    /// Credentials minted from `secret` for `<expiry>:<id>` in `realm`.
    pub fn rest(secret: &[u8], expiry: u64, id: &str, realm: &str) -> Self {
        let username = format!("{expiry}:{id}");
        let password = rest_password(secret, &username);
        let key = long_term_key(&username, realm, &password);
        Creds {
            username,
            password,
            realm: realm.to_owned(),
            key,
        }
    }
}

/// A request (or indication) under construction.
#[derive(Debug, Clone)]
pub struct Req {
    pub class: MessageClass,
    pub method: Method,
    pub transaction_id: Option<[u8; 12]>,
    pub attributes: Vec<Attr>,
    /// Raw TLVs appended after the encoded attributes, before MESSAGE-INTEGRITY.
    pub raw: Vec<(u16, Vec<u8>)>,
    /// USERNAME, REALM, NONCE and MESSAGE-INTEGRITY under this key.
    pub auth: Option<(Creds, String)>,
    /// MESSAGE-INTEGRITY without the USERNAME/REALM/NONCE that should go with it.
    pub bare_integrity: Option<[u8; 16]>,
    /// Which of USERNAME, REALM, NONCE to leave out (for the 400 checks).
    pub omit: [bool; 3],
    pub fingerprint: bool,
    /// Flip a bit of the MESSAGE-INTEGRITY value after signing.
    pub corrupt_integrity: bool,
}

impl Req {
    pub fn request(method: Method) -> Self {
        Req {
            class: MessageClass::Request,
            method,
            transaction_id: None,
            attributes: Vec::new(),
            raw: Vec::new(),
            auth: None,
            bare_integrity: None,
            omit: [false; 3],
            fingerprint: false,
            corrupt_integrity: false,
        }
    }

    pub fn indication(method: Method) -> Self {
        Req {
            class: MessageClass::Indication,
            ..Req::request(method)
        }
    }

    pub fn attr(mut self, attribute: impl Into<Attr>) -> Self {
        self.attributes.push(attribute.into());
        self
    }

    pub fn raw(mut self, kind: u16, value: &[u8]) -> Self {
        self.raw.push((kind, value.to_vec()));
        self
    }

    pub fn auth(mut self, creds: &Creds, nonce: &str) -> Self {
        self.auth = Some((creds.clone(), nonce.to_owned()));
        self
    }

    pub fn fingerprint(mut self) -> Self {
        self.fingerprint = true;
        self
    }

    pub fn tid(mut self, id: [u8; 12]) -> Self {
        self.transaction_id = Some(id);
        self
    }

    /// The wire bytes; the transaction ID must be set.
    pub fn build(&self) -> Vec<u8> {
        let id = self.transaction_id.expect("transaction id set");
        let mut msg = Encoder::new(self.class.into(), self.method.as_u16(), id);
        for attribute in &self.attributes {
            msg.attr(attribute);
        }
        let mut key = self.bare_integrity;
        if let Some((creds, nonce)) = &self.auth {
            if !self.omit[0] {
                msg.tlv(enc::kind::USERNAME, creds.username.as_bytes());
            }
            if !self.omit[1] {
                msg.tlv(enc::kind::REALM, creds.realm.as_bytes());
            }
            if !self.omit[2] {
                msg.tlv(enc::kind::NONCE, nonce.as_bytes());
            }
            key = Some(creds.key);
        }
        for (kind, value) in &self.raw {
            msg.tlv(*kind, value);
        }
        if let Some(key) = key {
            msg.integrity(&key);
            if self.corrupt_integrity {
                msg.flip_last_bit();
            }
        }
        if self.fingerprint {
            msg.fingerprint();
        }
        msg.bytes()
    }
}

/// Appends one TLV (zero-padded) to a finished message and fixes the header's length field
/// (e.g. an attribute after MESSAGE-INTEGRITY, which a sender never writes).
pub fn append_raw(bytes: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let mut message = Encoder::resume(std::mem::take(bytes));
    message.tlv(kind, value);
    *bytes = message.bytes();
}

/// The (type, value) TLVs of a well-framed STUN message, in order.
pub fn raw_attributes(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 20;
    while at + 4 <= bytes.len() {
        let kind = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        let value = bytes[at + 4..at + 4 + len].to_vec();
        out.push((kind, value));
        at += 4 + len.next_multiple_of(4);
    }
    assert_eq!(at, bytes.len(), "TLVs do not fill the message");
    out
}

/// A decoded answer of the server.
#[derive(Debug, Clone)]
pub struct Response {
    pub bytes: Vec<u8>,
    pub message: Message<Attribute>,
}

impl Response {
    pub fn decode(bytes: &[u8]) -> Self {
        let length = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        assert_eq!(20 + length, bytes.len(), "length field");
        assert_eq!(bytes[4..8], [0x21, 0x12, 0xA4, 0x42], "magic cookie");
        let message = MessageDecoder::<Attribute>::new()
            .decode_from_bytes(bytes)
            .expect("response decodes")
            .expect("response attributes decode");
        Response {
            bytes: bytes.to_vec(),
            message,
        }
    }

    pub fn class(&self) -> MessageClass {
        self.message.class()
    }

    pub fn transaction_id(&self) -> [u8; 12] {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.bytes[8..20]);
        id
    }

    pub fn get<T>(&self) -> Option<&T>
    where
        T: stun_codec::Attribute,
        Attribute: stun_codec::convert::TryAsRef<T>,
    {
        self.message.get_attribute::<T>()
    }

    /// Every attribute type on the wire, in order.
    pub fn types(&self) -> Vec<u16> {
        raw_attributes(&self.bytes)
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    pub fn error_code(&self) -> Option<u16> {
        self.get::<ErrorCode>().map(|e| e.code())
    }

    pub fn unknown_attributes(&self) -> Vec<u16> {
        self.get::<UnknownAttributes>()
            .map(|u| u.unknowns().iter().map(|t| t.as_u16()).collect())
            .unwrap_or_default()
    }

    pub fn nonce(&self) -> String {
        self.get::<Nonce>().expect("NONCE").value().to_owned()
    }

    pub fn realm(&self) -> String {
        self.get::<Realm>().expect("REALM").text().to_owned()
    }

    pub fn has_integrity(&self) -> bool {
        self.types().contains(&types::MESSAGE_INTEGRITY)
    }

    /// MESSAGE-INTEGRITY present and valid under `key` (recomputed by the tests' encoder).
    pub fn integrity_valid(&self, key: &[u8; 16]) -> bool {
        enc::integrity_valid(&self.bytes, key)
    }

    /// FINGERPRINT present (and then it must be valid and last).
    pub fn has_fingerprint(&self) -> bool {
        match enc::fingerprint_valid(&self.bytes) {
            Some(valid) => {
                assert!(valid, "FINGERPRINT of the response is wrong or not last");
                true
            }
            None => false,
        }
    }
}
