//! Medians, ratios, the table, the JSON and the floors a quick run must stay above.

use std::fmt::Write;

use crate::json::Json;
use crate::run::{DIRECTIONS, PAYLOADS, Results, median, scenario_key};
use crate::servers::Kind;
use crate::stream_run::{TRANSPORTS, stream_key};

/// A row of the table: metric key, label, scale (the value is divided by it), decimals,
/// and whether smaller is better (for reading the ratios).
struct Row {
    metric: String,
    label: String,
    scale: f64,
    decimals: usize,
}

fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for dir in DIRECTIONS {
        for payload in PAYLOADS {
            let key = scenario_key(dir, payload);
            let label = format!("{} {payload} B", dir.key());
            rows.push(Row {
                metric: format!("{key}.pps"),
                label: format!("{label}: relayed kpps"),
                scale: 1e3,
                decimals: 1,
            });
            rows.push(Row {
                metric: format!("{key}.cpu_us_per_packet"),
                label: format!("{label}: CPU µs/packet"),
                scale: 1.0,
                decimals: 2,
            });
            rows.push(Row {
                metric: format!("{key}.loss"),
                label: format!("{label}: loss %"),
                scale: 0.01,
                decimals: 1,
            });
            rows.push(Row {
                metric: format!("{key}.offered_pps"),
                label: format!("{label}: offered kpps"),
                scale: 1e3,
                decimals: 0,
            });
            rows.push(Row {
                metric: format!("{key}.server_cpu_share"),
                label: format!("{label}: server CPU %"),
                scale: 0.01,
                decimals: 0,
            });
        }
    }
    for (transport, dir, payload) in TRANSPORTS.into_iter().flat_map(|t| {
        DIRECTIONS
            .into_iter()
            .flat_map(move |d| PAYLOADS.map(move |p| (t, d, p)))
    }) {
        {
            let key = stream_key(transport, dir, payload);
            let label = format!(
                "{} {} {payload} B",
                transport.key().to_uppercase(),
                dir.key()
            );
            rows.push(Row {
                metric: format!("{key}.pps"),
                label: format!("{label}: relayed kpps"),
                scale: 1e3,
                decimals: 1,
            });
            rows.push(Row {
                metric: format!("{key}.cpu_us_per_packet"),
                label: format!("{label}: CPU µs/packet"),
                scale: 1.0,
                decimals: 2,
            });
            rows.push(Row {
                metric: format!("{key}.server_cpu_share"),
                label: format!("{label}: server CPU %"),
                scale: 0.01,
                decimals: 0,
            });
            rows.push(Row {
                metric: format!("{key}.loadgen_cpu_share"),
                label: format!("{label}: client CPU %"),
                scale: 0.01,
                decimals: 0,
            });
            rows.push(Row {
                metric: format!("{key}.loss"),
                label: format!("{label}: loss %"),
                scale: 0.01,
                decimals: 1,
            });
        }
    }
    rows.push(Row {
        metric: "tls.handshakes_per_sec".into(),
        label: "TLS handshakes/s (+ Binding)".into(),
        scale: 1.0,
        decimals: 0,
    });
    rows.push(Row {
        metric: "tls.cpu_us_per_handshake".into(),
        label: "TLS: server CPU µs/handshake".into(),
        scale: 1.0,
        decimals: 0,
    });
    rows.push(Row {
        metric: "tls.handshake_server_cpu_share".into(),
        label: "TLS handshakes: server CPU %".into(),
        scale: 0.01,
        decimals: 0,
    });
    rows.push(Row {
        metric: "tls.handshake_loadgen_cpu_share".into(),
        label: "TLS handshakes: client CPU %".into(),
        scale: 0.01,
        decimals: 0,
    });
    rows.push(Row {
        metric: "tls.allocations_per_sec".into(),
        label: "TLS: connect+TLS+Allocate+Bind /s".into(),
        scale: 1.0,
        decimals: 0,
    });
    rows.push(Row {
        metric: "memory.kib_per_tls_connection".into(),
        label: "KiB per idle TLS connection".into(),
        scale: 1.0,
        decimals: 1,
    });
    rows.push(Row {
        metric: "memory.kib_per_tls_allocation".into(),
        label: "KiB per TLS connection+allocation".into(),
        scale: 1.0,
        decimals: 1,
    });
    rows.push(Row {
        metric: "rtt.p50_us".into(),
        label: "ping-pong 1000/s: RTT p50 µs".into(),
        scale: 1.0,
        decimals: 0,
    });
    rows.push(Row {
        metric: "rtt.p99_us".into(),
        label: "ping-pong 1000/s: RTT p99 µs".into(),
        scale: 1.0,
        decimals: 0,
    });
    rows.push(Row {
        metric: "setup.allocations_per_sec".into(),
        label: "allocations/s (with auth)".into(),
        scale: 1.0,
        decimals: 0,
    });
    rows.push(Row {
        metric: "nat.allocated_share".into(),
        label: "NAT: 200 clients on one IP: allocated %".into(),
        scale: 0.01,
        decimals: 0,
    });
    rows.push(Row {
        metric: "nat.secs_to_last".into(),
        label: "NAT: s until all allocated or gave up (7 tries)".into(),
        scale: 1.0,
        decimals: 2,
    });
    rows.push(Row {
        metric: "flows.cpu_us_per_packet".into(),
        label: "many flows: CPU µs/packet".into(),
        scale: 1.0,
        decimals: 2,
    });
    rows.push(Row {
        metric: "flows.server_cpu_share".into(),
        label: "many flows: server CPU %".into(),
        scale: 0.01,
        decimals: 1,
    });
    rows.push(Row {
        metric: "flows.c2p.loss".into(),
        label: "many flows: loss c2p %".into(),
        scale: 0.01,
        decimals: 2,
    });
    rows.push(Row {
        metric: "flows.p2c.loss".into(),
        label: "many flows: loss p2c %".into(),
        scale: 0.01,
        decimals: 2,
    });
    rows.push(Row {
        metric: "memory.idle_rss_kib".into(),
        label: "RSS idle MiB".into(),
        scale: 1024.0,
        decimals: 2,
    });
    rows.push(Row {
        metric: "memory.idle_anon_kib".into(),
        label: "RSS idle, private (RssAnon) MiB".into(),
        scale: 1024.0,
        decimals: 2,
    });
    rows.push(Row {
        metric: "memory.loaded_rss_kib".into(),
        label: "RSS with the allocations MiB".into(),
        scale: 1024.0,
        decimals: 1,
    });
    rows.push(Row {
        metric: "memory.kib_per_allocation".into(),
        label: "KiB per allocation+channel".into(),
        scale: 1.0,
        decimals: 2,
    });
    for dir in DIRECTIONS {
        rows.push(Row {
            metric: format!("count.syscalls_per_packet.{}", dir.key()),
            label: format!("syscalls/packet {}", dir.key()),
            scale: 1.0,
            decimals: 3,
        });
        rows.push(Row {
            metric: format!("count.instructions_per_packet.{}", dir.key()),
            label: format!("user instructions/packet {}", dir.key()),
            scale: 1.0,
            decimals: 0,
        });
    }
    rows
}

/// The ratio columns: the relay against these two.
const VERSUS: [Kind; 3] = [Kind::FwdBatched, Kind::FwdGso, Kind::CoturnOne];

pub fn table(results: &Results, servers: &[Kind]) -> String {
    let mut out = String::new();
    let width = 34;
    let _ = write!(out, "{:width$}", "medians");
    for k in servers {
        let _ = write!(out, " {:>14}", k.key());
    }
    let versus: Vec<Kind> = VERSUS
        .into_iter()
        .filter(|v| servers.contains(v) && servers.contains(&Kind::Relay))
        .collect();
    for v in &versus {
        let _ = write!(out, " {:>16}", format!("relay/{}", v.key()));
    }
    out.push('\n');
    for row in rows() {
        if servers
            .iter()
            .all(|k| results.median(*k, &row.metric).is_none())
        {
            continue;
        }
        let _ = write!(out, "{:width$}", row.label);
        for k in servers {
            match results.median(*k, &row.metric) {
                Some(v) => {
                    let _ = write!(out, " {:>14.*}", row.decimals, v / row.scale);
                }
                None => {
                    let _ = write!(out, " {:>14}", "-");
                }
            }
        }
        for v in &versus {
            match ratio(results, Kind::Relay, *v, &row.metric) {
                Some(r) => {
                    let _ = write!(out, " {:>16.2}", r);
                }
                None => {
                    let _ = write!(out, " {:>16}", "-");
                }
            }
        }
        out.push('\n');
    }
    out
}

pub fn ratio(results: &Results, of: Kind, vs: Kind, metric: &str) -> Option<f64> {
    let a = results.median(of, metric)?;
    let b = results.median(vs, metric)?;
    if b == 0.0 { None } else { Some(a / b) }
}

/// Whether the load generator is not the bottleneck, per saturation scenario: it offered
/// the fastest forwarder at least 1.2 times what the best TURN server relayed (so the
/// servers were saturated by offered load, not starved of it: the excess is the loss), and
/// that forwarder relayed at least 90% of the best server (within the noise of medians: it
/// is the ceiling). Lines for the report.
pub fn loadgen_check(results: &Results, servers: &[Kind]) -> (bool, Vec<String>) {
    let mut ok = true;
    let mut lines = Vec::new();
    let forwarders = [Kind::FwdGso, Kind::FwdBatched, Kind::FwdPlain];
    for dir in DIRECTIONS {
        for payload in PAYLOADS {
            let key = scenario_key(dir, payload);
            let metric = format!("{key}.pps");
            let fastest = |kinds: &mut dyn Iterator<Item = Kind>| {
                kinds
                    .filter_map(|k| results.median(k, &metric).map(|v| (k, v)))
                    .max_by(|a, b| a.1.total_cmp(&b.1))
            };
            let Some((fwd_kind, fwd)) =
                fastest(&mut forwarders.iter().copied().filter(|k| servers.contains(k)))
            else {
                lines.push("load generator check skipped: no forwarder run".into());
                return (true, lines);
            };
            let offered = results
                .median(fwd_kind, &format!("{key}.offered_pps"))
                .unwrap_or(0.0);
            if let Some((k, v)) = fastest(&mut servers.iter().copied().filter(|k| k.is_turn())) {
                let pass = offered >= 1.2 * v && fwd >= 0.9 * v;
                ok &= pass;
                lines.push(format!(
                    "{key}: offered to {} {:.0} kpps, it relayed {:.1} kpps; best TURN server {} {:.1} kpps: {}",
                    fwd_kind.key(),
                    offered / 1e3,
                    fwd / 1e3,
                    k.key(),
                    v / 1e3,
                    if pass { "ok" } else { "LOAD GENERATOR MAY BE THE LIMIT" }
                ));
            }
        }
    }
    (ok, lines)
}

/// One floor: `of`'s median of `metric`, divided by `vs`'s median if given, must be at least
/// `min` and at most `max`.
#[derive(Debug)]
pub struct Floor {
    pub metric: String,
    pub of: Kind,
    pub vs: Option<Kind>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

pub fn parse_floors(json: &Json) -> Result<Vec<Floor>, String> {
    let Some(Json::Arr(items)) = json.get("floors") else {
        return Err("floors file: no \"floors\" array".into());
    };
    let mut floors = Vec::new();
    for item in items {
        let text = |k: &str| match item.get(k) {
            Some(Json::Str(s)) => Some(s.clone()),
            _ => None,
        };
        let metric = text("metric").ok_or("floor without \"metric\"")?;
        let kind = |k: &str| -> Result<Option<Kind>, String> {
            match text(k) {
                Some(s) => Kind::from_key(&s)
                    .map(Some)
                    .ok_or_else(|| format!("floor {metric}: unknown server {s:?}")),
                None => Ok(None),
            }
        };
        let of = kind("of")?.unwrap_or(Kind::Relay);
        let vs = kind("vs")?;
        let min = item.get("min").and_then(Json::as_f64);
        let max = item.get("max").and_then(Json::as_f64);
        if min.is_none() && max.is_none() {
            return Err(format!("floor {metric}: neither min nor max"));
        }
        floors.push(Floor {
            metric,
            of,
            vs,
            min,
            max,
        });
    }
    Ok(floors)
}

/// Checks every floor whose servers were run; a floor whose figure is missing fails.
pub fn check_floors(results: &Results, floors: &[Floor], servers: &[Kind]) -> (bool, Vec<String>) {
    let mut ok = true;
    let mut lines = Vec::new();
    for f in floors {
        if !servers.contains(&f.of) || f.vs.is_some_and(|v| !servers.contains(&v)) {
            continue;
        }
        let (value, what) = match f.vs {
            Some(vs) => (
                ratio(results, f.of, vs, &f.metric),
                format!("{} {} / {}", f.metric, f.of.key(), vs.key()),
            ),
            None => (
                results.median(f.of, &f.metric),
                format!("{} {}", f.metric, f.of.key()),
            ),
        };
        let Some(value) = value else {
            ok = false;
            lines.push(format!("FAIL {what}: not measured"));
            continue;
        };
        let pass = f.min.is_none_or(|m| value >= m) && f.max.is_none_or(|m| value <= m);
        ok &= pass;
        let bound = match (f.min, f.max) {
            (Some(a), Some(b)) => format!("in [{a}, {b}]"),
            (Some(a), None) => format!(">= {a}"),
            (None, Some(b)) => format!("<= {b}"),
            (None, None) => String::new(),
        };
        lines.push(format!(
            "{} {what} = {value:.3} (floor: {bound})",
            if pass { "ok  " } else { "FAIL" }
        ));
    }
    (ok, lines)
}

pub fn to_json(
    results: &Results,
    servers: &[Kind],
    machine: &[(String, String)],
    config: Json,
    loadgen: &[String],
    floors: &[String],
) -> Json {
    let mut root = Json::obj();
    let mut m = Json::obj();
    for (k, v) in machine {
        m.set(k, v.as_str());
    }
    root.set("machine", m);
    root.set("config", config);
    let mut s = Json::obj();
    for k in servers {
        let mut metrics = Json::obj();
        if let Some(map) = results.samples.get(k) {
            for (metric, samples) in map {
                let mut o = Json::obj();
                o.set("median", median(samples).unwrap_or(f64::NAN));
                o.set("samples", samples.clone());
                metrics.set(metric, o);
            }
        }
        s.set(k.key(), metrics);
    }
    root.set("servers", s);
    let mut ratios = Json::obj();
    for v in VERSUS {
        let mut r = Json::obj();
        for row in rows() {
            if let Some(x) = ratio(results, Kind::Relay, v, &row.metric) {
                r.set(&row.metric, x);
            }
        }
        ratios.set(&format!("relay/{}", v.key()), r);
    }
    root.set("ratios", ratios);
    let strs = |v: &[String]| Json::Arr(v.iter().map(|s| Json::Str(s.clone())).collect());
    root.set("loadgen_check", strs(loadgen));
    root.set("floors", strs(floors));
    root.set("notes", strs(&results.notes));
    root.set("problems", strs(&results.problems));
    root
}
