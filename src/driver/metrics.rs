//! The Prometheus text exposition of the core's counters and gauges and the driver's I/O
//! counters. Rendered per scrape; nothing here runs per packet. No per-user labels.

use std::fmt::Write;

use crate::core::counters::{RESPONSE_CODES, RESPONSE_METHODS};
use crate::core::{Counters, Family, Gauges};

use super::IoCounters;
use super::stream::{CLIENT_DROP_REASONS, ClientDrops, Close, Kind, StreamCounters};

pub(super) struct Snapshot<'a> {
    pub counters: &'a Counters,
    pub gauges: &'a Gauges,
    pub io: &'a IoCounters,
    /// Metrics connections closed to make room for a newer one (src/driver/http.rs).
    pub http_evicted: u64,
    pub start_time_unix: u64,
    pub streams: &'a StreamCounters,
    /// Allocations held over TCP and over TLS connections.
    pub stream_allocations: [usize; 2],
}

pub(super) fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(8192);
    let c = s.counters;
    let g = s.gauges;
    family_gauge(
        &mut out,
        "relay_allocations",
        "Live allocations, by relayed address family.",
        g.allocations,
    );
    family_gauge(
        &mut out,
        "relay_permissions",
        "Live permissions, by peer address family.",
        g.permissions,
    );
    family_gauge(
        &mut out,
        "relay_channels",
        "Bound channels, by peer address family.",
        g.channels,
    );

    header(
        &mut out,
        "relay_relay_ports",
        "gauge",
        "Relay ports of the configured range, by family and state (used by allocations, reserved by EVEN-PORT, free).",
    );
    for family in Family::ALL {
        let i = family.index();
        let name = family_label(family);
        let _ = writeln!(
            out,
            "relay_relay_ports{{family=\"{name}\",state=\"used\"}} {}",
            g.ports_used[i]
        );
        let _ = writeln!(
            out,
            "relay_relay_ports{{family=\"{name}\",state=\"reserved\"}} {}",
            g.ports_reserved[i]
        );
        let _ = writeln!(
            out,
            "relay_relay_ports{{family=\"{name}\",state=\"free\"}} {}",
            g.ports_free[i]
        );
    }

    header(
        &mut out,
        "relay_packets_relayed_total",
        "counter",
        "Datagrams relayed, by direction.",
    );
    let _ = writeln!(
        out,
        "relay_packets_relayed_total{{direction=\"client_to_peer\"}} {}",
        c.relayed_to_peer_packets
    );
    let _ = writeln!(
        out,
        "relay_packets_relayed_total{{direction=\"peer_to_client\"}} {}",
        c.relayed_to_client_packets
    );
    header(
        &mut out,
        "relay_bytes_relayed_total",
        "counter",
        "Payload bytes relayed, by direction.",
    );
    let _ = writeln!(
        out,
        "relay_bytes_relayed_total{{direction=\"client_to_peer\"}} {}",
        c.relayed_to_peer_bytes
    );
    let _ = writeln!(
        out,
        "relay_bytes_relayed_total{{direction=\"peer_to_client\"}} {}",
        c.relayed_to_client_bytes
    );

    header(
        &mut out,
        "relay_drops_total",
        "counter",
        "Datagrams dropped without an answer, by reason.",
    );
    for (reason, value) in [
        ("malformed", c.malformed),
        ("unexpected_stun", c.unexpected_stun),
        ("channel_data_no_allocation", c.channel_data_no_allocation),
        ("channel_data_unbound", c.channel_data_unbound),
        ("peer_no_permission", c.peer_no_permission),
        ("peer_no_allocation", c.peer_no_allocation),
        ("peer_too_large", c.peer_too_large),
        ("send_indication", c.send_dropped),
        ("rate_limited", c.rate_limited),
        ("bandwidth_per_allocation", c.bandwidth_per_allocation),
        ("bandwidth_per_user", c.bandwidth_per_user),
        ("bandwidth_total", c.bandwidth_total),
        ("from_own_socket", c.from_own_socket),
        ("send_failed", s.io.send_failed),
        ("recv_failed", s.io.recv_failed),
        ("recv_no_source", s.io.recv_no_source),
        ("unsendable", s.io.unsendable),
    ] {
        let _ = writeln!(out, "relay_drops_total{{reason=\"{reason}\"}} {value}");
    }

    for kind in Kind::ALL {
        let _ = writeln!(
            out,
            "relay_drops_total{{reason=\"write_queue_full\",transport=\"{}\"}} {}",
            kind.label(),
            s.streams.write_queue_full[kind as usize]
        );
    }
    render_client_drops(&mut out, s);
    render_transports(&mut out, s);

    header(
        &mut out,
        "relay_metrics_connections_evicted_total",
        "counter",
        "Connections to this metrics listener closed to make room for a newer one.",
    );
    let _ = writeln!(
        out,
        "relay_metrics_connections_evicted_total {}",
        s.http_evicted
    );

    header(
        &mut out,
        "relay_responses_total",
        "counter",
        "STUN responses sent, by method and code (200: success).",
    );
    for (m, (_, method)) in RESPONSE_METHODS.iter().enumerate() {
        for (k, code) in RESPONSE_CODES.iter().enumerate() {
            let value = c.responses[m][k];
            // Successes always appear, so a rate() over them starts at the first answer;
            // the (many) method × error pairs appear once they happen.
            if value > 0 || *code == 200 {
                let _ = writeln!(
                    out,
                    "relay_responses_total{{method=\"{method}\",code=\"{code}\"}} {value}"
                );
            }
        }
    }

    header(
        &mut out,
        "relay_allocations_created_total",
        "counter",
        "Allocations created.",
    );
    let _ = writeln!(
        out,
        "relay_allocations_created_total {}",
        c.allocations_created
    );
    header(
        &mut out,
        "relay_allocations_expired_total",
        "counter",
        "Allocations that expired without a deleting Refresh.",
    );
    let _ = writeln!(
        out,
        "relay_allocations_expired_total {}",
        c.allocations_expired
    );
    header(
        &mut out,
        "relay_relay_open_failures_total",
        "counter",
        "Relay sockets that could not be bound.",
    );
    let _ = writeln!(
        out,
        "relay_relay_open_failures_total {}",
        c.relay_open_failed
    );
    header(
        &mut out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch.",
    );
    let _ = writeln!(out, "process_start_time_seconds {}", s.start_time_unix);
    if let Some(bytes) = resident_memory_bytes() {
        header(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {bytes}");
    }
    if let Some(limit) = max_fds() {
        header(
            &mut out,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors (each relay socket holds one).",
        );
        let _ = writeln!(out, "process_max_fds {limit}");
    }
    out
}

/// Allocations, connections and TLS handshakes by transport (udp, tcp, tls).
fn render_transports(out: &mut String, s: &Snapshot) {
    let total: usize = s.gauges.allocations.iter().sum::<usize>();
    let streams: usize = s.stream_allocations.iter().sum();
    header(
        out,
        "relay_transport_allocations",
        "gauge",
        "Live allocations, by the transport their client uses.",
    );
    let _ = writeln!(
        out,
        "relay_transport_allocations{{transport=\"udp\"}} {}",
        total.saturating_sub(streams)
    );
    for kind in Kind::ALL {
        let _ = writeln!(
            out,
            "relay_transport_allocations{{transport=\"{}\"}} {}",
            kind.label(),
            s.stream_allocations[kind as usize]
        );
    }
    let c = s.streams;
    transport_series(
        out,
        "relay_connections",
        "gauge",
        "Open TCP and TLS client connections.",
        c.open,
    );
    header(
        out,
        "relay_connections_accepted_total",
        "counter",
        "TCP connections accepted (TLS or plain).",
    );
    let _ = writeln!(out, "relay_connections_accepted_total {}", c.accepted);
    header(
        out,
        "relay_allocations_closed_with_connection_total",
        "counter",
        "Allocations deleted because their TCP or TLS connection closed.",
    );
    let _ = writeln!(
        out,
        "relay_allocations_closed_with_connection_total {}",
        s.counters.allocations_closed_with_connection
    );
    header(
        out,
        "relay_connections_refused_total",
        "counter",
        "TCP connections closed at accept, by the limit they hit.",
    );
    let _ = writeln!(
        out,
        "relay_connections_refused_total{{reason=\"total\"}} {}\nrelay_connections_refused_total{{reason=\"per_ip\"}} {}",
        c.refused_total, c.refused_per_ip
    );
    header(
        out,
        "relay_connections_closed_total",
        "counter",
        "TCP and TLS connections closed, by transport and reason.",
    );
    for kind in Kind::ALL {
        for why in Close::ALL {
            let _ = writeln!(
                out,
                "relay_connections_closed_total{{transport=\"{}\",reason=\"{}\"}} {}",
                kind.label(),
                why.label(),
                c.closed[kind as usize][why as usize]
            );
        }
    }
    transport_series(
        out,
        "relay_connection_write_calls_total",
        "counter",
        "write/writev system calls that sent frames to TCP and TLS clients.",
        c.write_calls,
    );
    header(
        out,
        "relay_connections_pending",
        "gauge",
        "Open TCP and TLS connections without an allocation yet.",
    );
    let _ = writeln!(out, "relay_connections_pending {}", c.pending);
    header(
        out,
        "relay_accept_failures_total",
        "counter",
        "accept() failures on TCP listeners (out of descriptors); the listener is retried.",
    );
    let _ = writeln!(out, "relay_accept_failures_total {}", c.accept_failed);
    header(
        out,
        "relay_tls_handshakes_total",
        "counter",
        "TLS handshakes, by result, and for failed ones by why the connection closed.",
    );
    let _ = writeln!(
        out,
        "relay_tls_handshakes_total{{result=\"ok\"}} {}",
        c.tls_handshakes_ok
    );
    for why in [
        Close::Client,
        Close::TlsError,
        Close::HandshakeTimeout,
        Close::NoAllocation,
        Close::Evicted,
    ] {
        let _ = writeln!(
            out,
            "relay_tls_handshakes_total{{result=\"failed\",reason=\"{}\"}} {}",
            why.label(),
            c.tls_handshakes_failed[why as usize]
        );
    }
    header(
        out,
        "relay_client_bytes_total",
        "counter",
        "Bytes of STUN and ChannelData from and to clients, by transport (TLS: plaintext; out: handed to the socket or queued).",
    );
    for (transport, bytes_in, bytes_out) in [
        ("udp", s.io.udp_bytes_in, s.io.udp_bytes_out),
        ("tcp", c.bytes_in[0], c.bytes_out[0]),
        ("tls", c.bytes_in[1], c.bytes_out[1]),
    ] {
        let _ = writeln!(
            out,
            "relay_client_bytes_total{{transport=\"{transport}\",direction=\"in\"}} {bytes_in}\nrelay_client_bytes_total{{transport=\"{transport}\",direction=\"out\"}} {bytes_out}"
        );
    }
}

/// Drops of client messages (and of frames to clients) by the transport they came over.
fn render_client_drops(out: &mut String, s: &Snapshot) {
    header(
        out,
        "relay_client_drops_total",
        "counter",
        "Client messages dropped without an answer, and frames to clients dropped, by transport and reason.",
    );
    let streams = &s.streams.client_drops;
    let udp = ClientDrops::of(s.counters).minus(streams);
    for (transport, drops) in [("udp", &udp), ("tcp", &streams[0]), ("tls", &streams[1])] {
        for (reason, value) in CLIENT_DROP_REASONS.iter().zip(drops.0) {
            let _ = writeln!(
                out,
                "relay_client_drops_total{{transport=\"{transport}\",reason=\"{reason}\"}} {value}"
            );
        }
    }
    for kind in Kind::ALL {
        let _ = writeln!(
            out,
            "relay_client_drops_total{{transport=\"{}\",reason=\"write_queue_full\"}} {}",
            kind.label(),
            s.streams.write_queue_full[kind as usize]
        );
    }
}

/// Resident set size from /proc/self/statm (its second field, in pages).
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    Some(pages * page_size)
}

/// The soft RLIMIT_NOFILE in force (start-up raised it to the hard limit).
fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A metric with one series per stream transport (`tcp`, `tls`), like `family_gauge` per
/// address family.
fn transport_series<T: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    values: [T; Kind::ALL.len()],
) {
    header(out, name, kind, help);
    for (transport, value) in Kind::ALL.iter().zip(values) {
        let _ = writeln!(out, "{name}{{transport=\"{}\"}} {value}", transport.label());
    }
}

fn family_gauge(out: &mut String, name: &str, help: &str, values: [usize; 2]) {
    header(out, name, "gauge", help);
    for family in Family::ALL {
        let _ = writeln!(
            out,
            "{name}{{family=\"{}\"}} {}",
            family_label(family),
            values[family.index()]
        );
    }
}

fn family_label(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}
