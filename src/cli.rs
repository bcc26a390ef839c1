//! Command-line flags (each also an environment variable) and their validation into the
//! core's `Config`. Invalid input is a clear message and a non-zero exit, never a panic.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use clap::Parser;

use crate::core::{Config, Lifetimes, RelayAddress};
use crate::driver::interfaces;

pub const DEFAULT_REALM: &str = "relay";

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
        default_value = "0.0.0.0:3478"
    )]
    pub listen_addr: Vec<SocketAddr>,

    /// Public IPv4 address announced in XOR-RELAYED-ADDRESS [default: the IPv4 listen
    /// address if not unspecified, else the host's first non-loopback IPv4 address].
    #[arg(long, env = "RELAY_PUBLIC_IP4_ADDR", value_name = "IP")]
    pub public_ip4_addr: Option<Ipv4Addr>,

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
}

pub fn settings(args: Args, random_secret: impl FnOnce() -> String) -> Result<Settings, String> {
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
    let relay_v4 = relay_address_v4(&args.listen_addr, args.public_ip4_addr)?;
    let config = Config {
        listeners: args.listen_addr,
        realm: args.realm,
        auth_secrets: vec![secret.into_bytes()],
        relay_v4,
        relay_v6: None,
        ports: args.lowest_port..=args.highest_port,
        allow_loopback_peers: args.allow_loopback_peers,
        lifetimes: Lifetimes::default(),
    };
    Ok(Settings {
        config,
        generated_secret,
    })
}

/// Relay sockets bind where the IPv4 listener does; the announced address is the public one
/// if given, else the listen address, else the host's own address.
fn relay_address_v4(
    listen: &[SocketAddr],
    public: Option<Ipv4Addr>,
) -> Result<Option<RelayAddress>, String> {
    let Some(listener) = listen.iter().find(|a| a.is_ipv4()) else {
        return Ok(None);
    };
    let bind = listener.ip();
    let public = match public {
        Some(ip) => IpAddr::V4(ip),
        None if !bind.is_unspecified() => bind,
        None => interfaces::default_address(false).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    };
    Ok(Some(RelayAddress { bind, public }))
}
