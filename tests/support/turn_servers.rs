//! TURN servers over TCP and TLS for the client tests (tests/interop_streams.rs,
//! tests/browser.rs): our relay with the stream flags of issue 12, or coturn's `turnserver`
//! (Debian package coturn) as the reference the same clients are proven against. Both
//! listen on 127.0.0.1 and ::1 with a certificate from a test CA made at test time.
#![allow(dead_code)] // each test binary uses a different part of this

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData, SanType,
};

use crate::common::{self, RelayProcess};
use crate::sha256::sha256;

pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// A test CA and a server certificate it signed for 127.0.0.1 and ::1 (IP SANs: the clients
/// are given IP literals), as PEM files in a directory of their own, removed on drop.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// base64(SHA-256(SubjectPublicKeyInfo)) of the server key, as Chromium's
    /// `--ignore-certificate-errors-spki-list` takes it.
    pub spki_sha256: String,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "relay-pki-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir(&dir).expect("create the PKI directory");

        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "relay interop test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("server params");
        params.subject_alt_names = vec![SanType::IpAddress(V4), SanType::IpAddress(V6)];
        params
            .distinguished_name
            .push(DnType::CommonName, "relay interop test server");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");

        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write PEM file");
            path
        };
        Pki {
            ca: write("ca.pem", &ca_cert.pem()),
            cert: write("cert.pem", &cert.pem()),
            key: write("key.pem", &key.serialize_pem()),
            spki_sha256: base64::engine::general_purpose::STANDARD
                .encode(sha256(&key.subject_public_key_info())),
            dir,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `len` consecutive ports free for UDP and TCP on both loopback addresses right now (the
/// servers bind the same port for both).
pub fn free_stream_ports(len: u16) -> u16 {
    for _ in 0..100 {
        let (low, _) = common::free_port_range_on(len, &[V4, V6]);
        let tcp_free = (low..low + len).all(|port| {
            [V4, V6]
                .iter()
                .all(|&ip| TcpListener::bind((ip, port)).is_ok())
        });
        if tcp_free {
            return low;
        }
    }
    panic!("no {len} consecutive ports free for UDP and TCP on 127.0.0.1 and ::1");
}

/// Which server a test runs against.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Ours,
    Coturn,
}

/// A TURN server on 127.0.0.1 and ::1: UDP and TCP on `port`, TLS on `tls_port`, relaying
/// from a port range found free at run time. Killed when dropped.
pub struct TurnServer {
    pub kind: Kind,
    pub port: u16,
    pub tls_port: u16,
    pub relay_ports: (u16, u16),
    pub pki: Pki,
    process: Process,
    /// Our relay's metrics endpoint (coturn's is off).
    metrics: Option<SocketAddr>,
}

enum Process {
    Ours(RelayProcess),
    Coturn(Child),
}

impl TurnServer {
    /// Our relay, TCP with UDP on `--listen-addr`, TLS on `--tls-listen-addr`, metrics on.
    /// `extra` flags are appended (e.g. `--allow-loopback-peers`).
    pub fn ours(relay_port_count: u16, extra: &[&str]) -> TurnServer {
        let pki = Pki::new();
        let base = free_stream_ports(2);
        let (port, tls_port) = (base, base + 1);
        let relay_ports = common::free_port_range_on(relay_port_count, &[V4, V6]);
        let owned: Vec<String> = vec![
            "--listen-addr".into(),
            format!("127.0.0.1:{port}"),
            "--listen-addr".into(),
            format!("[::1]:{port}"),
            "--tls-listen-addr".into(),
            format!("127.0.0.1:{tls_port}"),
            "--tls-listen-addr".into(),
            format!("[::1]:{tls_port}"),
            "--tls-cert-file".into(),
            pki.cert.display().to_string(),
            "--tls-key-file".into(),
            pki.key.display().to_string(),
            "--realm".into(),
            common::REALM.into(),
            "--auth-secret".into(),
            common::SECRET.into(),
            "--lowest-port".into(),
            relay_ports.0.to_string(),
            "--highest-port".into(),
            relay_ports.1.to_string(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
        ];
        let mut args: Vec<&str> = owned.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        let mut relay = RelayProcess::start_with(&args);
        let metrics = relay.metrics_addr();
        TurnServer {
            kind: Kind::Ours,
            port,
            tls_port,
            relay_ports,
            pki,
            process: Process::Ours(relay),
            metrics: Some(metrics),
        }
    }

    /// coturn's turnserver with the same secret and realm, loopback peers allowed (its own
    /// relayed addresses are loopback ones too), no DTLS, CLI or RFC 5780 extras in use.
    pub fn coturn(relay_port_count: u16) -> TurnServer {
        let pki = Pki::new();
        // coturn also listens on each port + 1 (its RFC 5780 "alternative" ports).
        let base = free_stream_ports(4);
        let (port, tls_port) = (base, base + 2);
        let relay_ports = common::free_port_range_on(relay_port_count, &[V4, V6]);
        let log = pki.dir.join("coturn.log");
        let child = Command::new("turnserver")
            .args(["-n", "--no-cli", "--no-dtls", "--simple-log"])
            .args(["--listening-ip", "127.0.0.1", "--listening-ip", "::1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--tls-listening-port", &tls_port.to_string()])
            .arg("--cert")
            .arg(&pki.cert)
            .arg("--pkey")
            .arg(&pki.key)
            .args(["--use-auth-secret", "--static-auth-secret", common::SECRET])
            .args(["--realm", common::REALM, "--allow-loopback-peers"])
            .args(["--min-port", &relay_ports.0.to_string()])
            .args(["--max-port", &relay_ports.1.to_string()])
            .arg("--userdb")
            .arg(pki.dir.join("turndb"))
            .arg("--pidfile")
            .arg(pki.dir.join("turnserver.pid"))
            .arg("--log-file")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver (Debian package coturn; tests/run installs it)");
        let server = TurnServer {
            kind: Kind::Coturn,
            port,
            tls_port,
            relay_ports,
            pki,
            process: Process::Coturn(child),
            metrics: None,
        };
        for ip in [V4, V6] {
            for port in [port, tls_port] {
                wait_for_tcp(SocketAddr::new(ip, port), &server);
            }
        }
        server
    }

    /// Our relay's metrics endpoint; None for coturn.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// One sample of our relay's `/metrics` (0 when absent); None for coturn.
    pub fn metric(&self, sample: &str) -> Option<u64> {
        Some(metric_sum(&common::scrape(self.metrics?), sample))
    }

    pub fn metrics_text(&self) -> String {
        self.metrics.map(common::scrape).unwrap_or_default()
    }

    pub fn responses(&self, method: &str, code: u16) -> Option<u64> {
        self.metric(&format!(
            "relay_responses_total{{method=\"{method}\",code=\"{code}\"}}"
        ))
    }

    pub fn relayed(&self, direction: &str) -> Option<u64> {
        self.metric(&format!(
            "relay_packets_relayed_total{{direction=\"{direction}\"}}"
        ))
    }

    pub fn port_range_arg(&self) -> String {
        format!("{}-{}", self.relay_ports.0, self.relay_ports.1)
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        match &self.process {
            Process::Ours(relay) => relay.seen.join("\n"),
            Process::Coturn(_) => {
                std::fs::read_to_string(self.pki.dir.join("coturn.log")).unwrap_or_default()
            }
        }
    }

    pub fn ca_file(&self) -> &Path {
        &self.pki.ca
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        if let Process::Coturn(child) = &mut self.process {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (bounded) until `addr` accepts TCP connections.
fn wait_for_tcp(addr: SocketAddr, server: &TurnServer) {
    let deadline = Instant::now() + common::WAIT;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{:?} did not accept TCP on {addr} within {:?}\n{}",
        server.kind,
        common::WAIT,
        server.log()
    );
}

/// The sum of the samples of `/metrics` text that match `series`
/// (`name{label="value",...}` or `name`): same name, and every label of `series` among the
/// sample's. So a series keeps matching when the relay adds labels to it (issue 12 labels
/// metrics by `transport`): `relay_allocations` then sums UDP, TCP and TLS. 0 when absent.
pub fn metric_sum(text: &str, series: &str) -> u64 {
    let (name, labels) = split_series(series);
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(sample, _)| {
            let (sample_name, sample_labels) = split_series(sample);
            sample_name == name && labels.iter().all(|l| sample_labels.contains(l))
        })
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum()
}

fn split_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        Some((name, rest)) => (
            name,
            rest.trim_end_matches('}')
                .split(',')
                .filter(|l| !l.is_empty())
                .collect(),
        ),
        None => (series, Vec::new()),
    }
}
