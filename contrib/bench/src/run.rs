//! The benchmark's schedule: every server once per trial, one after another (A B C A B C …),
//! so that a slow minute of the shared machine hits all of them alike; then the memory and
//! set-up-rate test; in a full run the NAT and many-flows workloads; then the counts that
//! noise does not move (strace, callgrind).

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, Instant};

use crate::alloc;
use crate::cli::Args;
use crate::counts;
use crate::flows;
use crate::load::{self, Direction};
use crate::servers::{self, Kind, Server, Tools, Wrapper};
use crate::stream_run::stream_workloads;
use crate::stun::Credentials;
use crate::sys;

pub const DIRECTIONS: [Direction; 2] = [Direction::ClientToPeer, Direction::PeerToClient];
pub const PAYLOADS: [usize; 2] = [100, 1200];

/// Samples per server and metric (one per trial), plus what went wrong along the way.
#[derive(Default)]
pub struct Results {
    pub samples: BTreeMap<Kind, BTreeMap<String, Vec<f64>>>,
    /// Problems that make a figure missing or suspect (printed, and in the JSON).
    pub problems: Vec<String>,
    /// Informational lines (e.g. the most frequent syscalls per server).
    pub notes: Vec<String>,
}

impl Results {
    pub fn record(&mut self, kind: Kind, metric: &str, value: f64) {
        if value.is_finite() {
            self.samples
                .entry(kind)
                .or_default()
                .entry(metric.to_string())
                .or_default()
                .push(value);
        }
    }

    pub fn median(&self, kind: Kind, metric: &str) -> Option<f64> {
        let v = self.samples.get(&kind)?.get(metric)?;
        median(v)
    }
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

pub fn scenario_key(dir: Direction, payload: usize) -> String {
    format!("{}-{payload}", dir.key())
}

pub fn run(args: &Args, tools: &Tools, creds: &Credentials) -> Results {
    let mut results = Results::default();
    let mut seq = 0usize;
    let started = Instant::now();
    if args.only_flows {
        many_flows(args, tools, creds, &mut seq, started, &mut results);
        return results;
    }
    if args.streams && tools.cert.is_some() {
        stream_workloads(args, tools, creds, &mut seq, started, &mut results);
    }
    if args.only_streams {
        return results;
    }
    for trial in 0..args.trials {
        for &kind in &args.servers {
            seq += 1;
            eprintln!(
                "[{:5.1}s] trial {}/{}: {}",
                started.elapsed().as_secs_f64(),
                trial + 1,
                args.trials,
                kind.key()
            );
            if let Err(e) = data_trial(args, tools, creds, kind, seq, &mut results) {
                results
                    .problems
                    .push(format!("{} trial {}: {e}", kind.key(), trial + 1));
            }
        }
    }
    for trial in 0..args.memory_trials {
        for &kind in args.servers.iter().filter(|k| k.is_turn()) {
            seq += 1;
            eprintln!(
                "[{:5.1}s] memory and set-up rate {}/{}: {} with {} allocations",
                started.elapsed().as_secs_f64(),
                trial + 1,
                args.memory_trials,
                kind.key(),
                args.memory_allocations
            );
            if let Err(e) = memory_trial(args, tools, creds, kind, seq, &mut results) {
                results
                    .problems
                    .push(format!("{} memory trial {}: {e}", kind.key(), trial + 1));
            }
        }
    }
    // Clients behind one NAT: one source IP, 200 ports, all starting together (quick runs
    // too: it takes a second per server now that no server makes them wait).
    for &kind in args.servers.iter().filter(|k| k.is_turn()) {
        seq += 1;
        eprintln!(
            "[{:5.1}s] NAT set-up: {} with 200 clients on 127.0.0.1",
            started.elapsed().as_secs_f64(),
            kind.key()
        );
        if let Err(e) = nat_trial(tools, creds, kind, seq, &mut results) {
            results
                .problems
                .push(format!("{} NAT trial: {e}", kind.key()));
        }
    }
    // Many flows at an ordinary rate, nothing batchable (full run only).
    if !args.quick {
        many_flows(args, tools, creds, &mut seq, started, &mut results);
    }
    if args.counts {
        let counted: Vec<Kind> = args
            .servers
            .iter()
            .copied()
            .filter(|k| args.counts_all || *k == Kind::Relay)
            .collect();
        for &kind in &counted {
            for dir in DIRECTIONS {
                seq += 1;
                eprintln!(
                    "[{:5.1}s] strace -c -f: {} {}",
                    started.elapsed().as_secs_f64(),
                    kind.key(),
                    dir.key()
                );
                if let Err(e) = strace_count(tools, creds, kind, dir, seq, &mut results) {
                    results
                        .problems
                        .push(format!("{} strace {}: {e}", kind.key(), dir.key()));
                }
            }
        }
        for &kind in &counted {
            // coturn's default (one relay thread per CPU) runs the same code as coturn-1.
            if kind == Kind::CoturnDefault {
                continue;
            }
            for dir in DIRECTIONS {
                seq += 1;
                eprintln!(
                    "[{:5.1}s] callgrind: {} {}",
                    started.elapsed().as_secs_f64(),
                    kind.key(),
                    dir.key()
                );
                match counts::callgrind(kind, tools, creds, dir, seq) {
                    Ok(c) if c.packets * 100 >= c.sent * 95 => results.record(
                        kind,
                        &format!("count.instructions_per_packet.{}", dir.key()),
                        c.per_packet(),
                    ),
                    Ok(c) => results.problems.push(format!(
                        "{} callgrind {}: only {} of {} datagrams relayed",
                        kind.key(),
                        dir.key(),
                        c.packets,
                        c.sent
                    )),
                    Err(e) => results.problems.push(format!(
                        "{} callgrind {}: {e}",
                        kind.key(),
                        dir.key()
                    )),
                }
            }
        }
    }
    results
}

/// One server, one trial: idle RSS, saturation in each direction and size, then ping-pong.
fn data_trial(
    args: &Args,
    tools: &Tools,
    creds: &Credentials,
    kind: Kind,
    seq: usize,
    results: &mut Results,
) -> io::Result<()> {
    let mut server = Server::start(kind, tools, &Wrapper::None, seq)?;
    std::thread::sleep(Duration::from_millis(100));
    results.record(kind, "memory.idle_rss_kib", server.rss_kib()? as f64);
    results.record(kind, "memory.idle_anon_kib", server.rss_anon_kib()? as f64);
    let path = load::setup(&server, args.allocations, creds)?;
    for dir in DIRECTIONS {
        for payload in PAYLOADS {
            let t = load::one_way(&path, &server, dir, payload, args.warmup, args.measure)?;
            let key = scenario_key(dir, payload);
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
            results.record(kind, &format!("{key}.loss"), t.loss());
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
            results.record(
                kind,
                &format!("{key}.kernel_backlog_drops"),
                t.backlog_drops as f64,
            );
            if t.send_errors > 0 {
                results.notes.push(format!(
                    "{} {key}: {} failed sends of the load generator",
                    kind.key(),
                    t.send_errors
                ));
            }
        }
    }
    let rtt = load::ping_pong(
        &path,
        args.ping_rate,
        Duration::from_millis(200),
        args.ping_measure,
        100,
    )?;
    results.record(kind, "rtt.p50_us", rtt.percentile(50.0));
    results.record(kind, "rtt.p99_us", rtt.percentile(99.0));
    results.record(
        kind,
        "rtt.loss",
        if rtt.sent == 0 {
            f64::NAN
        } else {
            1.0 - rtt.received as f64 / rtt.sent as f64
        },
    );
    if !server.is_running() {
        return Err(io::Error::other(format!(
            "{} exited during the trial:\n{}",
            kind.key(),
            server.log_tail()
        )));
    }
    server.stop();
    Ok(())
}

/// Idle RSS, then M allocations each with a channel: allocations/s (with authentication) and
/// the RSS they add per allocation.
fn memory_trial(
    args: &Args,
    tools: &Tools,
    creds: &Credentials,
    kind: Kind,
    seq: usize,
    results: &mut Results,
) -> io::Result<()> {
    let mut server = Server::start(kind, tools, &Wrapper::None, seq)?;
    std::thread::sleep(Duration::from_millis(200));
    let idle = server.rss_kib()?;
    let peer = sys::udp_loopback()?;
    let mut clients = Vec::with_capacity(args.memory_allocations);
    for i in 0..args.memory_allocations {
        let c = sys::udp_client(i)?;
        c.connect(server.listen)?;
        clients.push(c);
    }
    let est = alloc::establish(
        &clients,
        creds,
        &alloc::Options {
            window: 32,
            rto: Duration::from_millis(500),
            channel_peer: Some(peer.local_addr()?),
        },
    )?;
    if est.binds_ok < args.memory_allocations {
        results.problems.push(format!(
            "{}: {} of {} allocations with a channel ({:?})",
            kind.key(),
            est.binds_ok,
            args.memory_allocations,
            est.failures
        ));
    }
    std::thread::sleep(Duration::from_millis(200));
    let loaded = server.rss_kib()?;
    results.record(
        kind,
        "setup.allocations_per_sec",
        est.allocations_ok as f64 / est.allocate_secs.max(1e-9),
    );
    results.record(
        kind,
        "setup.channel_binds_per_sec",
        est.binds_ok as f64 / est.bind_secs.max(1e-9),
    );
    results.record(kind, "setup.retransmits", est.retransmits as f64);
    results.record(kind, "memory.loaded_idle_rss_kib", idle as f64);
    results.record(kind, "memory.loaded_rss_kib", loaded as f64);
    if est.binds_ok > 0 {
        results.record(
            kind,
            "memory.kib_per_allocation",
            (loaded.saturating_sub(idle)) as f64 / est.binds_ok as f64,
        );
    }
    if !server.is_running() {
        return Err(io::Error::other(format!(
            "{} exited during the memory test:\n{}",
            kind.key(),
            server.log_tail()
        )));
    }
    server.stop();
    Ok(())
}

/// 200 clients on one address (distinct ports of 127.0.0.1, as behind a NAT) all start the
/// 401 -> Allocate exchange at once, with ordinary retransmissions (500 ms, doubling): the
/// share allocated within 5 s and the time to the last one.
fn nat_trial(
    tools: &Tools,
    creds: &Credentials,
    kind: Kind,
    seq: usize,
    results: &mut Results,
) -> io::Result<()> {
    const CLIENTS: usize = 200;
    let mut server = Server::start(kind, tools, &Wrapper::None, seq)?;
    std::thread::sleep(Duration::from_millis(200));
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let c = sys::udp_loopback()?;
        c.connect(server.listen)?;
        clients.push(c);
    }
    let est = alloc::establish(
        &clients,
        creds,
        &alloc::Options {
            window: CLIENTS,
            rto: Duration::from_millis(500),
            channel_peer: None,
        },
    )?;
    results.record(
        kind,
        "nat.allocated_share",
        est.allocations_ok as f64 / CLIENTS as f64,
    );
    results.record(kind, "nat.secs_to_last", est.allocate_secs);
    results.record(kind, "nat.retransmits", est.retransmits as f64);
    if !server.is_running() {
        return Err(io::Error::other(format!(
            "{} exited during the NAT test:\n{}",
            kind.key(),
            server.log_tail()
        )));
    }
    server.stop();
    Ok(())
}

/// Trials of the many-flows workload: at most 3 rounds over the servers, interleaved.
const FLOWS_TRIALS: usize = 3;

fn many_flows(
    args: &Args,
    tools: &Tools,
    creds: &Credentials,
    seq: &mut usize,
    started: Instant,
    results: &mut Results,
) {
    let trials = args.trials.min(FLOWS_TRIALS);
    for trial in 0..trials {
        for &kind in &args.servers {
            *seq += 1;
            eprintln!(
                "[{:5.1}s] many flows {}/{trials}: {} with {} allocations at {}/s each way",
                started.elapsed().as_secs_f64(),
                trial + 1,
                kind.key(),
                flows::FLOWS,
                flows::RATE
            );
            if let Err(e) = flows_trial(tools, creds, kind, *seq, results) {
                results.problems.push(format!(
                    "{} many-flows trial {}: {e}",
                    kind.key(),
                    trial + 1
                ));
            }
        }
    }
}

/// 1,000 allocations with a channel each (clients on distinct addresses 127.1.x.y), 40
/// datagrams/s of 200 B each way each, one sendto per datagram: CPU per relayed packet
/// and loss each way.
fn flows_trial(
    tools: &Tools,
    creds: &Credentials,
    kind: Kind,
    seq: usize,
    results: &mut Results,
) -> io::Result<()> {
    let mut server = Server::start(kind, tools, &Wrapper::None, seq)?;
    let path = load::setup(&server, flows::FLOWS, creds)?;
    let f = flows::run(
        &path,
        &server,
        Duration::from_millis(500),
        Duration::from_secs(3),
    )?;
    results.record(kind, "flows.cpu_us_per_packet", f.cpu_us_per_packet());
    results.record(kind, "flows.server_cpu_share", f.server_cpu_share());
    results.record(kind, "flows.c2p.loss", f.loss(0));
    results.record(kind, "flows.p2c.loss", f.loss(1));
    results.record(kind, "flows.c2p.offered_pps", f.offered_pps(0));
    results.record(kind, "flows.p2c.offered_pps", f.offered_pps(1));
    let wanted = (flows::FLOWS as u64 * flows::RATE) as f64;
    for (d, name) in ["c2p", "p2c"].iter().enumerate() {
        if f.offered_pps(d) < 0.95 * wanted {
            results.notes.push(format!(
                "{} many flows {name}: the load generator offered {:.0} of {wanted:.0} datagrams/s",
                kind.key(),
                f.offered_pps(d)
            ));
        }
    }
    if f.send_errors > 0 || f.loadgen_socket_drops > 0 {
        results.notes.push(format!(
            "{} many flows: {} failed sends, {} datagrams dropped at the load generator's full sockets (counted as relayed)",
            kind.key(),
            f.send_errors,
            f.loadgen_socket_drops
        ));
    }
    if f.corrupt > 0 {
        results.problems.push(format!(
            "{} many flows: {} corrupt datagrams received",
            kind.key(),
            f.corrupt
        ));
    }
    if !server.is_running() {
        return Err(io::Error::other(format!(
            "{} exited during the many-flows test:\n{}",
            kind.key(),
            server.log_tail()
        )));
    }
    drop(path);
    server.stop();
    Ok(())
}

fn strace_count(
    tools: &Tools,
    creds: &Credentials,
    kind: Kind,
    dir: Direction,
    seq: usize,
    results: &mut Results,
) -> io::Result<()> {
    let server = Server::start(kind, tools, &Wrapper::None, seq)?;
    let path = load::setup(&server, 1, creds)?;
    // Warm up (first sends on a socket, lazy set-up) outside the traced window.
    load::fixed_bursts(
        &path,
        dir,
        10,
        counts::BURST,
        counts::PAYLOAD,
        Duration::from_secs(2),
    )?;
    let c = counts::strace(&server, &path, dir, &tools.workdir)?;
    if c.packets * 100 < c.sent * 95 {
        return Err(io::Error::other(format!(
            "only {} of {} datagrams relayed under strace",
            c.packets, c.sent
        )));
    }
    results.record(
        kind,
        &format!("count.syscalls_per_packet.{}", dir.key()),
        c.per_packet(),
    );
    let top: Vec<String> = c
        .by_name
        .iter()
        .take(4)
        .map(|(name, calls)| format!("{name} {:.3}", *calls as f64 / c.packets.max(1) as f64))
        .collect();
    results.notes.push(format!(
        "{} {} syscalls per relayed packet: {}",
        kind.key(),
        dir.key(),
        top.join(", ")
    ));
    drop(path);
    drop(server);
    Ok(())
}

/// Which servers can run here (coturn may be missing); the others are reported as problems.
pub fn available(args: &Args, tools: &Tools, problems: &mut Vec<String>) -> Vec<Kind> {
    args.servers
        .iter()
        .copied()
        .filter(|k| {
            let ok = match k {
                Kind::CoturnOne | Kind::CoturnDefault => tools.turnserver.is_some(),
                _ => true,
            };
            if !ok {
                problems.push(format!(
                    "{}: turnserver (coturn) not installed, skipped",
                    k.key()
                ));
            }
            ok
        })
        .collect()
}

/// The machine the figures come from.
pub fn machine() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    vec![
        ("nproc".into(), sys::configured_cpus().to_string()),
        ("cpu".into(), cpu),
        ("kernel".into(), kernel),
        ("loadavg_at_start".into(), load),
        ("coturn".into(), coturn_version()),
    ]
}

fn coturn_version() -> String {
    servers::which("turnserver")
        .and_then(|p| std::process::Command::new(p).arg("--version").output().ok())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "not installed".into())
}
