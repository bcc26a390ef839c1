//! Independent TURN clients through our relay on loopback: aioice's TURN client (PyPI) and
//! coturn's turnutils_uclient/turnutils_peer (Debian). `tests/run` installs both; run it
//! rather than bare `cargo test` on a fresh machine.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{RelayProcess, credentials};

/// The interpreter of the venv `tests/run` set up.
fn python() -> String {
    std::env::var("RELAY_PYTHON").unwrap_or_else(|_| {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
        assert!(
            std::path::Path::new(venv).exists(),
            "no Python venv with aioice: run tests/run (it installs what the interop tests need)"
        );
        venv.to_owned()
    })
}

fn relay(lowest: &str, highest: &str) -> RelayProcess {
    RelayProcess::start(&[
        "--auth-secret",
        common::SECRET,
        "--allow-loopback-peers",
        "--lowest-port",
        lowest,
        "--highest-port",
        highest,
    ])
}

/// Runs a command to completion within `limit`, killing it otherwise.
fn run_bounded(mut command: Command, limit: Duration) -> (bool, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let output = child.wait_with_output().expect("output");
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            return (status.success(), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "timed out after {limit:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn aioice_relays_through_channels_without_loss() {
    let relay = relay("44000", "44099");
    for size in ["100", "1200"] {
        let (username, password) = credentials("aioice");
        let mut command = Command::new(python());
        command
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/interop/aioice_relay.py"
            ))
            .args([
                "--server",
                &relay.addr.to_string(),
                "--username",
                &username,
                "--password",
                &password,
            ])
            .args(["--count", "300", "--size", size, "--timeout", "20"]);
        let (ok, output) = run_bounded(command, Duration::from_secs(40));
        assert!(ok, "aioice interop failed (size {size}):\n{output}");
        assert!(output.contains("\"lost\": 0"), "{output}");
    }
}

/// Kills the process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    // Held only long enough to learn a free port; turnutils_peer cannot report the one it got.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr").port()
}

#[test]
fn coturn_uclient_relays_send_indications_without_loss() {
    let relay = relay("44100", "44199");
    let peer_port = free_udp_port().to_string();
    let peer = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &peer_port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnutils_peer (Debian package coturn; tests/run installs it)");
    let _peer = Guard(peer);
    std::thread::sleep(Duration::from_millis(200));
    let mut command = Command::new("turnutils_uclient");
    command
        .args([
            "-W",
            common::SECRET,
            "-u",
            "uclient",
            "-p",
            &relay.addr.port().to_string(),
        ])
        .args(["-e", "127.0.0.1", "-r", &peer_port])
        // -s: Send/Data indications; -c: no RTCP pair; 4 clients, 100 messages each.
        .args(["-s", "-c", "-m", "4", "-n", "100", "-l", "1000", "-z", "5"])
        .arg("127.0.0.1");
    let (ok, output) = run_bounded(command, Duration::from_secs(60));
    assert!(ok, "turnutils_uclient failed:\n{output}");
    assert!(
        output.contains("Total lost packets 0 (0.000000%)"),
        "uclient saw loss or did not finish:\n{output}"
    );
    assert!(output.contains("tot_recv_bytes ~ 400000"), "{output}");
}
