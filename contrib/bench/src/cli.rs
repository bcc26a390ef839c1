//! The benchmark's command line: what to run, how long, where the results go.

use std::path::PathBuf;
use std::time::Duration;

use crate::servers::Kind;

pub const USAGE: &str = "\
usage: bench --relay PATH [options]

Runs this relay, coturn and a bare UDP forwarder one after another on loopback,
interleaved over several trials, and prints medians and ratios (table + JSON).

  --relay PATH        the relay binary (target/release/relay)
  --quick             short run for CI (< 3 minutes), checks --floors
  --trials N          interleaved trials (default 5, quick 3)
  --servers LIST      comma-separated subset of: relay,coturn-1,coturn-default,
                      fwd-plain,fwd-batched,fwd-gso (default: all; quick: all but
                      coturn-default and fwd-plain)
  --allocations N     allocations (each with a channel) carrying the data load (default 8)
  --measure SECS      measuring window of each saturation run (default 2, quick 0.5)
  --memory-allocations N
                      live allocations for the memory/setup-rate test (default 10000,
                      quick 2000)
  --stream-allocations N
                      allocations (each its own TLS connection with a channel) of
                      the TLS set-up-rate test (default 2000, quick 500)
  --no-streams        skip the TCP and TLS workloads
  --only-streams      run only the TCP and TLS workloads (--trials rounds; with
                      --quick, their quick settings)
  --no-counts         skip strace/callgrind counts
  --only-many-flows   run only the many-flows workload (1,000 allocations at 40
                      datagrams/s each way, one send per datagram; --trials rounds,
                      at most 3)
  --json FILE         write the results as JSON to FILE
  --floors FILE       fail (exit 1) if a ratio or count is past its floor in FILE
  --workdir DIR       logs and tool outputs (default: a fresh directory under /tmp)
";

#[derive(Clone, Debug)]
pub struct Args {
    pub relay: PathBuf,
    pub quick: bool,
    /// Only the many-flows workload (part of every full run).
    pub only_flows: bool,
    pub trials: usize,
    pub servers: Vec<Kind>,
    pub allocations: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub ping_rate: u32,
    pub ping_measure: Duration,
    pub memory_allocations: usize,
    /// Trials of the memory / setup-rate test (it is slow with 10,000 allocations).
    pub memory_trials: usize,
    pub counts: bool,
    /// The TCP and TLS workloads (ChannelData over streams, handshakes, set-up over TLS).
    pub streams: bool,
    /// Only the TCP and TLS workloads.
    pub only_streams: bool,
    /// Allocations of the TLS set-up-rate test.
    pub stream_allocations: usize,
    /// Counts (strace, callgrind) of every server, or only of the relay (quick mode: its
    /// floors are absolute numbers).
    pub counts_all: bool,
    pub json: Option<PathBuf>,
    pub floors: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
}

fn value<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
    let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
    v.parse().map_err(|_| format!("{flag}: bad value {v:?}"))
}

pub fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut relay = None;
    let mut quick = false;
    let mut only_flows = false;
    let mut trials = None;
    let mut servers = None;
    let mut allocations = 8usize;
    let mut measure = None;
    let mut memory_allocations = None;
    let mut counts = true;
    let mut streams = true;
    let mut only_streams = false;
    let mut stream_allocations = None;
    let mut json = None;
    let mut floors = None;
    let mut workdir = None;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--relay" => relay = Some(PathBuf::from(value::<String>(&arg, args.next())?)),
            "--quick" => quick = true,
            "--only-many-flows" => only_flows = true,
            "--trials" => trials = Some(value::<usize>(&arg, args.next())?),
            "--servers" => {
                let list: String = value(&arg, args.next())?;
                let mut kinds = Vec::new();
                for key in list.split(',').filter(|k| !k.is_empty()) {
                    kinds.push(
                        Kind::from_key(key)
                            .ok_or_else(|| format!("--servers: unknown server {key:?}"))?,
                    );
                }
                servers = Some(kinds);
            }
            "--allocations" => allocations = value(&arg, args.next())?,
            "--measure" => {
                measure = Some(Duration::from_secs_f64(value::<f64>(&arg, args.next())?))
            }
            "--memory-allocations" => memory_allocations = Some(value::<usize>(&arg, args.next())?),
            "--no-counts" => counts = false,
            "--no-streams" => streams = false,
            "--only-streams" => only_streams = true,
            "--stream-allocations" => stream_allocations = Some(value::<usize>(&arg, args.next())?),
            "--json" => json = Some(PathBuf::from(value::<String>(&arg, args.next())?)),
            "--floors" => floors = Some(PathBuf::from(value::<String>(&arg, args.next())?)),
            "--workdir" => workdir = Some(PathBuf::from(value::<String>(&arg, args.next())?)),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let relay = relay.ok_or("--relay PATH is required")?;
    if quick && only_flows {
        return Err("--only-many-flows is not part of --quick".into());
    }
    if only_streams && (only_flows || !streams) {
        return Err("--only-streams: not with --only-many-flows or --no-streams".into());
    }
    let stream_allocations = stream_allocations.unwrap_or(if quick { 500 } else { 2000 });
    if stream_allocations == 0 || stream_allocations > 8000 {
        return Err("--stream-allocations: 1..=8000".into());
    }
    if allocations == 0 || allocations > 1000 {
        return Err("--allocations: 1..=1000".into());
    }
    let trials = trials.unwrap_or(if quick { 3 } else { 5 });
    if trials == 0 || trials > 50 {
        return Err("--trials: 1..=50".into());
    }
    let measure = measure.unwrap_or(if quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    });
    if measure < Duration::from_millis(100) || measure > Duration::from_secs(60) {
        return Err("--measure: 0.1..=60 seconds".into());
    }
    let memory_allocations = memory_allocations.unwrap_or(if quick { 2000 } else { 10_000 });
    if memory_allocations == 0 || memory_allocations > 11_000 {
        return Err(
            "--memory-allocations: 1..=11000 (the relay port range has 12,000 ports)".into(),
        );
    }
    let servers = servers.unwrap_or_else(|| {
        if quick {
            vec![Kind::Relay, Kind::CoturnOne, Kind::FwdBatched, Kind::FwdGso]
        } else {
            Kind::ALL.to_vec()
        }
    });
    if servers.is_empty() {
        return Err("--servers: empty list".into());
    }
    Ok(Args {
        relay,
        quick,
        only_flows,
        trials,
        servers,
        allocations,
        warmup: if quick {
            Duration::from_millis(200)
        } else {
            Duration::from_millis(500)
        },
        measure,
        ping_rate: 1000,
        ping_measure: if quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(3)
        },
        memory_allocations,
        memory_trials: if quick { 1 } else { 3 },
        counts: counts && !only_streams,
        streams,
        only_streams,
        stream_allocations,
        counts_all: !quick,
        json,
        floors,
        workdir,
    })
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn only_many_flows_is_a_full_run_option() {
        let a = parse(args(&["--relay", "r", "--only-many-flows"])).expect("parses");
        assert!(a.only_flows && !a.quick);
        assert!(!parse(args(&["--relay", "r"])).expect("parses").only_flows);
        assert_eq!(
            parse(args(&["--relay", "r", "--quick", "--only-many-flows"])).err(),
            Some("--only-many-flows is not part of --quick".to_string())
        );
    }

    #[test]
    fn only_streams_excludes_no_streams_and_many_flows() {
        let a = parse(args(&["--relay", "r", "--only-streams", "--quick"])).expect("parses");
        assert!(a.only_streams && a.streams && !a.counts);
        assert_eq!(a.stream_allocations, 500);
        let full = parse(args(&["--relay", "r"])).expect("parses");
        assert!(full.streams && !full.only_streams);
        assert_eq!(full.stream_allocations, 2000);
        for bad in [
            ["--relay", "r", "--only-streams", "--no-streams"],
            ["--relay", "r", "--only-streams", "--only-many-flows"],
        ] {
            assert_eq!(
                parse(args(&bad)).err(),
                Some("--only-streams: not with --only-many-flows or --no-streams".to_string())
            );
        }
    }
}
