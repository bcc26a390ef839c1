//! The schedule of the TCP and TLS workloads (issue 12): each TURN server once per trial,
//! interleaved as the UDP ones; then the TLS memory and set-up test.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use crate::cli::Args;
use crate::load::Direction;
use crate::run::{DIRECTIONS, PAYLOADS, Results};
use crate::servers::{Kind, Server, Tools};
use crate::stream_client::{Conn, Transport};
use crate::streams;
use crate::stun::Credentials;
use crate::sys;
use crate::tls;

pub const TRANSPORTS: [Transport; 2] = [Transport::Tcp, Transport::Tls];
/// Idle TLS connections of the per-connection memory figure.
pub const IDLE_TLS_CONNECTIONS: usize = 1000;

/// The TCP and TLS workloads, interleaved over the trials like the UDP ones, then the TLS
/// memory and set-up test (as many rounds as the UDP memory test).
pub fn stream_workloads(
    args: &Args,
    tools: &Tools,
    creds: &Credentials,
    seq: &mut usize,
    started: Instant,
    results: &mut Results,
) {
    let config = tls::client_config();
    let turn: Vec<Kind> = args
        .servers
        .iter()
        .copied()
        .filter(|k| k.is_turn())
        .collect();
    for trial in 0..args.trials {
        for &kind in &turn {
            *seq += 1;
            eprintln!(
                "[{:5.1}s] TCP/TLS trial {}/{}: {}",
                started.elapsed().as_secs_f64(),
                trial + 1,
                args.trials,
                kind.key()
            );
            if let Err(e) = stream_trial(args, tools, creds, &config, kind, *seq, results) {
                results
                    .problems
                    .push(format!("{} TCP/TLS trial {}: {e}", kind.key(), trial + 1));
            }
        }
    }
    for trial in 0..args.memory_trials {
        for &kind in &turn {
            *seq += 1;
            eprintln!(
                "[{:5.1}s] TLS memory and set-up {}/{}: {} with {IDLE_TLS_CONNECTIONS} idle connections, {} allocations",
                started.elapsed().as_secs_f64(),
                trial + 1,
                args.memory_trials,
                kind.key(),
                args.stream_allocations
            );
            if let Err(e) = tls_memory_trial(args, tools, creds, &config, kind, *seq, results) {
                results.problems.push(format!(
                    "{} TLS memory trial {}: {e}",
                    kind.key(),
                    trial + 1
                ));
            }
        }
    }
}

pub fn stream_key(transport: Transport, dir: Direction, payload: usize) -> String {
    format!("{}-{}-{payload}", transport.key(), dir.key())
}

/// One server, one trial: ChannelData over TCP then TLS at each size, then TLS handshakes.
fn stream_trial(
    args: &Args,
    tools: &Tools,
    creds: &Credentials,
    config: &Arc<ClientConfig>,
    kind: Kind,
    seq: usize,
    results: &mut Results,
) -> io::Result<()> {
    let mut server = Server::start_streams(kind, tools, seq)?;
    for transport in TRANSPORTS {
        let mut path = streams::setup(&server, transport, args.allocations, creds, config)?;
        for (dir, payload) in DIRECTIONS
            .into_iter()
            .flat_map(|d| PAYLOADS.map(|p| (d, p)))
        {
            let t = match dir {
                Direction::ClientToPeer => {
                    streams::client_to_peer(&mut path, &server, payload, args.warmup, args.measure)?
                }
                Direction::PeerToClient => {
                    streams::peer_to_client(&mut path, &server, payload, args.warmup, args.measure)?
                }
            };
            let key = stream_key(transport, dir, payload);
            if t.corrupt > 0 {
                results.problems.push(format!(
                    "{} {key}: {} corrupt datagrams received",
                    kind.key(),
                    t.corrupt
                ));
            }
            results.record(kind, &format!("{key}.pps"), t.pps());
            results.record(kind, &format!("{key}.offered_pps"), t.offered_pps());
            results.record(
                kind,
                &format!("{key}.cpu_us_per_packet"),
                t.cpu_us_per_packet(),
            );
            results.record(
                kind,
                &format!("{key}.server_cpu_share"),
                t.server_cpu_share(),
            );
            results.record(
                kind,
                &format!("{key}.loadgen_cpu_share"),
                t.loadgen_cpu_share(),
            );
            if dir == Direction::PeerToClient {
                results.record(kind, &format!("{key}.loss"), t.loss());
            }
        }
    }
    let h = streams::handshakes(&server, config, args.warmup, args.measure)?;
    results.record(kind, "tls.handshakes_per_sec", h.per_sec());
    results.record(kind, "tls.cpu_us_per_handshake", h.cpu_us_per_handshake());
    results.record(
        kind,
        "tls.handshake_server_cpu_share",
        h.server_cpu_secs / h.secs,
    );
    results.record(
        kind,
        "tls.handshake_loadgen_cpu_share",
        h.loadgen_cpu_secs / h.secs,
    );
    if h.failed > 0 {
        results.notes.push(format!(
            "{} TLS handshakes: {} failed of {} ({})",
            kind.key(),
            h.failed,
            h.failed + h.completed,
            h.first_error.unwrap_or_default()
        ));
    }
    if !server.is_running() {
        return Err(io::Error::other(format!(
            "{} exited during the TCP/TLS trial:\n{}",
            kind.key(),
            server.log_tail()
        )));
    }
    server.stop();
    Ok(())
}

/// Idle RSS; IDLE_TLS_CONNECTIONS TLS connections that finished their handshake (a Binding
/// answered) and stay idle: RSS added per connection; then `stream_allocations` more, each
/// connect + TLS + Allocate (401, then authenticated) + ChannelBind: their rate and the RSS
/// each adds.
fn tls_memory_trial(
    args: &Args,
    tools: &Tools,
    creds: &Credentials,
    config: &Arc<ClientConfig>,
    kind: Kind,
    seq: usize,
    results: &mut Results,
) -> io::Result<()> {
    let mut server = Server::start_streams(kind, tools, seq)?;
    let remote = server
        .tls_listen
        .ok_or_else(|| io::Error::other("no TLS address"))?;
    std::thread::sleep(Duration::from_millis(200));
    let idle = server.rss_kib()?;
    let (idle_conns, _) = streams::open_many(IDLE_TLS_CONNECTIONS, 0, |i, tids| {
        let mut c = Conn::open(Transport::Tls, i, remote, config)?;
        c.binding(tids)?;
        Ok(c)
    })?;
    std::thread::sleep(Duration::from_millis(200));
    let with_conns = server.rss_kib()?;
    results.record(
        kind,
        "memory.kib_per_tls_connection",
        with_conns.saturating_sub(idle) as f64 / IDLE_TLS_CONNECTIONS as f64,
    );
    let peer = sys::udp_loopback()?;
    let peer_addr = peer.local_addr()?;
    let n = args.stream_allocations;
    let (allocations, secs) = streams::open_many(n, IDLE_TLS_CONNECTIONS, |i, tids| {
        let mut c = Conn::open(Transport::Tls, i, remote, config)?;
        c.allocate_with_channel(creds, peer_addr, tids)?;
        Ok(c)
    })?;
    results.record(kind, "tls.allocations_per_sec", n as f64 / secs.max(1e-9));
    std::thread::sleep(Duration::from_millis(200));
    let loaded = server.rss_kib()?;
    results.record(
        kind,
        "memory.kib_per_tls_allocation",
        loaded.saturating_sub(with_conns) as f64 / n as f64,
    );
    if !server.is_running() {
        return Err(io::Error::other(format!(
            "{} exited during the TLS memory test:\n{}",
            kind.key(),
            server.log_tail()
        )));
    }
    drop(allocations);
    drop(idle_conns);
    server.stop();
    Ok(())
}
