//! What the core needs to know about its deployment, already validated by the CLI.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use super::auth::credentials::AuthScheme;
use super::ids::Family;
use super::policy::cidr::Cidr;

/// Where relay sockets of one family are bound, and the address clients are told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAddress {
    /// Bind address of relay sockets (the listen IP, or unspecified).
    pub bind: IpAddr,
    /// Address put in XOR-RELAYED-ADDRESS (differs from `bind` behind 1:1 NAT).
    pub public: IpAddr,
}

#[derive(Debug, Clone)]
/// The core's configuration, validated by the CLI.
pub struct Config {
    /// Listen sockets; a `ListenerId` is an index into this list.
    pub listeners: Vec<SocketAddr>,
    /// The REALM of every challenge and of the long-term key.
    pub realm: String,
    /// Shared secrets; credentials minted from any of them are accepted. In Firezone mode,
    /// the secret this run made and handed to the portal.
    pub auth_secrets: Vec<Vec<u8>>,
    /// How a secret and a username give the password.
    pub auth_scheme: AuthScheme,
    /// Relayed addresses per family; `None` means the relay cannot allocate that family.
    pub relay_v4: Option<RelayAddress>,
    /// Where IPv6 relay sockets are bound, if the relay has IPv6.
    pub relay_v6: Option<RelayAddress>,
    /// The relay ports (both families).
    pub ports: RangeInclusive<u16>,
    /// Allow loopback peers (for tests on one host).
    pub allow_loopback_peers: bool,
    /// Operator overrides of the peer-address policy (`--allow-peer`, `--deny-peer`).
    pub allow_peers: Vec<Cidr>,
    /// Operator prefixes peers may not be in (`--deny-peer`).
    pub deny_peers: Vec<Cidr>,
    /// RFC 8656 lifetimes.
    pub lifetimes: Lifetimes,
    /// Live allocations one user may hold (486 beyond). The user is the `<id>` part of a
    /// REST API username, or the whole username without one.
    pub max_allocations_per_user: usize,
    /// Live allocations in total (508 beyond).
    pub max_allocations: usize,
    /// The metrics server's bound address: never a peer (see `own_sockets`).
    pub metrics_addr: Option<SocketAddr>,
    /// The host's interface addresses: where a socket bound to an unspecified address is
    /// reached, so that none of them lets the relay be its own peer or client.
    pub host_addresses: Vec<IpAddr>,
    /// An Allocate without REQUESTED-ADDRESS-FAMILY gets the client's own family instead of
    /// IPv4 (RFC 8656 §7.2's default), when the relay has a relayed address of it.
    pub keep_client_family: bool,
    /// Judge a REST username's expiry on every request, so that the allocations made with it
    /// cannot be refreshed past it; by default it is judged when the allocation is created.
    pub strict_credential_expiry: bool,
    /// SOFTWARE (RFC 8489 §14.14) put in authenticated responses (`--software`); at most
    /// 127 characters, checked by the CLI.
    pub software: Option<String>,
    /// Relayed bits per second (payload, both directions together) per allocation, per
    /// user and in total; beyond them datagrams are dropped (`allocations/bandwidth.rs`).
    pub bandwidth: BandwidthLimits,
}

/// Bandwidth limits in bits per second of relayed payload; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BandwidthLimits {
    /// Per allocation (`--max-bps-per-allocation`).
    pub per_allocation: Option<u64>,
    /// Per user, all their allocations together (`--max-bps-per-user`).
    pub per_user: Option<u64>,
    /// For the whole relay (`--max-bps-total`).
    pub total: Option<u64>,
}

impl BandwidthLimits {
    /// Whether no level is limited: the data path then skips the buckets altogether.
    pub fn is_unlimited(&self) -> bool {
        self.per_allocation.is_none() && self.per_user.is_none() && self.total.is_none()
    }
}

impl Config {
    /// The relay address of `family`, if the relay has one.
    pub fn relay_address(&self, family: Family) -> Option<RelayAddress> {
        match family {
            Family::V4 => self.relay_v4,
            Family::V6 => self.relay_v6,
        }
    }
}

/// RFC 8656 lifetimes; configurable only so that tests and operators can shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// An allocation's lifetime when the request asks for less or nothing (600 s).
    pub allocation_default: Duration,
    /// The longest lifetime granted (3600 s).
    pub allocation_max: Duration,
    /// A permission's lifetime (300 s).
    pub permission: Duration,
    /// A channel binding's lifetime (600 s).
    pub channel: Duration,
    /// How long a channel number and its peer stay reserved after the binding expires.
    pub channel_hold: Duration,
    /// How long a nonce stays fresh, in seconds.
    pub nonce_secs: u64,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            allocation_default: Duration::from_secs(600),
            allocation_max: Duration::from_secs(3600),
            permission: Duration::from_secs(300),
            channel: Duration::from_secs(600),
            channel_hold: Duration::from_secs(300),
            nonce_secs: 600,
        }
    }
}

/// A starting point for tests and tools: no listeners, no secrets, no relay addresses,
/// RFC lifetimes, the default quotas. Real configurations come from the CLI.
impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: Vec::new(),
            realm: "relay".into(),
            auth_secrets: Vec::new(),
            auth_scheme: AuthScheme::Rest,
            relay_v4: None,
            relay_v6: None,
            ports: 49152..=65535,
            allow_loopback_peers: false,
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            lifetimes: Lifetimes::default(),
            max_allocations_per_user: 10,
            max_allocations: 16384,
            metrics_addr: None,
            host_addresses: Vec::new(),
            keep_client_family: false,
            strict_credential_expiry: false,
            software: None,
            bandwidth: BandwidthLimits::default(),
        }
    }
}
