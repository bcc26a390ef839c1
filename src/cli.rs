//! Command-line flags (each also an environment variable) and their validation into the
//! core's `Config`. Invalid input is a clear message and a non-zero exit, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

mod bandwidth;
pub use bandwidth::{BandwidthArgs, parse_bits_per_second};

use crate::core::credentials::rest_api_password;
use crate::core::{AuthScheme, Cidr, Config, Lifetimes, RelayAddress};
use crate::driver::interfaces;
use crate::logging::LogFormat;

pub mod config_file;

mod portal;
pub use portal::PortalSettings;

/// The realm used when `--realm` is not given.
pub const DEFAULT_REALM: &str = "relay";
/// SOFTWARE is "fewer than 128 characters" (RFC 8489 §14.14; at most 509 bytes of UTF-8).
pub const MAX_SOFTWARE_CHARS: usize = 127;
/// The realm of Firezone's credentials (its clients compute their key with it).
pub const FIREZONE_REALM: &str = "firezone";
/// The longest deadline a flag may set (a year): a time that far ahead is still an
/// `Instant` (found by review: --drain-seconds or --allocate-deadline near u64::MAX
/// panicked on the first SIGTERM or TCP connection, adding it to now).
pub const MAX_DEADLINE_SECS: u64 = 365 * 24 * 3600;
/// Where Firezone's relays find the portal.
pub const DEFAULT_PORTAL_WS_URL: &str = "wss://api.firezone.dev";

/// `--auth-scheme`: how credentials are minted from the secret.
// The variants have no doc comments: clap would list them in a long `--help` layout, which
// puts each flag's `[env: …]` on a line of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[allow(missing_docs)]
pub enum AuthSchemeArg {
    // TURN REST API: `<expiry>[:<id>]`, base64(HMAC-SHA1(secret, username)).
    Rest,
    // Firezone's: `<expiry>:<salt>`, base64(SHA-256("<expiry>:<secret>:<salt>")).
    Firezone,
}
/// Dual-stack by default; IPv6 sockets are IPV6_V6ONLY so both can bind port 3478.
pub const DEFAULT_LISTEN: [&str; 2] = ["0.0.0.0:3478", "[::]:3478"];

#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    about = "A STUN/TURN relay server (RFC 8489, RFC 8656) on one mio loop."
)]
// The command line: every flag, each with an environment variable. (Not a doc comment:
// clap would make it the help text.)
#[allow(missing_docs)]
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

    /// Realm for long-term credentials [default: relay; firezone with --auth-scheme firezone].
    #[arg(long, env = "RELAY_REALM", value_name = "REALM")]
    pub realm: Option<String>,

    /// How credentials are minted from the secret [default: rest; firezone with --portal-token].
    #[arg(long, env = "RELAY_AUTH_SCHEME", value_name = "SCHEME")]
    pub auth_scheme: Option<AuthSchemeArg>,

    /// Firezone mode: the relay token from the portal. The relay connects to the portal,
    /// hands it a secret made for this run, and takes allocations once the portal sends
    /// `init` [default: standalone].
    #[arg(
        long,
        env = "PORTAL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub portal_token: Option<String>,

    /// The portal's WebSocket base URL (ws:// or wss://); the relay opens
    /// URL/relay/websocket.
    #[arg(long, env = "PORTAL_WS_URL", value_name = "URL", default_value = DEFAULT_PORTAL_WS_URL)]
    pub portal_ws_url: String,

    /// PEM file of the CA certificates that verify a wss:// portal [default: the system's
    /// CA bundle].
    #[arg(long, env = "RELAY_PORTAL_CA_FILE", value_name = "PATH")]
    pub portal_ca_file: Option<PathBuf>,

    /// For tests only (hidden): portal heartbeats every MS milliseconds (30 s otherwise).
    #[arg(
        long,
        env = "RELAY_TEST_PORTAL_HEARTBEAT_MS",
        value_name = "MS",
        hide = true
    )]
    pub test_portal_heartbeat_ms: Option<u64>,

    /// For tests only (hidden): the first reconnection delay in milliseconds (1 s
    /// otherwise; the cap is 4 times it instead of 60 s).
    #[arg(
        long,
        env = "RELAY_TEST_PORTAL_BACKOFF_MS",
        value_name = "MS",
        hide = true
    )]
    pub test_portal_backoff_ms: Option<u64>,

    /// TURN REST API shared secret; repeat it to accept credentials minted from any of
    /// several secrets while rotating [default: a random secret for this run, logged with a
    /// ready-to-use username/password].
    #[arg(
        long,
        env = "RELAY_AUTH_SECRET",
        value_name = "SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_secret: Vec<String>,

    /// Allow peers on loopback addresses (for tests; otherwise they get 403).
    #[arg(long, env = "RELAY_ALLOW_LOOPBACK_PEERS")]
    pub allow_loopback_peers: bool,

    /// Allow peers in this prefix (e.g. 10.1.0.0/16, or a bare address), overriding the
    /// built-in denial of special-purpose ranges; the most specific prefix wins (repeatable).
    #[arg(
        long = "allow-peer",
        env = "RELAY_ALLOW_PEER",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub allow_peer: Vec<Cidr>,

    /// Deny peers in this prefix (403); at equal prefix length deny beats allow (repeatable).
    #[arg(
        long = "deny-peer",
        env = "RELAY_DENY_PEER",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub deny_peer: Vec<Cidr>,

    /// Live allocations one user (the `<id>` of `<expiry>:<id>`) may hold; more get 486.
    #[arg(
        long,
        env = "RELAY_MAX_ALLOCATIONS_PER_USER",
        value_name = "N",
        default_value_t = 10
    )]
    pub max_allocations_per_user: usize,

    /// Live allocations in total; more get 508 [default: the number of relay ports].
    #[arg(long, env = "RELAY_MAX_ALLOCATIONS", value_name = "N")]
    pub max_allocations: Option<usize>,

    #[command(flatten)]
    pub bandwidth: BandwidthArgs,

    /// An Allocate without REQUESTED-ADDRESS-FAMILY gets a relayed address of the family the
    /// client came in on (IPv4 if the relay has no IPv6 one) instead of IPv4 (RFC 8656
    /// §7.2's default), so IPv6 clients that never ask (browsers) can reach IPv6-only peers.
    #[arg(long, env = "RELAY_KEEP_CLIENT_FAMILY")]
    pub keep_client_family: bool,

    /// Serve GET /metrics (Prometheus), GET /healthz and GET /livez on this TCP address [default: off].
    #[arg(long, env = "RELAY_METRICS_ADDR", value_name = "ADDR:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    /// Judge a REST username's expiry on every request: after it, requests get 401 and its
    /// allocations end when their last granted lifetime runs out [default: judged when the
    /// allocation is created; it lives on with that username].
    #[arg(long, env = "RELAY_STRICT_CREDENTIAL_EXPIRY")]
    pub strict_credential_expiry: bool,

    /// For tests only (hidden): allocations last SECS (their default and maximum lifetime),
    /// and permissions, channels and a channel's hold after expiry at most SECS, so that a
    /// soak test can watch abandoned allocations expire in seconds instead of minutes.
    #[arg(long, env = "RELAY_TEST_LIFETIME", value_name = "SECS", hide = true)]
    pub test_lifetime: Option<u64>,

    /// Serve no TURN over TCP on the listen addresses (TLS listen addresses still serve TLS
    /// and TCP) [default: TCP on every --listen-addr].
    #[arg(long, env = "RELAY_NO_TCP")]
    pub no_tcp: bool,

    /// Serve TURN over TLS (and over TCP, told apart by the first byte) on this address
    /// (repeatable) [default: 0.0.0.0:5349 and [::]:5349 when a certificate is set].
    // The comment is clap's --help text: `[::]` stays as operators write it, not a doc link.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(
        long = "tls-listen-addr",
        env = "RELAY_TLS_LISTEN_ADDR",
        value_name = "ADDR:PORT",
        value_delimiter = ','
    )]
    pub tls_listen_addr: Vec<SocketAddr>,

    /// PEM certificate chain for TLS (with --tls-key-file); reloaded on SIGHUP [default: no TLS].
    #[arg(long, env = "RELAY_TLS_CERT_FILE", value_name = "PATH")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of the certificate (with --tls-cert-file); reloaded on SIGHUP.
    #[arg(long, env = "RELAY_TLS_KEY_FILE", value_name = "PATH")]
    pub tls_key_file: Option<PathBuf>,

    /// TCP and TLS connections in total; more are closed at once.
    #[arg(
        long,
        env = "RELAY_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 10_000
    )]
    pub max_connections: usize,

    /// TCP and TLS connections from one IPv4 address or one IPv6 /64 (many clients may share
    /// one behind NAT).
    #[arg(
        long,
        env = "RELAY_MAX_CONNECTIONS_PER_IP",
        value_name = "N",
        default_value_t = 1_000
    )]
    pub max_connections_per_ip: usize,

    /// Log format: text (human-readable lines) or json (one object per line: time, level,
    /// target, message and the record's fields).
    #[arg(
        long,
        env = "RELAY_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,

    /// Put the client's address in each allocation's usage record [default: off, for the
    /// clients' privacy].
    #[arg(long, env = "RELAY_LOG_CLIENT_ADDRESSES")]
    pub log_client_addresses: bool,

    /// Put a SOFTWARE attribute with TEXT (at most 127 characters) in authenticated
    /// responses [default: none].
    #[arg(long, env = "RELAY_SOFTWARE", value_name = "TEXT")]
    pub software: Option<String>,

    /// TCP and TLS connections without an allocation yet; when reached, the oldest of them
    /// is closed for a new one.
    #[arg(
        long,
        env = "RELAY_MAX_PENDING_CONNECTIONS",
        value_name = "N",
        default_value_t = 2_000
    )]
    pub max_pending_connections: usize,

    /// Seconds a TCP or TLS connection may stay open without an allocation.
    #[arg(
        long,
        env = "RELAY_ALLOCATE_DEADLINE",
        value_name = "SECS",
        default_value_t = 10,
        alias = "test-connection-deadline"
    )]
    pub allocate_deadline: u64,

    #[arg(
        long,
        env = "RELAY_TEST_HANDSHAKE_DEADLINE",
        value_name = "SECS",
        hide = true
    )]
    pub test_handshake_deadline: Option<u64>,

    /// Read settings from this file of RELAY_X=value lines (the environment file's format),
    /// at start and again on SIGHUP; precedence: command line > file > environment.
    #[arg(long, env = "RELAY_CONFIG_FILE", value_name = "PATH")]
    pub config_file: Option<PathBuf>,

    /// Read TURN REST API secrets from this file, one per line, newest first (with any
    /// --auth-secret); re-read on SIGHUP.
    #[arg(long, env = "RELAY_AUTH_SECRET_FILE", value_name = "PATH")]
    pub auth_secret_file: Option<PathBuf>,

    /// Log level: off, error, warn, info, debug or trace (RUST_LOG can only narrow it per
    /// module); reloaded on SIGHUP.
    #[arg(
        long,
        env = "RELAY_LOG_LEVEL",
        value_name = "LEVEL",
        default_value = "info"
    )]
    pub log_level: log::LevelFilter,

    /// SIGTERM drains for up to SECS: no new allocations (/healthz 503), existing ones go on
    /// until they end, then exit 0 [default: 0, SIGTERM exits at once; SIGUSR1 always drains].
    #[arg(
        long,
        env = "RELAY_DRAIN_SECONDS",
        value_name = "SECS",
        default_value_t = 0
    )]
    pub drain_seconds: u64,

    /// While draining, answer new Allocates with 300 (Try Alternate) and this
    /// ALTERNATE-SERVER [default: 508].
    #[arg(long, env = "RELAY_ALTERNATE_SERVER", value_name = "ADDR:PORT")]
    pub alternate_server: Option<SocketAddr>,

    #[command(subcommand)]
    #[allow(missing_docs)] // a subcommand instead of running the relay
    pub command: Option<Subcommand>,
}

#[derive(Debug, clap::Subcommand)]
#[allow(missing_docs)] // what to do instead of relaying; clap documents the variants
pub enum Subcommand {
    /// Print a TURN REST API username/password minted from a secret, and exit.
    Credentials(CredentialsArgs),
}

#[derive(Debug, clap::Args)]
// The flags of `credentials` (not a doc comment: clap would make it the help text).
#[allow(missing_docs)]
pub struct CredentialsArgs {
    /// The shared secret. Given a list (as the relays take it, `RELAY_AUTH_SECRET=NEW,OLD`),
    /// credentials are minted from the first: the newest during a rotation.
    #[arg(
        long,
        env = "RELAY_AUTH_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        required = true,
        value_delimiter = ','
    )]
    pub auth_secret: Vec<String>,
    /// How long the credentials stay valid, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 86400)]
    pub ttl: u64,
    /// The user id appended to the expiry (`<expiry>:<id>`); it is what quotas count.
    #[arg(long, value_name = "ID")]
    pub user: Option<String>,
    /// Print JSON ({"username":…,"password":…,"ttl":…,"expires":…}) for scripts.
    #[arg(long)]
    pub json: bool,
}

/// The username/password pair `relay credentials` prints, as text or JSON.
pub fn mint_credentials(args: &CredentialsArgs, unix_now: u64) -> Result<String, String> {
    let Some(secret) = args.auth_secret.first().filter(|s| !s.is_empty()) else {
        return Err("--auth-secret: must not be empty".into());
    };
    if args
        .user
        .as_deref()
        .is_some_and(|u| u.contains(['"', '\\']) || u.chars().any(char::is_control))
    {
        return Err("--user: must not contain quotes, backslashes or control characters".into());
    }
    let expires = unix_now.saturating_add(args.ttl);
    let username = match &args.user {
        Some(id) => format!("{expires}:{id}"),
        None => expires.to_string(),
    };
    let password = rest_api_password(secret.as_bytes(), &username);
    Ok(if args.json {
        format!(
            r#"{{"username":"{username}","password":"{password}","ttl":{},"expires":{expires}}}"#,
            args.ttl
        )
    } else {
        format!("username: {username}\npassword: {password}")
    })
}

/// TCP and TLS, as validated flags (main.rs loads the certificate).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub tcp: bool,
    pub tls_listen: Vec<SocketAddr>,
    /// Certificate chain and key files.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_pending_connections: usize,
    /// Connections without an allocation are closed after this.
    pub no_allocation_deadline: Duration,
    /// A TLS handshake not done by then is abandoned.
    pub handshake_deadline: Duration,
}

pub const DEFAULT_TLS_LISTEN: [&str; 2] = ["0.0.0.0:5349", "[::]:5349"];

/// A configuration ready to run, plus what start-up should tell the operator.
pub struct Settings {
    /// TURN over TCP and TLS.
    pub streams: StreamSettings,
    /// The core's configuration.
    pub config: Config,
    /// Set when the secret was generated for this run: log a username/password.
    pub generated_secret: Option<String>,
    /// Decisions start-up should log (defaults that had to change).
    pub notes: Vec<String>,
    /// Where to serve /metrics, /live and /health, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// The most detailed level logged (`log::set_max_level`).
    pub log_level: log::LevelFilter,
    /// How long SIGTERM drains (zero: it exits at once).
    pub drain: Duration,
    /// Where a draining relay sends new allocations, if anywhere.
    pub alternate_server: Option<SocketAddr>,
    /// Whether usage records carry the client's address.
    pub log_client_addresses: bool,
    /// Firezone mode: the portal to join.
    pub portal: Option<PortalSettings>,
}

/// Validates the flags into the core's `Config` and the driver's settings.
/// `random_secret(n)` is n random bytes as hex (a generated secret).
pub fn settings(
    mut args: Args,
    random_secret: impl FnOnce(usize) -> String,
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
    // A listen port among the relay ports would be handed to relay sockets, or a relay
    // socket would shadow the listener: one socket both a relay and a listener is a loop.
    if let Some(inside) = args
        .listen_addr
        .iter()
        .find(|a| (args.lowest_port..=args.highest_port).contains(&a.port()))
    {
        return Err(format!(
            "--listen-addr {inside}: port {} is inside the relay port range {}-{} \
             (--lowest-port/--highest-port); choose a listen port outside it",
            inside.port(),
            args.lowest_port,
            args.highest_port
        ));
    }
    let portal = args.portal_token.is_some();
    let scheme = match args.auth_scheme {
        Some(AuthSchemeArg::Rest) => AuthScheme::Rest,
        Some(AuthSchemeArg::Firezone) => AuthScheme::Firezone,
        None if portal => AuthScheme::Firezone,
        None => AuthScheme::Rest,
    };
    let realm = match (args.realm.take(), scheme) {
        (Some(realm), _) => realm,
        (None, AuthScheme::Firezone) => FIREZONE_REALM.to_owned(),
        (None, AuthScheme::Rest) => DEFAULT_REALM.to_owned(),
    };
    if realm.is_empty() || realm.chars().count() >= 128 || realm.contains('"') {
        return Err("--realm: must be 1 to 127 characters, without '\"'".into());
    }
    if let Some(software) = &args.software
        && (software.is_empty() || software.chars().count() > MAX_SOFTWARE_CHARS)
    {
        return Err(format!(
            "--software: must be 1 to {MAX_SOFTWARE_CHARS} characters (RFC 8489 §14.14), got {}",
            software.chars().count()
        ));
    }
    if scheme == AuthScheme::Firezone && realm != FIREZONE_REALM {
        notes.push(format!(
            "--realm {realm}: Firezone's clients use the realm {FIREZONE_REALM:?} for their key; others fail with 401"
        ));
    }
    if portal && (!args.auth_secret.is_empty() || args.auth_secret_file.is_some()) {
        return Err("--auth-secret, --auth-secret-file: not with --portal-token (the relay makes its secret and hands it to the portal)".into());
    }
    if portal && scheme == AuthScheme::Rest {
        notes.push("--auth-scheme rest with --portal-token: the portal mints Firezone credentials, which will fail".into());
    }
    if args.auth_secret.iter().any(String::is_empty) {
        return Err("--auth-secret: must not be empty".into());
    }
    if let Some(path) = &args.auth_secret_file {
        let from_file = read_secret_file(path)?;
        args.auth_secret.extend(from_file);
    }
    let streams = stream_settings(&args)?;
    if args.drain_seconds > MAX_DEADLINE_SECS {
        return Err(format!(
            "--drain-seconds: must be at most {MAX_DEADLINE_SECS} (a year)"
        ));
    }
    let (secrets, generated_secret) = if portal {
        // 32 random bytes as 64 hex characters, as Firezone's relay makes it; never logged.
        (vec![random_secret(32)], None)
    } else if args.auth_secret.is_empty() {
        let secret = random_secret(16);
        (vec![secret.clone()], Some(secret))
    } else {
        (std::mem::take(&mut args.auth_secret), None)
    };
    if args.max_allocations_per_user == 0 || args.max_allocations == Some(0) {
        return Err("--max-allocations / --max-allocations-per-user: must be at least 1".into());
    }
    let lifetimes = match args.test_lifetime {
        None => Lifetimes::default(),
        Some(0) => return Err("--test-lifetime: must be at least 1 second".into()),
        Some(secs) => {
            notes.push(format!(
                "--test-lifetime {secs}: allocations, permissions and channels are short-lived (tests only)"
            ));
            short_lifetimes(Duration::from_secs(secs))
        }
    };
    let port_count = usize::from(args.highest_port - args.lowest_port) + 1;
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
    let portal = match &args.portal_token {
        None => None,
        Some(token) => Some(portal::settings(
            &args, token, &secrets, relay_v4, relay_v6,
        )?),
    };
    let config = Config {
        listeners: args.listen_addr,
        realm,
        auth_secrets: secrets.into_iter().map(String::into_bytes).collect(),
        auth_scheme: scheme,
        relay_v4,
        relay_v6,
        ports: args.lowest_port..=args.highest_port,
        allow_loopback_peers: args.allow_loopback_peers,
        allow_peers: args.allow_peer,
        deny_peers: args.deny_peer,
        lifetimes,
        max_allocations_per_user: args.max_allocations_per_user,
        max_allocations: args.max_allocations.unwrap_or(port_count),
        // The driver fills in the bound address (the kernel's port for port 0).
        metrics_addr: None,
        host_addresses: interfaces::local_addresses(),
        keep_client_family: args.keep_client_family,
        strict_credential_expiry: args.strict_credential_expiry,
        software: args.software,
        bandwidth: args.bandwidth.limits(),
    };
    Ok(Settings {
        streams,
        config,
        generated_secret,
        notes,
        metrics_addr: args.metrics_addr,
        log_level: args.log_level,
        drain: Duration::from_secs(args.drain_seconds),
        alternate_server: args.alternate_server,
        log_client_addresses: args.log_client_addresses,
        portal,
    })
}

/// The secrets of `--auth-secret-file`: one per line, surrounding whitespace dropped, blank
/// lines and `#` comments skipped. A file without any secret is an error, not a random
/// secret: the operator meant to set one.
fn read_secret_file(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--auth-secret-file {}: {e}", path.display()))?;
    let secrets: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if secrets.is_empty() {
        return Err(format!(
            "--auth-secret-file {}: no secret in it",
            path.display()
        ));
    }
    Ok(secrets)
}

fn stream_settings(args: &Args) -> Result<StreamSettings, String> {
    let tls_files = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => return Err("--tls-cert-file and --tls-key-file: give both or neither".into()),
    };
    if tls_files.is_none() && !args.tls_listen_addr.is_empty() {
        return Err("--tls-listen-addr: needs --tls-cert-file and --tls-key-file".into());
    }
    if args.max_connections == 0 || args.max_connections_per_ip == 0 {
        return Err("--max-connections / --max-connections-per-ip: must be at least 1".into());
    }
    let tls_listen = if tls_files.is_some() && args.tls_listen_addr.is_empty() {
        DEFAULT_TLS_LISTEN
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    } else {
        args.tls_listen_addr.clone()
    };
    if args.max_pending_connections == 0 {
        return Err("--max-pending-connections: must be at least 1".into());
    }
    if args.allocate_deadline == 0 || args.allocate_deadline > MAX_DEADLINE_SECS {
        return Err(format!(
            "--allocate-deadline: must be 1 to {MAX_DEADLINE_SECS} seconds"
        ));
    }
    let no_allocation_deadline = Duration::from_secs(args.allocate_deadline);
    let handshake_deadline = match args.test_handshake_deadline {
        None => Duration::from_secs(10),
        Some(secs) if secs == 0 || secs > MAX_DEADLINE_SECS => {
            return Err(format!(
                "--test-handshake-deadline: must be 1 to {MAX_DEADLINE_SECS} seconds"
            ));
        }
        Some(secs) => Duration::from_secs(secs),
    };
    Ok(StreamSettings {
        handshake_deadline,
        tcp: !args.no_tcp,
        tls_listen,
        tls_files,
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        max_pending_connections: args.max_pending_connections,
        no_allocation_deadline,
    })
}

/// RFC lifetimes cut down to `limit` (nonces keep theirs: they are not per-client state).
fn short_lifetimes(limit: Duration) -> Lifetimes {
    let rfc = Lifetimes::default();
    Lifetimes {
        allocation_default: limit,
        allocation_max: limit,
        permission: rfc.permission.min(limit),
        channel: rfc.channel.min(limit),
        channel_hold: rfc.channel_hold.min(limit),
        nonce_secs: rfc.nonce_secs,
    }
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
