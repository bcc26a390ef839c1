//! Authentication and admission: TURN REST credentials, stateless nonces, the check of a
//! request's MESSAGE-INTEGRITY (RFC 8489 §9.2.4), and the byte credit that bounds answers to
//! unauthenticated requests. Holds no allocation state.

pub(super) mod admission;
pub(crate) mod authenticate;
pub mod credentials;
pub(super) mod nonce;
