//! The `relay` binary: flags into a configuration, logging, the OS random seed, the driver's
//! loop, exit codes.

#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use log::{error, info, warn};

use relay::cli::{self, Args, Settings};
use relay::driver::clock::unix_now;
use relay::driver::{self, Driver};

/// How long the credentials logged for a generated secret stay valid.
const DEMO_CREDENTIALS_TTL_SECS: u64 = 24 * 3600;

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let mut args = Args::parse();
    if let Some(cli::Subcommand::Credentials(credentials)) = args.command.take() {
        return match cli::mint_credentials(&credentials, unix_now()) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("relay: {message}");
                ExitCode::from(2)
            }
        };
    }
    if args.config_file.is_some() {
        args = match cli::config_file::args_with_config_file(&argv) {
            Ok(args) => args,
            Err(message) => {
                eprintln!("relay: {message}");
                return ExitCode::from(2);
            }
        };
    }
    relay::logging::init(args.log_format);
    let settings = match cli::settings(args, random_hex) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("relay: {message}");
            return ExitCode::from(2);
        }
    };
    log::set_max_level(settings.log_level);
    let config = settings.config.clone();
    let streams = &settings.streams;
    let tls = match &streams.tls_files {
        None => None,
        Some((cert, key)) => match driver::tls::ReloadableConfig::load(cert, key) {
            Ok(tls) => Some(tls),
            Err(e) => {
                eprintln!("relay: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let descriptors = relay::driver::limits::raise_nofile_limit();
    info!(
        "file descriptors: {descriptors} (each allocation holds one per relayed family; beyond that, Allocate gets 508)"
    );
    let budget = relay::driver::limits::connection_budget(descriptors);
    let serves_streams = streams.tcp || streams.tls_files.is_some();
    let max_connections = if serves_streams && streams.max_connections > budget {
        warn!(
            "--max-connections {}: {descriptors} file descriptors serve at most {budget} TCP/TLS connections (half of them, beyond a reserve, stay for relay sockets); raise the limit (LimitNOFILE) to serve more",
            streams.max_connections
        );
        budget
    } else {
        streams.max_connections
    };
    let control = driver::control::Control::new(
        Some(reloader(argv, &settings)),
        settings.drain,
        settings.alternate_server,
    );
    let portal_tls = match &settings.portal {
        Some(portal) if portal.endpoint.tls => {
            match driver::portal::client_config(portal.ca_file.as_deref()) {
                Ok(config) => Some(config),
                Err(e) => {
                    eprintln!("relay: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    // Where the portal is, for the log: never its URL, which carries the token.
    let portal_at = settings
        .portal
        .as_ref()
        .map(|p| format!("{}:{}", p.endpoint.host, p.endpoint.port));
    let options = driver::Options {
        control,
        metrics_addr: settings.metrics_addr,
        start_time_unix: unix_now(),
        streams: driver::StreamOptions {
            tcp: streams.tcp,
            tls_listen: streams.tls_listen.clone(),
            tls,
            max_connections,
            max_connections_per_ip: streams.max_connections_per_ip,
            max_pending_connections: streams.max_pending_connections,
            no_allocation_deadline: streams.no_allocation_deadline,
            handshake_deadline: streams.handshake_deadline,
        },
        log_client_addresses: settings.log_client_addresses,
        portal: settings.portal,
        portal_tls,
        portal_seed: u64::from_le_bytes(random_bytes::<8>()),
    };
    let mut driver = match Driver::new(settings.config, random_bytes::<32>(), options) {
        Ok(driver) => driver,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    driver::log_startup(&config, &driver.listen_addresses());
    let tcp = driver.tcp_listen_addresses();
    if !tcp.is_empty() {
        let tls = if settings.streams.tls_files.is_some() {
            "TCP and TLS"
        } else {
            "TCP"
        };
        info!("TURN over {tls} on {tcp:?}");
    }
    info!("{}", driver.core().peer_policy().describe());
    if let Some(portal) = portal_at {
        info!("Firezone mode: joining the portal at {portal}; no allocations until it sends init");
    }
    if let Some(addr) = driver.metrics_address() {
        info!("metrics on http://{addr}/metrics, health on http://{addr}/healthz");
    }
    for note in &settings.notes {
        warn!("{note}");
    }
    if let Some(secret) = settings.generated_secret {
        let expiry = unix_now() + DEMO_CREDENTIALS_TTL_SECS;
        let username = format!("{expiry}:demo");
        let password = config.auth_scheme.password(secret.as_bytes(), &username);
        info!("no --auth-secret given: generated secret {secret} for this run");
        info!("try it: username {username} password {password} (valid 24 h)");
    }
    match driver.run() {
        Ok(()) => {
            drop(driver); // closes every socket before we say so
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP's configuration: the same argv and environment, the config and secret files as
/// they are now, validated by the same `cli::settings`. What only a restart can change is
/// logged and left as it is (the core keeps it too).
fn reloader(argv: Vec<OsString>, start: &Settings) -> driver::control::Reload {
    let generated = start.generated_secret.clone();
    // Firezone mode: the portal holds the secret made at start; a reload keeps it.
    let portal_secrets = start
        .portal
        .as_ref()
        .map(|_| start.config.auth_secrets.clone());
    let bound = restart_only(start);
    // The URL the portal is joined with holds the token: compared, never logged.
    let join_url = start.portal.as_ref().map(|p| p.join_url.clone());
    Box::new(move || {
        let args = cli::config_file::args_with_config_file(&argv)?;
        let mut new = cli::settings(args, |_| generated.clone().unwrap_or_default())?;
        // The portal is joined, and its secret made, only at start: a reload that turns
        // Firezone mode on would take the Firezone scheme with no secret handed to any
        // portal (the closure above gives "" then), accepting credentials minted from the
        // empty secret; one that turns it off would drop the portal's secret.
        if new.portal.is_some() != portal_secrets.is_some() {
            return Err("--portal-token set or unset: that needs a restart".into());
        }
        if let Some(secrets) = &portal_secrets {
            new.config.auth_secrets = secrets.clone();
        }
        if new.generated_secret.is_some() && generated.is_none() {
            return Err("no --auth-secret or --auth-secret-file any more".into());
        }
        // What start-up warns about (a realm Firezone's clients do not use, ...), a reload
        // warns about too.
        for note in &new.notes {
            warn!("SIGHUP: {note}");
        }
        for ((name, was), (_, now)) in bound.iter().zip(restart_only(&new)) {
            if *was != now {
                warn!("SIGHUP: {name} changed from {was} to {now}: that needs a restart");
            }
        }
        if new.portal.as_ref().map(|p| &p.join_url) != join_url.as_ref() {
            warn!(
                "SIGHUP: --portal-token (or an address sent with it) changed: the portal connection keeps the old one until a restart"
            );
        }
        if new.log_level != log::max_level() {
            let level = new.log_level.as_str().to_ascii_lowercase();
            info!("SIGHUP: log level {level}");
        }
        log::set_max_level(new.log_level);
        Ok(new.config)
    })
}

/// The settings bound to sockets when the relay started, named as their flags.
fn restart_only(settings: &Settings) -> Vec<(&'static str, String)> {
    let (config, streams) = (&settings.config, &settings.streams);
    vec![
        ("--listen-addr", format!("{:?}", config.listeners)),
        ("--public-ip4-addr", format!("{:?}", config.relay_v4)),
        ("--public-ip6-addr", format!("{:?}", config.relay_v6)),
        (
            "--lowest-port/--highest-port",
            format!("{:?}", config.ports),
        ),
        ("--metrics-addr", format!("{:?}", settings.metrics_addr)),
        (
            "--portal-ws-url (or --portal-token set or unset)",
            format!("{:?}", settings.portal.as_ref().map(|p| &p.endpoint)),
        ),
        ("--no-tcp", format!("{:?}", !streams.tcp)),
        ("--tls-listen-addr", format!("{:?}", streams.tls_listen)),
        (
            "--tls-cert-file/--tls-key-file",
            format!("{:?}", streams.tls_files),
        ),
        ("--max-connections", format!("{}", streams.max_connections)),
        (
            "--max-connections-per-ip",
            format!("{}", streams.max_connections_per_ip),
        ),
        (
            "--max-pending-connections",
            format!("{}", streams.max_pending_connections),
        ),
        (
            "--allocate-deadline",
            format!("{:?}", streams.no_allocation_deadline),
        ),
        (
            "--log-client-addresses",
            format!("{}", settings.log_client_addresses),
        ),
        (
            "--portal-ca-file",
            format!("{:?}", settings.portal.as_ref().map(|p| &p.ca_file)),
        ),
        ("--drain-seconds", format!("{:?}", settings.drain)),
        (
            "--alternate-server",
            format!("{:?}", settings.alternate_server),
        ),
    ]
}

/// The core's RNG seed and a generated secret: the one place the OS random source is read.
#[allow(clippy::disallowed_methods)]
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if let Err(e) = getrandom::fill(&mut bytes) {
        // Without the OS random source nonces and ports would be predictable: refuse to run.
        eprintln!("relay: cannot read the OS random source: {e}");
        std::process::exit(1);
    }
    bytes
}

/// `count` random bytes as hex: a generated secret (16 bytes for the demo secret, 32 for
/// the Firezone stamp secret).
#[allow(clippy::disallowed_methods)]
fn random_hex(count: usize) -> String {
    let mut bytes = vec![0u8; count];
    if let Err(e) = getrandom::fill(&mut bytes) {
        eprintln!("relay: cannot read the OS random source: {e}");
        std::process::exit(1);
    }
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
