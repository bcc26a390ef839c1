//! relay: a STUN/TURN relay server (RFC 8489, RFC 8656) on one synchronous mio loop.
//! `core` decides, `driver` does the I/O, `cli` turns flags into a `core::Config`.

// The library's rules (Cargo.toml's [lints] holds those shared with the tests): unsafe code
// only in the driver modules that call libc, each with its own `allow`; no clock or OS
// randomness (clippy.toml); no unwrap, expect or printing outside unit tests.
#![deny(unsafe_code)]
// Unit tests (cfg(test)) may read the clock for a time origin.
#![cfg_attr(not(test), deny(clippy::disallowed_methods, clippy::disallowed_types))]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![deny(clippy::print_stdout, clippy::print_stderr, clippy::exit)]

pub mod cli;
pub mod core;
pub mod driver;
pub mod logging;
pub mod portal;
