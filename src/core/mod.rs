//! The sans-IO core: pure state machines, datagrams and time in, decisions out.
//! It never reads a clock, the OS random source or a socket.
//!
//! # The contract
//!
//! A [`Server`] is a TURN server (RFC 8489, RFC 8656) without I/O. Whoever drives it (the
//! mio loop in `driver`, the tests' fake drivers, the fuzz harness) owns the sockets and
//! the clock, feeds it what happened and carries out what it asks. The core decides; the
//! driver decides nothing.
//!
//! **Inputs**, each taking `now` first:
//! - [`Server::handle_client_datagram`]: a datagram from a client on a listen socket.
//! - [`Server::handle_peer_datagram`]: a datagram from a peer on an allocation's relay
//!   socket, received behind [`HEADROOM`] bytes so the core can frame it in place.
//! - [`Server::handle_relay_opened`]: the result of an [`Output::OpenRelay`] the core asked
//!   for. Fallible I/O is a request and a completion, never a call the core makes.
//! - [`Server::handle_timeout`]: the deadline given by `poll_timeout` has passed. Early,
//!   late or repeated calls are harmless: deadlines are hints, the state is the truth.
//!
//! **Outputs**:
//! - The data path answers by return value: a [`Forward`] (send this slice of the client's
//!   datagram from that relay socket to that peer) or a [`Deliver`] (send this slice of the
//!   peer datagram's buffer to that client). No queue, no allocation.
//! - Everything else is queued: [`Server::poll_output`] yields [`Output`]s (responses,
//!   relay sockets to open or close) in the order they must be carried out.
//! - [`Server::poll_timeout`]: when to call `handle_timeout` next (`None`: nothing pending).
//! - [`Server::poll_usage_record`]: the [`UsageRecord`] of each allocation that ended, for
//!   the driver to log. A queue of its own: it asks the driver to do nothing, and it is
//!   drained like the outputs, after every input.
//!
//! **Drain all outputs before the next input.** After every `handle_*` call the driver
//! calls `poll_output` until it returns `None`, and asks `poll_timeout` last: each input
//! may queue outputs and move the next deadline, and carrying them out in order before
//! feeding more keeps what the driver does in step with the state the core is in.
//!
//! **Time and randomness are arguments.** `now` ([`Now`]: a monotonic `Instant` for
//! lifetimes plus Unix seconds for credential and nonce expiry) comes with every input, and
//! [`Server::new`] takes a 32-byte seed from which every random choice (relay ports,
//! nonce keys, Data indication transaction IDs, hash keys) is derived. Given the same seed
//! and the same inputs at the same times, the core produces the same outputs: that is what
//! makes it testable with virtual time and fuzzable. `clippy.toml` forbids clock reads and
//! std's randomly seeded hash maps in the library.
//!
//! This is the shape of quinn-proto's `Connection` and str0m's `Rtc`.
//!
//! # Its parts
//!
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
//!   error table), `config`, `counters`, `ids`, `usage` (the record of an allocation that
//!   ended), and the seeded `rng` and `hasher`.

#![forbid(unsafe_code)]

mod allocations;
mod auth;
pub mod availability;
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
pub mod usage;
pub mod wire;

// The paths tests, fuzzers and tools have always used.
pub use auth::credentials;
pub use policy::{cidr, own_sockets};
pub use wire as message;
pub use wire::integrity;

pub use allocations::Footprint;
#[doc(hidden)] // for the timer-wheel bench (contrib/bench/src/bin/timer_wheel.rs) only
pub use allocations::timer_wheel::{Due, TimerHandle, Timers};
pub use auth::credentials::AuthScheme;
pub use availability::Availability;
pub use client::{ClientKey, Transport};
pub use config::{BandwidthLimits, Config, Lifetimes, RelayAddress};
pub use counters::{Counters, Gauges};
pub use ids::{AllocationId, ConnectionId, Family, ListenerId, RelayId};
pub use policy::cidr::{Cidr, CidrError};
pub use policy::own_sockets::OwnSockets;
pub use policy::{PeerPolicy, PeerUse};
pub use server::{Deliver, Forward, HEADROOM, OpenError, Output, Server, TAILROOM};
pub use time::Now;
pub use usage::{EndReason, Traffic, Usage, UsageRecord};
