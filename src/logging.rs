//! The log: env_logger's text lines (as always) or one JSON object per line
//! (`--log-format json`) with time, level, target, message and the record's key-value fields.
//!
//! The level is `log::max_level()` (set from `--log-level`, changed by SIGHUP): the logger
//! lets through what `RUST_LOG` allows, and the `log` macros drop what is above the maximum
//! before formatting anything.

use std::fmt::Write as _;
use std::io::Write;

use log::Record;
use log::kv::{self, VisitSource};

/// How log lines look: env_logger's human-readable lines (a record's fields appended as
/// `key=value`), or one JSON object per line.
// The variants have no doc comments: clap would list them in --help as a block of their
// own instead of `[possible values: text, json]`.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Members every JSON line has; a field of the same name is written as `_name` so that no
/// object has a key twice.
const RESERVED: [&str; 4] = ["time", "level", "target", "message"];

/// Installs the logger on stderr. It passes everything `RUST_LOG` allows (everything without
/// it; `RUST_LOG` may narrow per module); the level is `log::max_level()`, which the caller
/// sets from `--log-level` at start and on SIGHUP.
pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("trace"));
    // tungstenite traces the portal's handshake request and every frame: the token and the
    // stamp secret, which are never logged.
    builder.filter_module("tungstenite", log::LevelFilter::Info);
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let time = buf.timestamp_millis().to_string();
            let mut line = String::with_capacity(128);
            json_line(&mut line, &time, record);
            line.push('\n');
            buf.write_all(line.as_bytes())
        });
    }
    // Only fails if a logger is installed already: then that one stays.
    let logger = builder.build();
    let filter = logger.filter();
    if log::set_boxed_logger(Box::new(SecretsCapped(logger))).is_ok() {
        log::set_max_level(filter);
    }
}

/// The logger, with tungstenite capped at info whatever `RUST_LOG` says: env_logger lets a
/// directive naming a module (`tungstenite::handshake::client=trace`) outrank the cap on
/// `tungstenite` above, and that module traces the request with the portal token.
struct SecretsCapped(env_logger::Logger);

impl SecretsCapped {
    fn may_carry_secrets(metadata: &log::Metadata) -> bool {
        metadata.level() > log::Level::Info && metadata.target().starts_with("tungstenite")
    }
}

impl log::Log for SecretsCapped {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        !Self::may_carry_secrets(metadata) && self.0.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !Self::may_carry_secrets(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// The JSON object of one record (without the newline).
pub fn json_line(out: &mut String, time: &str, record: &Record) {
    out.push_str("{\"time\":");
    json_string(out, time);
    out.push_str(",\"level\":");
    json_string(out, record.level().as_str());
    out.push_str(",\"target\":");
    json_string(out, record.target());
    out.push_str(",\"message\":");
    json_string(out, &record.args().to_string());
    let _ = record.key_values().visit(&mut Fields { out });
    out.push('}');
}

struct Fields<'a> {
    out: &'a mut String,
}

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        self.out.push(',');
        if RESERVED.contains(&key.as_str()) {
            json_string(self.out, &format!("_{}", key.as_str()));
        } else {
            json_string(self.out, key.as_str());
        }
        self.out.push(':');
        // Whole numbers and booleans as JSON numbers and booleans, everything else as text.
        if let Some(n) = value.to_u64() {
            let _ = write!(self.out, "{n}");
        } else if let Some(n) = value.to_i64() {
            let _ = write!(self.out, "{n}");
        } else if let Some(b) = value.to_bool() {
            self.out.push_str(if b { "true" } else { "false" });
        } else {
            json_string(self.out, &value.to_string());
        }
        Ok(())
    }
}

/// `text` as a JSON string (RFC 8259 §7): quotes, backslash and control characters escaped,
/// everything else as is (the output is UTF-8, as `text` is).
pub fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(text: &str) -> String {
        let mut out = String::new();
        json_string(&mut out, text);
        out
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(quoted("plain"), r#""plain""#);
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quoted("l1\nl2\r\t"), r#""l1\nl2\r\t""#);
        assert_eq!(
            quoted("\u{0}\u{1}\u{1f}\u{7f}"),
            r#""\u0000\u0001\u001f\u007f""#
        );
        assert_eq!(quoted("é ✓ 😀"), "\"é ✓ 😀\"");
        // Every escape parses back to the original.
        let nasty = "\"\\/\u{8}\u{c}\n\r\t\u{0}\u{1b}é😀";
        let back: String = serde_json::from_str(&quoted(nasty)).unwrap();
        assert_eq!(back, nasty);
    }

    #[test]
    fn a_record_is_one_object_with_its_fields() {
        let fields: [(&str, kv::Value); 5] = [
            ("allocation", kv::Value::from(7u64)),
            ("user", kv::Value::from("al\"ice\n")),
            ("delta", kv::Value::from(-3i64)),
            ("drained", kv::Value::from(true)),
            ("message", kv::Value::from("clash")),
        ];
        let args = format_args!("allocation {} ended", 7);
        let record = Record::builder()
            .level(log::Level::Info)
            .target("relay::usage")
            .args(args)
            .key_values(&fields)
            .build();
        let mut line = String::new();
        json_line(&mut line, "2026-12-06T13:00:00.000Z", &record);
        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "time": "2026-12-06T13:00:00.000Z",
                "level": "INFO",
                "target": "relay::usage",
                "message": "allocation 7 ended",
                "allocation": 7,
                "user": "al\"ice\n",
                "delta": -3,
                "drained": true,
                "_message": "clash",
            })
        );
    }
}
