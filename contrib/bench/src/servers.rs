//! Starting, probing and stopping the servers under test, each pinned to the server CPU, and
//! reading their CPU time and memory from /proc.

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::stun::{self, Builder, Parsed, TidSource};
use crate::tls::CertFiles;

/// The relay port range every TURN server gets: below Linux's ephemeral range (32768–60999),
/// where the load generator's own sockets live, and far from 3478. 12,000 ports: room for the
/// 10,000-allocation memory test.
pub const RELAY_PORTS: (u16, u16) = (20000, 31999);
pub const REALM: &str = "bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Relay,
    CoturnOne,
    CoturnDefault,
    FwdPlain,
    FwdBatched,
    FwdGso,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Relay,
        Kind::CoturnOne,
        Kind::CoturnDefault,
        Kind::FwdPlain,
        Kind::FwdBatched,
        Kind::FwdGso,
    ];

    /// Short name used in JSON keys and on the command line.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Relay => "relay",
            Kind::CoturnOne => "coturn-1",
            Kind::CoturnDefault => "coturn-default",
            Kind::FwdPlain => "fwd-plain",
            Kind::FwdBatched => "fwd-batched",
            Kind::FwdGso => "fwd-gso",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::Relay => "this relay (target/release/relay)",
            Kind::CoturnOne => "coturn, --relay-threads=1",
            Kind::CoturnDefault => "coturn, default threads (one per CPU)",
            Kind::FwdPlain => "bare forwarder, recv_from/send_to per datagram",
            Kind::FwdBatched => "bare forwarder, recvmmsg/sendmmsg of up to 64",
            Kind::FwdGso => "bare forwarder, recvmmsg, sendmmsg of UDP GSO runs",
        }
    }

    pub fn from_key(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.key() == s)
    }

    pub fn is_turn(self) -> bool {
        matches!(self, Kind::Relay | Kind::CoturnOne | Kind::CoturnDefault)
    }
}

/// Where the programs are and how to run them.
pub struct Tools {
    pub relay: PathBuf,
    pub forwarder: PathBuf,
    pub turnserver: Option<PathBuf>,
    pub workdir: PathBuf,
    pub secret: String,
    /// CPU the servers are pinned to (None: no pinning, single-CPU machine).
    pub server_cpu: Option<usize>,
    /// Certificate and key for TLS (None: no stream workloads).
    pub cert: Option<CertFiles>,
}

/// How a server process is wrapped.
#[derive(Clone, Debug)]
pub enum Wrapper {
    None,
    /// valgrind --tool=callgrind with its output file
    Callgrind(PathBuf),
}

pub struct Server {
    pub kind: Kind,
    child: Option<Child>,
    pub pid: u32,
    /// The TURN listen address, or the forwarder's client-side ("in") address.
    pub listen: SocketAddr,
    /// The forwarder's peer-side ("out") address.
    pub out: Option<SocketAddr>,
    /// The TLS listen address (servers started with `start_streams`); TCP is on `listen`.
    pub tls_listen: Option<SocketAddr>,
    pub log: PathBuf,
}

/// A loopback TCP port that was free a moment ago.
pub fn free_tcp_port() -> io::Result<u16> {
    let s = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(s.local_addr()?.port())
}

/// A loopback UDP port that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(s.local_addr()?.port())
}

impl Server {
    /// A TURN server for the UDP workloads (coturn without TCP and TLS, as before).
    pub fn start(kind: Kind, tools: &Tools, wrapper: &Wrapper, seq: usize) -> io::Result<Server> {
        Server::start_with(kind, tools, wrapper, seq, None)
    }

    /// A TURN server that also serves TCP on its listen address and TLS on `tls_listen`.
    pub fn start_streams(kind: Kind, tools: &Tools, seq: usize) -> io::Result<Server> {
        let cert = tools
            .cert
            .as_ref()
            .ok_or_else(|| io::Error::other("no certificate for TLS"))?;
        Server::start_with(kind, tools, &Wrapper::None, seq, Some(cert))
    }

    fn start_with(
        kind: Kind,
        tools: &Tools,
        wrapper: &Wrapper,
        seq: usize,
        tls: Option<&CertFiles>,
    ) -> io::Result<Server> {
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let tls_listen = match tls {
            Some(_) => Some(SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()?))),
            None => None,
        };
        let log = tools.workdir.join(format!("{}-{seq}.log", kind.key()));
        let mut out = None;
        let (program, args): (PathBuf, Vec<String>) = match kind {
            Kind::Relay => {
                let mut a = vec![
                    format!("--listen-addr={listen}"),
                    format!("--lowest-port={}", RELAY_PORTS.0),
                    format!("--highest-port={}", RELAY_PORTS.1),
                    format!("--auth-secret={}", tools.secret),
                    format!("--realm={REALM}"),
                    "--allow-loopback-peers".into(),
                    // Every allocation of the benchmark uses one user name.
                    "--max-allocations-per-user=100000".into(),
                ];
                if let (Some(files), Some(addr)) = (tls, tls_listen) {
                    a.push(format!("--tls-listen-addr={addr}"));
                    a.push(format!("--tls-cert-file={}", files.cert.display()));
                    a.push(format!("--tls-key-file={}", files.key.display()));
                }
                (tools.relay.clone(), a)
            }
            Kind::CoturnOne | Kind::CoturnDefault => {
                let Some(turnserver) = &tools.turnserver else {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "turnserver (coturn) not installed",
                    ));
                };
                let mut a = vec![
                    "-n".to_string(), // no configuration file
                    format!("--listening-ip={}", listen.ip()),
                    format!("--listening-port={}", listen.port()),
                    format!("--relay-ip={}", listen.ip()),
                    format!("--min-port={}", RELAY_PORTS.0),
                    format!("--max-port={}", RELAY_PORTS.1),
                    "--use-auth-secret".into(),
                    format!("--static-auth-secret={}", tools.secret),
                    format!("--realm={REALM}"),
                    "--allow-loopback-peers".into(),
                    "--no-cli".into(),
                    "--no-dtls".into(),
                    "--no-tcp-relay".into(),
                    "--user-quota=0".into(),
                    "--total-quota=0".into(),
                    "--max-bps=0".into(),
                    "--bps-capacity=0".into(),
                    "--no-rfc5780".into(),
                    // Log lines go to our log file through stdout; no file under /var/log.
                    "--log-file=stdout".into(),
                    "--simple-log".into(),
                    format!(
                        "--pidfile={}",
                        tools
                            .workdir
                            .join(format!("turnserver-{seq}.pid"))
                            .display()
                    ),
                ];
                match (tls, tls_listen) {
                    (Some(files), Some(addr)) => {
                        a.push(format!("--tls-listening-port={}", addr.port()));
                        a.push(format!("--cert={}", files.cert.display()));
                        a.push(format!("--pkey={}", files.key.display()));
                    }
                    _ => {
                        a.push("--no-tls".into());
                        a.push("--no-tcp".into());
                    }
                }
                if kind == Kind::CoturnOne {
                    a.push("--relay-threads=1".into());
                }
                (turnserver.clone(), a)
            }
            Kind::FwdPlain | Kind::FwdBatched | Kind::FwdGso => {
                let o = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
                out = Some(o);
                let mut a = vec![
                    "--in".into(),
                    listen.to_string(),
                    "--out".into(),
                    o.to_string(),
                ];
                match kind {
                    Kind::FwdBatched => a.push("--batched".into()),
                    Kind::FwdGso => a.push("--gso".into()),
                    _ => {}
                }
                (tools.forwarder.clone(), a)
            }
        };
        let mut cmd = match wrapper {
            Wrapper::None => Command::new(&program),
            Wrapper::Callgrind(file) => {
                let mut c = Command::new("valgrind");
                c.arg("--tool=callgrind")
                    .arg(format!("--callgrind-out-file={}", file.display()))
                    .arg("--quiet")
                    .arg(&program);
                c
            }
        };
        cmd.args(&args);
        let logfile = fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stderr(logfile.try_clone()?)
            .env("RUST_LOG", "info");
        if kind.is_turn() {
            cmd.stdout(logfile);
        } else {
            cmd.stdout(Stdio::piped());
        }
        let cpu = tools.server_cpu;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Die with the benchmark, whatever way it ends.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(cpu) = cpu {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("spawn {}: {e}", program.display())))?;
        let pid = child.id();
        let mut server = Server {
            kind,
            child: Some(child),
            pid,
            listen,
            out,
            tls_listen,
            log,
        };
        let deadline = Instant::now()
            + match wrapper {
                Wrapper::None => Duration::from_secs(15),
                Wrapper::Callgrind(_) => Duration::from_secs(60),
            };
        let ready = if kind.is_turn() {
            server.wait_turn_ready(deadline)
        } else {
            server.wait_forwarder_ready()
        };
        if let Err(e) = ready {
            let tail = server.log_tail();
            server.stop();
            return Err(io::Error::new(
                e.kind(),
                format!("{} did not start: {e}\n{tail}", kind.key()),
            ));
        }
        Ok(server)
    }

    /// Sends STUN Binding requests until one is answered.
    fn wait_turn_ready(&mut self, deadline: Instant) -> io::Result<()> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut tids = TidSource::new();
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                return Err(io::Error::other(format!("exited with {status}")));
            }
            let tid = tids.next();
            let req = Builder::new(stun::BINDING_REQUEST, tid).fingerprint();
            socket.send_to(&req, self.listen)?;
            if let Ok((n, _)) = socket.recv_from(&mut buf)
                && let Some(p) = Parsed::parse(&buf[..n])
                && p.msg_type == stun::BINDING_SUCCESS
                && p.tid == tid
            {
                return Ok(());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no answer to STUN Binding",
        ))
    }

    fn wait_forwarder_ready(&mut self) -> io::Result<()> {
        let stdout = self
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() == "ready" {
            Ok(())
        } else {
            Err(io::Error::other("forwarder did not print ready"))
        }
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// utime + stime of the whole process (all threads), in clock ticks.
    pub fn cpu_ticks(&self) -> io::Result<u64> {
        proc_cpu_ticks(self.pid)
    }

    /// VmRSS in KiB.
    pub fn rss_kib(&self) -> io::Result<u64> {
        proc_status_kib(self.pid, "VmRSS:")
    }

    /// RssAnon in KiB: the private part of the RSS (heap, stacks), without the shared
    /// pages of the executable and libraries.
    pub fn rss_anon_kib(&self) -> io::Result<u64> {
        proc_status_kib(self.pid, "RssAnon:")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, then SIGKILL after 5 s; always reaps.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            // SAFETY: signalling our own child, which is not yet reaped.
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn proc_cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, s)| s)
        .ok_or_else(|| io::Error::other("bad stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11).and_then(|s| s.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(utime + stime)
}

pub fn self_cpu_ticks() -> u64 {
    proc_cpu_ticks(std::process::id()).unwrap_or(0)
}

pub fn proc_status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
