//! Command-line flags (each also an environment variable) and their validation into the
//! core's `Config`. Invalid input is a clear message and a non-zero exit, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use clap::Parser;

use crate::core::{Config, Lifetimes, RelayAddress};
use crate::driver::interfaces;

pub const DEFAULT_REALM: &str = "relay";
/// Dual-stack by default; IPv6 sockets are IPV6_V6ONLY so both can bind port 3478.
pub const DEFAULT_LISTEN: [&str; 2] = ["0.0.0.0:3478", "[::]:3478"];

#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    about = "A STUN/TURN relay server (RFC 8489, RFC 8656) on one mio loop."
)]
pub struct Args {
    /// Address to listen on for STUN/TURN over UDP (repeatable).
    #[arg(
        long = "listen-addr",
        env = "RELAY_LISTEN_ADDR",
        value_name = "ADDR:PORT",
        value_delimiter = ',',
        default_values = DEFAULT_LISTEN
    )]
    pub listen_addr: Vec<SocketAddr>,

    /// Public IPv4 address announced in XOR-RELAYED-ADDRESS [default: the IPv4 listen
    /// address if not unspecified, else the host's first non-loopback IPv4 address].
    #[arg(long, env = "RELAY_PUBLIC_IP4_ADDR", value_name = "IP")]
    pub public_ip4_addr: Option<Ipv4Addr>,

    /// Public IPv6 address announced in XOR-RELAYED-ADDRESS [default: the IPv6 listen
    /// address if not unspecified, else the host's first global IPv6 address; with none,
    /// IPv6 allocations get 440].
    #[arg(long, env = "RELAY_PUBLIC_IP6_ADDR", value_name = "IP")]
    pub public_ip6_addr: Option<Ipv6Addr>,

    /// Lowest relay port.
    #[arg(
        long,
        env = "RELAY_LOWEST_PORT",
        value_name = "N",
        default_value_t = 49152
    )]
    pub lowest_port: u16,

    /// Highest relay port.
    #[arg(
        long,
        env = "RELAY_HIGHEST_PORT",
        value_name = "N",
        default_value_t = 65535
    )]
    pub highest_port: u16,

    /// Realm for long-term credentials.
    #[arg(long, env = "RELAY_REALM", value_name = "REALM", default_value = DEFAULT_REALM)]
    pub realm: String,

    /// TURN REST API shared secret [default: a random secret for this run, logged with a
    /// ready-to-use username/password].
    #[arg(
        long,
        env = "RELAY_AUTH_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub auth_secret: Option<String>,

    /// Allow peers on loopback addresses (for tests; otherwise they get 403).
    #[arg(long, env = "RELAY_ALLOW_LOOPBACK_PEERS")]
    pub allow_loopback_peers: bool,
}

/// A configuration ready to run, plus what start-up should tell the operator.
pub struct Settings {
    pub config: Config,
    /// Set when the secret was generated for this run: log a username/password.
    pub generated_secret: Option<String>,
    /// Decisions start-up should log (defaults that had to change).
    pub notes: Vec<String>,
}

pub fn settings(
    mut args: Args,
    random_secret: impl FnOnce() -> String,
) -> Result<Settings, String> {
    let mut notes = Vec::new();
    if is_default_listen(&args.listen_addr) && !ipv6_available() {
        args.listen_addr.retain(|a| a.is_ipv4());
        notes.push("IPv6 is not available on this host: listening on IPv4 only".to_owned());
    }
    if args.listen_addr.is_empty() {
        return Err("--listen-addr: at least one address is required".into());
    }
    if args.lowest_port == 0 || args.lowest_port > args.highest_port {
        return Err(format!(
            "--lowest-port {} / --highest-port {}: need 1 <= lowest <= highest",
            args.lowest_port, args.highest_port
        ));
    }
    if args.realm.is_empty() || args.realm.chars().count() >= 128 || args.realm.contains('"') {
        return Err("--realm: must be 1 to 127 characters, without '\"'".into());
    }
    let (secret, generated_secret) = match args.auth_secret {
        Some(secret) if secret.is_empty() => return Err("--auth-secret: must not be empty".into()),
        Some(secret) => (secret, None),
        None => {
            let secret = random_secret();
            (secret.clone(), Some(secret))
        }
    };
    let relay_v4 = relay_address(
        &args.listen_addr,
        false,
        args.public_ip4_addr.map(IpAddr::V4),
        &mut notes,
    );
    let relay_v6 = relay_address(
        &args.listen_addr,
        true,
        args.public_ip6_addr.map(IpAddr::V6),
        &mut notes,
    );
    if relay_v4.is_none() && relay_v6.is_none() {
        return Err("--listen-addr: no address to relay from".into());
    }
    let config = Config {
        listeners: args.listen_addr,
        realm: args.realm,
        auth_secrets: vec![secret.into_bytes()],
        relay_v4,
        relay_v6,
        ports: args.lowest_port..=args.highest_port,
        allow_loopback_peers: args.allow_loopback_peers,
        lifetimes: Lifetimes::default(),
    };
    Ok(Settings {
        config,
        generated_secret,
        notes,
    })
}

/// Relay sockets of a family bind where that family's first listener does; the announced
/// address is the public one if given, else the listen address, else the host's own
/// address. IPv4 falls back to loopback so a local test works out of the box; IPv6 without
/// any address is simply not relayed (440).
fn relay_address(
    listen: &[SocketAddr],
    ipv6: bool,
    public: Option<IpAddr>,
    notes: &mut Vec<String>,
) -> Option<RelayAddress> {
    let bind = listen.iter().find(|a| a.is_ipv6() == ipv6)?.ip();
    let public = match public {
        Some(ip) => ip,
        None if !bind.is_unspecified() => bind,
        None => match interfaces::default_address(ipv6) {
            Some(ip) => ip,
            None if ipv6 => {
                notes.push("no global IPv6 address found: IPv6 allocations get 440 (set --public-ip6-addr)".into());
                return None;
            }
            None => {
                notes.push("no non-loopback IPv4 address found: relaying from 127.0.0.1 (set --public-ip4-addr)".into());
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            }
        },
    };
    Some(RelayAddress { bind, public })
}

fn is_default_listen(listen: &[SocketAddr]) -> bool {
    let default: Vec<SocketAddr> = DEFAULT_LISTEN
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    listen == default.as_slice()
}

/// Whether this host can open IPv6 sockets at all (some containers disable IPv6).
fn ipv6_available() -> bool {
    std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}
