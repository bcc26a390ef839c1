mod alloc;
mod load;
mod servers;
mod stun;
use relay_bench::sys;

use std::path::PathBuf;
use std::time::Duration;
use servers::{Kind, Server, Tools, Wrapper};

fn main() {
    sys::pin_to_cpu(1).unwrap();
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -20); }
    sys::raise_nofile().unwrap();
    let workdir = PathBuf::from("/tmp/relay-bench-dev");
    std::fs::create_dir_all(&workdir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let tools = Tools {
        relay: PathBuf::from("/work/main/target/release/relay"),
        forwarder: exe.parent().unwrap().join("forwarder"),
        turnserver: servers::which("turnserver"),
        workdir,
        secret: "benchsecret".into(),
        server_cpu: Some(0),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    for key in args[0].split(',') {
        let kind = Kind::from_key(key).unwrap();
        let server = Server::start(kind, &tools, &Wrapper::None, 0).unwrap();
        let creds = stun::Credentials::rest_api("benchsecret", servers::REALM, "bench");
        let path = load::setup(&server, n, &creds).unwrap();
        for dir in [load::Direction::ClientToPeer, load::Direction::PeerToClient] {
            for payload in [100, 1200] {
                let t = load::one_way(&path, &server, dir, payload, Duration::from_millis(300), Duration::from_secs(2)).unwrap();
                println!("{key:15} {} {payload:5} pps {:10.0} offered {:10.0} loss {:.3} cpu/pkt {:.3}us srv {:.2} lg {:.2} corrupt {} errs {}",
                    dir.key(), t.pps(), t.offered_pps(), t.loss(), t.cpu_us_per_packet(), t.server_cpu_share(), t.loadgen_cpu_share(), t.corrupt, t.send_errors);
            }
        }
        let r = load::ping_pong(&path, 2000, Duration::from_millis(200), Duration::from_secs(2), 100).unwrap();
        println!("{key:15} rtt p50 {:.1} p99 {:.1} sent {} recv {}", r.percentile(50.0), r.percentile(99.0), r.sent, r.received);
    }
}
