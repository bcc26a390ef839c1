//! relay: a STUN/TURN relay server (RFC 8489, RFC 8656) on one synchronous mio loop.
//! `core` decides, `driver` does the I/O, `cli` turns flags into a `core::Config`.

pub mod cli;
pub mod core;
pub mod driver;
