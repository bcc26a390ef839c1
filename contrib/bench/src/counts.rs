//! Counts that machine noise does not move: system calls per relayed datagram (strace -c)
//! and user-space instructions per relayed datagram (callgrind), both over the same fixed
//! workload of bursts (load::fixed_bursts).

use std::fs;
use std::io;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::{self, Direction, Path};
use crate::servers::{Kind, Server, Tools, Wrapper};
use crate::stun::Credentials;

/// The fixed workload: BURSTS × BURST datagrams of PAYLOAD bytes.
pub const BURSTS: usize = 200;
pub const BURST: usize = 64;
pub const PAYLOAD: usize = 100;

#[derive(Clone, Debug, Default)]
pub struct SyscallCount {
    pub packets: u64,
    pub sent: u64,
    pub total: u64,
    /// (syscall, calls), most frequent first.
    pub by_name: Vec<(String, u64)>,
}

impl SyscallCount {
    pub fn per_packet(&self) -> f64 {
        self.total as f64 / self.packets.max(1) as f64
    }
}

#[derive(Clone, Debug, Default)]
pub struct InstructionCount {
    pub packets: u64,
    pub sent: u64,
    pub instructions: u64,
}

impl InstructionCount {
    pub fn per_packet(&self) -> f64 {
        self.instructions as f64 / self.packets.max(1) as f64
    }
}

/// Attaches `strace -c -f` to a running server, runs the fixed workload, detaches.
pub fn strace(
    server: &Server,
    path: &Path,
    dir: Direction,
    workdir: &FsPath,
) -> io::Result<SyscallCount> {
    let out = workdir.join(format!("strace-{}-{}.txt", server.kind.key(), dir.key()));
    let mut child = Command::new("strace")
        .args(["-c", "-f", "-q", "-o"])
        .arg(&out)
        .arg("-p")
        .arg(server.pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("strace: {e} (apt-get install strace)")))?;
    // Wait until every thread of the server is traced.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if all_traced(server.pid, child.id()) {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("strace did not attach"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let result = load::fixed_bursts(path, dir, BURSTS, BURST, PAYLOAD, Duration::from_secs(2));
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let _ = child.wait();
    let (sent, packets) = result?;
    let text = fs::read_to_string(&out)?;
    let mut by_name = parse_strace_summary(&text);
    by_name.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let total = by_name.iter().map(|(_, c)| c).sum();
    Ok(SyscallCount {
        packets,
        sent,
        total,
        by_name,
    })
}

fn all_traced(pid: u32, tracer: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for t in tasks.flatten() {
        let status = fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let traced = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
            == Some(tracer);
        if !traced {
            return false;
        }
        any = true;
    }
    any
}

/// Parses the table of `strace -c`: "% time seconds usecs/call calls [errors] syscall".
pub fn parse_strace_summary(text: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[0].starts_with('%') || f[0].starts_with('-') {
            continue;
        }
        let name = f[f.len() - 1];
        if name == "total" || f[0].parse::<f64>().is_err() {
            continue;
        }
        if let Ok(calls) = f[3].parse::<u64>() {
            out.push((name.to_string(), calls));
        }
    }
    out
}

/// Runs a server under callgrind, sets up one allocation, warms up, zeroes the counters,
/// runs the fixed workload and dumps: total Ir over the workload.
pub fn callgrind(
    kind: Kind,
    tools: &Tools,
    creds: &Credentials,
    dir: Direction,
    seq: usize,
) -> io::Result<InstructionCount> {
    let out: PathBuf = tools
        .workdir
        .join(format!("callgrind-{}-{}.out", kind.key(), dir.key()));
    let server = Server::start(kind, tools, &Wrapper::Callgrind(out.clone()), seq)?;
    let path = load::setup(&server, 1, creds)?;
    // Warm-up: first-use paths (lazy initialisation, first send on a socket) are not the
    // steady state.
    load::fixed_bursts(&path, dir, 10, BURST, PAYLOAD, Duration::from_secs(10))?;
    callgrind_control(&["-z"], server.pid)?;
    let (sent, packets) =
        load::fixed_bursts(&path, dir, BURSTS, BURST, PAYLOAD, Duration::from_secs(10))?;
    callgrind_control(&["-d"], server.pid)?;
    let instructions = newest_dump_total(&out)?;
    drop(path);
    drop(server);
    Ok(InstructionCount {
        packets,
        sent,
        instructions,
    })
}

fn callgrind_control(args: &[&str], pid: u32) -> io::Result<()> {
    let status = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "callgrind_control {args:?} failed"
        )))
    }
}

/// The "summary:" (or "totals:") Ir of the highest-numbered dump `<out>.N`.
fn newest_dump_total(out: &FsPath) -> io::Result<u64> {
    let dir = out.parent().unwrap_or(FsPath::new("."));
    let stem = out
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let mut best: Option<(u32, PathBuf)> = None;
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name
            .strip_prefix(&format!("{stem}."))
            .and_then(|n| n.parse::<u32>().ok())
            && best.as_ref().is_none_or(|(b, _)| n > *b)
        {
            best = Some((n, e.path()));
        }
    }
    let (_, file) = best.ok_or_else(|| io::Error::other("no callgrind dump"))?;
    let text = fs::read_to_string(file)?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| io::Error::other("no summary line in callgrind dump"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strace_table() {
        let text = "% time     seconds  usecs/call     calls    errors syscall\n\
------ ----------- ----------- --------- --------- ----------------\n\
 60.00    0.000600           4       128           sendto\n\
 30.00    0.000300           2       130         2 recvfrom\n\
 10.00    0.000100          50         2           epoll_wait\n\
------ ----------- ----------- --------- --------- ----------------\n\
100.00    0.001000           3       260         2 total\n";
        let v = parse_strace_summary(text);
        assert_eq!(
            v,
            vec![
                ("sendto".into(), 128),
                ("recvfrom".into(), 130),
                ("epoll_wait".into(), 2)
            ]
        );
    }
}
