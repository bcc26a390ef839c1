//! The sans-IO core: pure state machines, datagrams and time in, decisions out.
//! It never reads a clock, the OS random source or a socket.
//!
//! Its parts:
//! - `wire`: classifying a datagram, decoding and encoding STUN, MESSAGE-INTEGRITY and
//!   FINGERPRINT, the frames written around a peer's payload. No state.
//! - `auth`: REST credentials, stateless nonces, the MESSAGE-INTEGRITY check, the admission
//!   of unauthenticated answers. No allocations.
//! - `allocations`: the one owner of what allocations hold (slots, client index, quotas,
//!   ports, reservations, the timer wheel). No outputs.
//! - `policy`: which peers a client may reach. No I/O.
//! - `server` (with `requests/`, one file per method): dispatch, the output queue, the
//!   public API (`Server`).
//! - `client` (who a client is: transport and address), `time` (`Now`), `failure` (the
//!   error table), `config`, `counters`, `ids`, and the seeded `rng` and `hasher`.

mod allocations;
mod auth;
pub mod client;
pub mod config;
pub mod counters;
mod failure;
mod hasher;
pub mod ids;
mod policy;
mod rng;
mod server;
pub mod time;
pub mod wire;

// The paths tests, fuzzers and tools have always used.
pub use auth::credentials;
pub use policy::{cidr, own_sockets};
pub use wire as message;
pub use wire::integrity;

pub use allocations::Footprint;
pub use client::{ClientKey, Transport};
pub use config::{Config, Lifetimes, RelayAddress};
pub use counters::{Counters, Gauges};
pub use ids::{AllocationId, Family, ListenerId, RelayId};
pub use policy::cidr::{Cidr, CidrError};
pub use policy::own_sockets::OwnSockets;
pub use policy::{PeerPolicy, PeerUse};
pub use server::{Deliver, Forward, HEADROOM, OpenError, Output, Server, TAILROOM};
pub use time::Now;
