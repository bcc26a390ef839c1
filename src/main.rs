//! The `relay` binary: flags into a configuration, logging, the OS random seed, the driver's
//! loop, exit codes.

#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

use clap::Parser;
use log::{error, info, warn};

use relay::cli::{self, Args};
use relay::driver::clock::unix_now;
use relay::driver::{self, Driver};

/// How long the credentials logged for a generated secret stay valid.
const DEMO_CREDENTIALS_TTL_SECS: u64 = 24 * 3600;

fn main() -> ExitCode {
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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        // tungstenite traces the portal's handshake request and every frame: the token and
        // the stamp secret, which are never logged.
        .filter_module("tungstenite", log::LevelFilter::Info)
        .init();

    let settings = match cli::settings(args, random_hex) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("relay: {message}");
            return ExitCode::from(2);
        }
    };
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
        metrics_addr: settings.metrics_addr,
        start_time_unix: unix_now(),
        streams: driver::StreamOptions {
            tcp: streams.tcp,
            tls_listen: streams.tls_listen.clone(),
            tls,
            max_connections: streams.max_connections,
            max_connections_per_ip: streams.max_connections_per_ip,
            no_allocation_deadline: streams.no_allocation_deadline,
            handshake_deadline: streams.handshake_deadline,
        },
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
