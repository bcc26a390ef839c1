//! The sans-IO core: pure state machines, datagrams and time in, decisions out.
//! It never reads a clock, the OS random source or a socket.

mod admission;
mod allocation;
mod allocation_table;
mod auth;
pub mod cidr;
pub mod config;
pub mod counters;
pub mod credentials;
mod errors;
mod framing;
mod hasher;
pub mod ids;
pub mod integrity;
mod invariants;
pub mod message;
pub mod own_sockets;
mod policy;
mod ports;
mod requests;
mod rng;
mod server;
pub mod stream_framing;
mod timer;

pub use cidr::{Cidr, CidrError};
pub use config::{Config, Lifetimes, RelayAddress};
pub use counters::{Counters, Gauges};
pub use ids::{AllocationId, Family, ListenerId, Now, RelayId};
pub use invariants::Footprint;
pub use own_sockets::OwnSockets;
pub use policy::{PeerPolicy, PeerUse};
pub use server::{Deliver, Forward, HEADROOM, OpenError, Output, Server, TAILROOM};
