//! The one table from a request's failure to its STUN error code, reason phrase and the
//! attributes that code requires.

use std::net::SocketAddr;
use stun_codec::AttributeType;

use stun_codec::rfc5389::attributes::{
    AlternateServer, ErrorCode, Nonce, Realm, UnknownAttributes,
};

use super::allocations::Refusal;
use super::wire::Attribute;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// Draining: allocate on this other server instead (RFC 8489 §10).
    TryAlternate {
        server: SocketAddr,
    },
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

/// A row of the error table: the STUN error code and its reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ErrorRow {
    pub code: u16,
    pub reason: &'static str,
}

/// What an error response carries besides ERROR-CODE.
enum Extra<'a> {
    None,
    /// REALM and a fresh NONCE (401, 438; RFC 8489 §9.2.4).
    RealmAndNonce(&'a str),
    /// ALTERNATE-SERVER (300; RFC 8489 §10).
    AlternateServer(SocketAddr),
    /// UNKNOWN-ATTRIBUTES (420; RFC 8489 §14.9).
    UnknownAttributes(&'a [u16]),
}

const fn row(code: u16, reason: &'static str) -> ErrorRow {
    ErrorRow { code, reason }
}

/// The error table, by code: every code a request's failure can be answered with.
pub(super) const ERROR_TABLE: [ErrorRow; 13] = [
    row(300, "Try Alternate"),
    row(400, "Bad Request"),
    // Empty: the 401 is the first answer every client gets, unauthenticated, and must
    // stay within 3x the smallest Allocate (see `admission`); the code says it all.
    row(401, ""),
    row(403, "Forbidden"),
    row(420, "Unknown Attribute"),
    row(437, "Allocation Mismatch"),
    row(438, "Stale Nonce"),
    row(440, "Address Family not Supported"),
    row(441, "Wrong Credentials"),
    row(442, "Unsupported Transport Protocol"),
    row(443, "Peer Address Family Mismatch"),
    row(486, "Allocation Quota Reached"),
    row(508, "Insufficient Capacity"),
];

impl Failure {
    /// The one place that says, for each failure, its row of the table and its extras.
    fn parts(&self) -> (ErrorRow, Extra<'_>) {
        let [
            try_alternate,
            bad_request,
            unauthorized,
            forbidden,
            unknown_attribute,
            allocation_mismatch,
            stale_nonce,
            family_not_supported,
            wrong_credentials,
            unsupported_transport,
            peer_family_mismatch,
            quota_reached,
            insufficient_capacity,
        ] = ERROR_TABLE;
        match self {
            Failure::TryAlternate { server } => (try_alternate, Extra::AlternateServer(*server)),
            Failure::BadRequest => (bad_request, Extra::None),
            Failure::Unauthorized { nonce } => (unauthorized, Extra::RealmAndNonce(nonce)),
            Failure::Forbidden => (forbidden, Extra::None),
            Failure::UnknownAttributes(types) => {
                (unknown_attribute, Extra::UnknownAttributes(types))
            }
            Failure::AllocationMismatch => (allocation_mismatch, Extra::None),
            Failure::StaleNonce { nonce } => (stale_nonce, Extra::RealmAndNonce(nonce)),
            Failure::AddressFamilyNotSupported => (family_not_supported, Extra::None),
            Failure::WrongCredentials => (wrong_credentials, Extra::None),
            Failure::UnsupportedTransport => (unsupported_transport, Extra::None),
            Failure::PeerAddressFamilyMismatch => (peer_family_mismatch, Extra::None),
            Failure::AllocationQuotaReached => (quota_reached, Extra::None),
            Failure::InsufficientCapacity => (insufficient_capacity, Extra::None),
        }
    }

    pub(super) fn code(&self) -> u16 {
        self.parts().0.code
    }

    /// ERROR-CODE plus what the code requires (REALM+NONCE, UNKNOWN-ATTRIBUTES).
    pub(super) fn attributes(&self, realm: &str) -> Vec<Attribute> {
        let (row, extra) = self.parts();
        let mut attributes = Vec::with_capacity(3);
        if let Ok(code) = ErrorCode::new(row.code, row.reason.to_owned()) {
            attributes.push(Attribute::ErrorCode(code));
        }
        match extra {
            Extra::None => {}
            Extra::RealmAndNonce(nonce) => {
                if let Ok(realm) = Realm::new(realm.to_owned()) {
                    attributes.push(Attribute::Realm(realm));
                }
                if let Ok(nonce) = Nonce::new(nonce.to_owned()) {
                    attributes.push(Attribute::Nonce(nonce));
                }
            }
            Extra::AlternateServer(server) => {
                attributes.push(Attribute::AlternateServer(AlternateServer::new(server)));
            }
            Extra::UnknownAttributes(types) => {
                let types = types.iter().map(|t| AttributeType::new(*t)).collect();
                attributes.push(Attribute::UnknownAttributes(UnknownAttributes::new(types)));
            }
        }
        attributes
    }
}

/// Every code a response can carry: 200 for success, then the error table's.
pub(super) const fn response_codes() -> [u16; ERROR_TABLE.len() + 1] {
    let mut codes = [200; ERROR_TABLE.len() + 1];
    let mut i = 0;
    while i < ERROR_TABLE.len() {
        codes[i + 1] = ERROR_TABLE[i].code;
        i += 1;
    }
    codes
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_by_code_and_the_metrics_codes_follow_it() {
        assert!(ERROR_TABLE.windows(2).all(|w| w[0].code < w[1].code));
        assert_eq!(
            response_codes(),
            [
                200, 300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 508
            ]
        );
        let nonce = String::from("n");
        let failures = [
            Failure::TryAlternate {
                server: "192.0.2.1:3478".parse().unwrap(),
            },
            Failure::BadRequest,
            Failure::Unauthorized {
                nonce: nonce.clone(),
            },
            Failure::Forbidden,
            Failure::UnknownAttributes(vec![0x7777]),
            Failure::AllocationMismatch,
            Failure::StaleNonce { nonce },
            Failure::AddressFamilyNotSupported,
            Failure::WrongCredentials,
            Failure::UnsupportedTransport,
            Failure::PeerAddressFamilyMismatch,
            Failure::AllocationQuotaReached,
            Failure::InsufficientCapacity,
        ];
        let codes: Vec<u16> = failures.iter().map(Failure::code).collect();
        let table: Vec<u16> = ERROR_TABLE.iter().map(|row| row.code).collect();
        assert_eq!(codes, table, "one row per failure, in the table's order");
    }
}
