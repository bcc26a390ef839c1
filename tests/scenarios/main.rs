//! Deterministic scenario tests of the sans-IO core, one file per RFC section: the one fake
//! driver (`tests/support/fake_driver.rs`), virtual time, fixed seeds, requests written by
//! the tests' own encoder. Every test asserts the complete, ordered list of outputs after
//! each input, and the driver fails on leftovers (DESIGN convention 8). One test binary.

#[path = "../support/fake_driver.rs"]
pub mod fake_driver;
#[path = "../support/firezone_credentials.rs"]
mod firezone_credentials;
#[path = "../support/sha256.rs"]
mod sha256;
#[path = "../support/stun_client.rs"]
pub mod stun_client;
#[path = "../support/stun_encoder.rs"]
pub mod stun_encoder;

mod harness;

mod allocate;
mod auth;
mod availability;
mod bandwidth;
mod binding;
mod channels;
mod even_port;
mod firezone;
mod known_answers;
mod malformed;
mod permissions;
mod quotas;
mod reconfigure;
mod refresh;
mod relay_ports;
mod software;
mod stream;
mod unproven_source;
mod usage;
