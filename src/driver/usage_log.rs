//! The usage record of an allocation that ended, as one log record (target `relay::usage`,
//! level info) whose key-value fields are the record: JSON members with `--log-format json`,
//! `key=value` after the message in text. The client's address only when the operator asked
//! for it (`--log-client-addresses`).

use log::kv::Value;
use log::{Level, Record};

use crate::core::UsageRecord;

/// The target of usage records (filter or route on it).
pub const TARGET: &str = "relay::usage";

/// Logs `record`; `transport` is "udp", "tcp" or "tls" (the driver knows which).
/// Written whatever `--log-level` is (straight to the logger, past `log::max_level()`): a
/// record is an account of usage, not a diagnostic, and `--log-level warn` must not drop
/// what billing and abuse reports rely on. `RUST_LOG=relay::usage=off` can still drop them.
pub(super) fn log(record: &UsageRecord, transport: &str, with_client: bool) {
    let relayed = record
        .relayed
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let client = record.client.to_string();
    let usage = &record.usage;
    let duration_ms = u64::try_from(record.duration.as_millis()).unwrap_or(u64::MAX);
    let mut fields: Vec<(&str, Value)> = vec![
        ("allocation", Value::from(record.allocation)),
        ("user", Value::from(record.user.as_str())),
        ("transport", Value::from(transport)),
        ("relayed", Value::from(relayed.as_str())),
        ("duration_ms", Value::from(duration_ms)),
        (
            "client_to_peer_packets",
            Value::from(usage.client_to_peer.packets),
        ),
        (
            "client_to_peer_bytes",
            Value::from(usage.client_to_peer.bytes),
        ),
        (
            "peer_to_client_packets",
            Value::from(usage.peer_to_client.packets),
        ),
        (
            "peer_to_client_bytes",
            Value::from(usage.peer_to_client.bytes),
        ),
        ("reason", Value::from(record.reason.as_str())),
    ];
    if with_client {
        fields.push(("client", Value::from(client.as_str())));
    }
    log::logger().log(
        &Record::builder()
            .level(Level::Info)
            .target(TARGET)
            .module_path_static(Some(module_path!()))
            .args(format_args!("allocation ended"))
            .key_values(&fields)
            .build(),
    );
}
