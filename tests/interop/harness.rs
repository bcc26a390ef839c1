//! The harness of the interop tests: our relay on both loopback families with a free relay
//! port range and its metrics, and client processes run with a time limit, their output
//! captured and the process killed whatever happens.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{self, RelayProcess};

pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

// ---------------------------------------------------------------------------------------
// The relay under test

/// Our relay on 127.0.0.1 and ::1 (kernel-chosen ports), relaying from loopback on a relay
/// port range found free at run time, with its metrics endpoint on, killed when dropped.
/// Loopback peers are denied unless `extra` has `--allow-loopback-peers` (ALLOW_LOOPBACK).
pub struct DualStackRelay {
    process: RelayProcess,
    v4: SocketAddr,
    v6: SocketAddr,
    ports: (u16, u16),
    metrics: SocketAddr,
}

impl DualStackRelay {
    /// `port_count` relay ports; `extra` flags are appended.
    pub fn start(port_count: u16, extra: &[&str]) -> DualStackRelay {
        let (lowest, highest) = free_port_range(port_count);
        let (lowest_arg, highest_arg) = (lowest.to_string(), highest.to_string());
        let mut args = vec![
            "--listen-addr",
            "127.0.0.1:0",
            "--listen-addr",
            "[::1]:0",
            "--realm",
            common::REALM,
            "--auth-secret",
            common::SECRET,
            "--lowest-port",
            &lowest_arg,
            "--highest-port",
            &highest_arg,
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut process = RelayProcess::start_with(&args);
        let line = process.wait_for_log("listening on");
        let listeners = parse_listeners(&line);
        let find = |v6: bool| {
            *listeners
                .iter()
                .find(|a| a.is_ipv6() == v6)
                .unwrap_or_else(|| {
                    panic!(
                        "no {} listener in {line:?}",
                        if v6 { "IPv6" } else { "IPv4" }
                    )
                })
        };
        let (v4, v6) = (find(false), find(true));
        let line = process.wait_for_log("metrics on http://");
        let metrics = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("metrics address in {line:?}"));
        DualStackRelay {
            process,
            v4,
            v6,
            ports: (lowest, highest),
            metrics,
        }
    }

    pub fn addr(&self, family: IpAddr) -> SocketAddr {
        if family.is_ipv6() { self.v6 } else { self.v4 }
    }

    /// One sample of `/metrics`, e.g. `relay_responses_total{method="channel_bind",code="200"}`.
    /// Absent samples (the relay omits zero response counters) read as 0.
    pub fn metric(&self, sample: &str) -> u64 {
        let text = self.metrics_text();
        text.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == sample).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0)
    }

    pub fn metrics_text(&self) -> String {
        common::scrape(self.metrics)
    }

    pub fn responses(&self, method: &str, code: u16) -> u64 {
        self.metric(&format!(
            "relay_responses_total{{method=\"{method}\",code=\"{code}\"}}"
        ))
    }

    pub fn relayed(&self, direction: &str) -> u64 {
        self.metric(&format!(
            "relay_packets_relayed_total{{direction=\"{direction}\"}}"
        ))
    }

    pub fn port_range_arg(&self) -> String {
        format!("{}-{}", self.ports.0, self.ports.1)
    }

    /// The relay's log so far, for failure messages.
    pub fn log(&self) -> String {
        self.process.seen.join("\n")
    }
}

/// `... relay listening on [127.0.0.1:40000, [::1]:40001], relaying from ...`
fn parse_listeners(line: &str) -> Vec<SocketAddr> {
    let start = line.find("listening on [").expect("listen line") + "listening on [".len();
    let end = line.find("], relaying").expect("end of listener list");
    line[start..end]
        .split(", ")
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("listener {a:?} in {line:?}"))
        })
        .collect()
}

/// `len` consecutive UDP ports free on both 127.0.0.1 and ::1 (see
/// `common::free_port_range_on`); these tests need IPv6 loopback.
pub fn free_port_range(len: u16) -> (u16, u16) {
    if let Err(e) = UdpSocket::bind((V6, 0)) {
        panic!("these tests need IPv6 loopback (::1), and binding it fails: {e}");
    }
    common::free_port_range_on(len, &[V4, V6])
}

// ---------------------------------------------------------------------------------------
// Running client processes

/// Kills the process when dropped, also when a test panics.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a client printed, and how it ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn output(&self) -> String {
        format!(
            "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `command` to completion within `limit`; kills it and fails the test otherwise.
/// Output is drained by threads so that a chatty client never blocks on a full pipe.
pub fn run_bounded(mut command: Command, limit: Duration) -> Finished {
    let what = format!("{command:?}");
    let mut child = Guard(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e} (tests/run installs it)")),
    );
    let stdout = drain(child.0.stdout.take());
    let stderr = drain(child.0.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for client") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.0.kill();
            let _ = child.0.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Finished {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{what} did not finish within {limit:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        ),
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

// ---------------------------------------------------------------------------------------
// The Python clients

/// The interpreter of the venv `tests/run` set up.
fn python() -> String {
    std::env::var("RELAY_PYTHON").unwrap_or_else(|_| {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
        assert!(
            Path::new(venv).exists(),
            "no Python venv with aioice/aiortc: run tests/run (it installs what the interop tests need)"
        );
        venv.to_owned()
    })
}

/// A script of `tests/interop/` run by that interpreter.
pub fn script(name: &str) -> Command {
    let mut command = Command::new(python());
    command
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/interop")
                .join(name),
        )
        .env("PYTHONDONTWRITEBYTECODE", "1");
    command
}
