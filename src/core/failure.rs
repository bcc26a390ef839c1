//! The one table from a request's failure to its STUN error code, reason phrase and the
//! attributes that code requires.

use stun_codec::AttributeType;
use stun_codec::rfc5389::attributes::{ErrorCode, Nonce, Realm, UnknownAttributes};

use super::allocations::Refusal;
use super::wire::Attribute;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    BadRequest,
    /// No or wrong credentials; carries a fresh nonce for the retry.
    Unauthorized {
        nonce: String,
    },
    Forbidden,
    UnknownAttributes(Vec<u16>),
    AllocationMismatch,
    StaleNonce {
        nonce: String,
    },
    AddressFamilyNotSupported,
    WrongCredentials,
    UnsupportedTransport,
    PeerAddressFamilyMismatch,
    AllocationQuotaReached,
    InsufficientCapacity,
}

impl Failure {
    pub fn code(&self) -> u16 {
        match self {
            Failure::BadRequest => 400,
            Failure::Unauthorized { .. } => 401,
            Failure::Forbidden => 403,
            Failure::UnknownAttributes(_) => 420,
            Failure::AllocationMismatch => 437,
            Failure::StaleNonce { .. } => 438,
            Failure::AddressFamilyNotSupported => 440,
            Failure::WrongCredentials => 441,
            Failure::UnsupportedTransport => 442,
            Failure::PeerAddressFamilyMismatch => 443,
            Failure::AllocationQuotaReached => 486,
            Failure::InsufficientCapacity => 508,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Failure::BadRequest => "Bad Request",
            // Empty: the 401 is the first answer every client gets, unauthenticated, and must
            // stay within 3x the smallest Allocate (see `admission`); the code says it all.
            Failure::Unauthorized { .. } => "",
            Failure::Forbidden => "Forbidden",
            Failure::UnknownAttributes(_) => "Unknown Attribute",
            Failure::AllocationMismatch => "Allocation Mismatch",
            Failure::StaleNonce { .. } => "Stale Nonce",
            Failure::AddressFamilyNotSupported => "Address Family not Supported",
            Failure::WrongCredentials => "Wrong Credentials",
            Failure::UnsupportedTransport => "Unsupported Transport Protocol",
            Failure::PeerAddressFamilyMismatch => "Peer Address Family Mismatch",
            Failure::AllocationQuotaReached => "Allocation Quota Reached",
            Failure::InsufficientCapacity => "Insufficient Capacity",
        }
    }

    /// ERROR-CODE plus what the code requires (REALM+NONCE, UNKNOWN-ATTRIBUTES).
    pub fn attributes(&self, realm: &str) -> Vec<Attribute> {
        let mut attributes = Vec::with_capacity(3);
        if let Ok(code) = ErrorCode::new(self.code(), self.reason().to_owned()) {
            attributes.push(Attribute::ErrorCode(code));
        }
        match self {
            Failure::Unauthorized { nonce } | Failure::StaleNonce { nonce } => {
                if let Ok(realm) = Realm::new(realm.to_owned()) {
                    attributes.push(Attribute::Realm(realm));
                }
                if let Ok(nonce) = Nonce::new(nonce.clone()) {
                    attributes.push(Attribute::Nonce(nonce));
                }
            }
            Failure::UnknownAttributes(types) => {
                let types = types.iter().map(|t| AttributeType::new(*t)).collect();
                attributes.push(Attribute::UnknownAttributes(UnknownAttributes::new(types)));
            }
            _ => {}
        }
        attributes
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Quota => Failure::AllocationQuotaReached,
            Refusal::Capacity => Failure::InsufficientCapacity,
            Refusal::WrongFamily => Failure::BadRequest,
        }
    }
}
