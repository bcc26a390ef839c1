//! The sans-IO core: pure state machines, datagrams and time in, decisions out.
//! It never reads a clock, the OS random source or a socket.

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
