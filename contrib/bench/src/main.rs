//! `bench`: this relay side by side with coturn and a bare UDP forwarder, on loopback.
//! Usually run through `contrib/bench/run`, which builds everything first. See README.md.

mod alloc;
mod cli;
mod counts;
mod flows;
mod json;
mod load;
mod report;
mod run;
mod servers;
mod stream_client;
mod stream_run;
mod streams;
mod stun;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use json::Json;
use relay_bench::sys;
use servers::Tools;

/// The CPU the servers run on; the load generator takes the others.
const SERVER_CPU: usize = 0;

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match bench(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs everything; Ok(false) when a floor or the load-generator check failed.
fn bench(args: &cli::Args) -> Result<bool, String> {
    if !args.relay.is_file() {
        return Err(format!(
            "--relay {}: no such file (build it with cargo build --release)",
            args.relay.display()
        ));
    }
    let floors = match &args.floors {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let json = Json::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            report::parse_floors(&json).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => Vec::new(),
    };
    let cpus = sys::online_cpus();
    // The load generator on the other CPUs, the server on SERVER_CPU: they never compete.
    let server_cpu = if cpus >= 2 {
        let others: Vec<usize> = (0..cpus).filter(|c| *c != SERVER_CPU).collect();
        sys::pin_to_cpus(&others).map_err(|e| format!("cannot pin the load generator: {e}"))?;
        Some(SERVER_CPU)
    } else {
        eprintln!(
            "bench: one CPU only: server and load generator share it (figures are not comparable)"
        );
        None
    };
    // Best effort: ahead of the compilers that may share the machine (root only).
    let _priority = sys::raise_priority();
    sys::raise_nofile().map_err(|e| format!("cannot raise RLIMIT_NOFILE: {e}"))?;
    let workdir = args.workdir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("relay-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&workdir).map_err(|e| format!("{}: {e}", workdir.display()))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    let cert = if args.streams {
        match tls::make_cert(&workdir) {
            Ok(files) => Some(files),
            Err(e) => {
                problems.push(format!(
                    "relay: no certificate, TCP/TLS workloads skipped: {e}"
                ));
                None
            }
        }
    } else {
        None
    };
    let tools = Tools {
        relay: args.relay.clone(),
        forwarder: exe
            .parent()
            .map(|d| d.join("forwarder"))
            .unwrap_or_else(|| PathBuf::from("forwarder")),
        turnserver: servers::which("turnserver"),
        workdir: workdir.clone(),
        secret: "bench-secret".into(),
        server_cpu,
        cert,
    };
    let servers = run::available(args, &tools, &mut problems);
    let mut args = args.clone();
    args.servers = servers.clone();
    if args.counts {
        for tool in ["strace", "valgrind", "callgrind_control"] {
            if servers::which(tool).is_none() {
                problems.push(format!(
                    "{tool} not installed: counts skipped (contrib/bench/run installs it)"
                ));
                args.counts = false;
            }
        }
    }
    let machine = run::machine();
    let started = std::time::SystemTime::now();
    let creds = stun::Credentials::rest_api(&tools.secret, servers::REALM, "bench");
    let mut results = run::run(&args, &tools, &creds);
    results.problems.splice(0..0, problems);

    let (loadgen_ok, loadgen_lines) = report::loadgen_check(&results, &servers);
    let (floors_ok, floor_lines) = report::check_floors(&results, &floors, &servers);
    let elapsed = started.elapsed().map_or(0.0, |d| d.as_secs_f64());

    println!();
    for (k, v) in &machine {
        println!("{k}: {v}");
    }
    println!(
        "mode: {}, {} trials interleaved, {} allocations with a channel, {:.1} s per saturation run, {:.0} s in all\n",
        if args.quick {
            "quick"
        } else if args.only_streams {
            "TCP/TLS only"
        } else if args.only_flows {
            "many flows only"
        } else {
            "full"
        },
        args.trials,
        args.allocations,
        args.measure.as_secs_f64(),
        elapsed
    );
    for k in &servers {
        println!("{:>14}: {}", k.key(), k.describe());
    }
    println!();
    print!("{}", report::table(&results, &servers));
    println!("\nload generator (must drive the fastest forwarder at least as hard as any server):");
    for l in &loadgen_lines {
        println!("  {l}");
    }
    if !results.notes.is_empty() {
        println!("\nnotes:");
        for n in &results.notes {
            println!("  {n}");
        }
    }
    if !floor_lines.is_empty() {
        println!(
            "\nfloors ({}):",
            args.floors
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        );
        for l in &floor_lines {
            println!("  {l}");
        }
    }
    if !results.problems.is_empty() {
        println!("\nproblems:");
        for p in &results.problems {
            println!("  {p}");
        }
    }
    if let Some(path) = &args.json {
        let mut config = Json::obj();
        config
            .set("mode", if args.quick { "quick" } else { "full" })
            .set("trials", args.trials)
            .set("allocations", args.allocations)
            .set("measure_secs", args.measure.as_secs_f64())
            .set("memory_allocations", args.memory_allocations)
            .set("elapsed_secs", elapsed)
            .set(
                "unix_time",
                started
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            );
        let json = report::to_json(
            &results,
            &servers,
            &machine,
            config,
            &loadgen_lines,
            &floor_lines,
        );
        std::fs::write(path, json.pretty()).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("\nJSON: {}", path.display());
    }
    println!("logs: {}", workdir.display());
    let relay_ok = !results.problems.iter().any(|p| p.starts_with("relay"));
    if !relay_ok {
        println!("FAILED: the relay had problems (see above)");
    }
    if !floors_ok {
        println!("FAILED: a floor was not met");
    }
    // A load generator at its limit caps the forwarders and the relay alike, pushing the
    // ratios towards 1: it cannot hide a regression below the floors measured against the
    // slower references (fwd-batched, coturn), so it warns rather than fails.
    if !loadgen_ok {
        println!(
            "WARNING: the load generator did not drive the fastest forwarder clearly harder than the servers"
        );
    }
    Ok(relay_ok && floors_ok)
}
