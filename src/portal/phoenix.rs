//! The Phoenix channel messages the relay and the portal exchange, as JSON text frames
//! (Phoenix's V1 serializer: an object with `topic`, `event`, `payload` and `ref`):
//! out, `phx_join` on `relay` and `heartbeat` on `phoenix`; in, `phx_reply`, `init`, and
//! what ends a channel (`phx_error`, `phx_close`, `disconnect`).

use serde_json::{Value, json};

/// The channel the relay joins.
pub const RELAY_TOPIC: &str = "relay";
/// The socket-level topic of heartbeats.
pub const PHOENIX_TOPIC: &str = "phoenix";

/// A message from the portal, as far as the relay cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// The answer to our request `reference`: `ok` for status "ok", else the reason.
    Reply {
        reference: u64,
        result: Result<(), String>,
    },
    /// `init` on `relay`: the portal knows our secret; start relaying.
    Init,
    /// The channel or the socket ended (`phx_error`, `phx_close`, `disconnect`).
    Closed { event: String },
    /// Anything else (other events, other topics): ignored.
    Other,
}

/// `phx_join` on `relay` with our stamp secret.
pub fn join(reference: u64, stamp_secret: &str) -> String {
    message(
        RELAY_TOPIC,
        "phx_join",
        json!({ "stamp_secret": stamp_secret }),
        reference,
    )
}

/// `heartbeat` on `phoenix`, empty payload.
pub fn heartbeat(reference: u64) -> String {
    message(PHOENIX_TOPIC, "heartbeat", json!({}), reference)
}

fn message(topic: &str, event: &str, payload: Value, reference: u64) -> String {
    // Phoenix's own clients send refs as strings; the server echoes them in its reply.
    json!({
        "topic": topic,
        "event": event,
        "payload": payload,
        "ref": reference.to_string(),
    })
    .to_string()
}

/// Reads one text frame; None if it is not a Phoenix message (not JSON, no topic or event).
pub fn decode(text: &str) -> Option<Inbound> {
    let value: Value = serde_json::from_str(text).ok()?;
    let topic = value.get("topic")?.as_str()?;
    let event = value.get("event")?.as_str()?;
    Some(match event {
        "phx_reply" => {
            let Some(reference) = reference_of(&value) else {
                return Some(Inbound::Other);
            };
            let payload = value.get("payload");
            let status = payload
                .and_then(|p| p.get("status"))
                .and_then(Value::as_str);
            let result = match status {
                Some("ok") => Ok(()),
                _ => Err(payload
                    .and_then(|p| p.get("response"))
                    .map_or_else(|| "no response".to_owned(), Value::to_string)),
            };
            Inbound::Reply { reference, result }
        }
        "init" if topic == RELAY_TOPIC => Inbound::Init,
        "phx_error" | "phx_close" | "disconnect" => Inbound::Closed {
            event: event.to_owned(),
        },
        _ => Inbound::Other,
    })
}

/// A reply's `ref`: our decimal string, or a number from a server that sends numbers.
fn reference_of(value: &Value) -> Option<u64> {
    match value.get("ref")? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_and_heartbeat_are_phoenix_v1_objects() {
        let secret = "ab".repeat(32);
        let join: Value = serde_json::from_str(&join(1, &secret)).unwrap();
        assert_eq!(
            join,
            json!({"topic": "relay", "event": "phx_join",
                   "payload": {"stamp_secret": secret}, "ref": "1"})
        );
        let heartbeat: Value = serde_json::from_str(&heartbeat(7)).unwrap();
        assert_eq!(
            heartbeat,
            json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "7"})
        );
    }

    #[test]
    fn decodes_what_the_portal_sends() {
        let cases = [
            (
                r#"{"topic":"relay","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"}"#,
                Some(Inbound::Reply {
                    reference: 1,
                    result: Ok(()),
                }),
            ),
            (
                r#"{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":2}"#,
                Some(Inbound::Reply {
                    reference: 2,
                    result: Ok(()),
                }),
            ),
            (
                r#"{"topic":"relay","event":"phx_reply","payload":{"status":"error","response":{"reason":"unmatched topic"}},"ref":"3"}"#,
                Some(Inbound::Reply {
                    reference: 3,
                    result: Err(r#"{"reason":"unmatched topic"}"#.to_owned()),
                }),
            ),
            (
                r#"{"topic":"relay","event":"init","payload":{},"ref":null}"#,
                Some(Inbound::Init),
            ),
            (
                r#"{"topic":"relay","event":"phx_close","payload":{},"ref":null}"#,
                Some(Inbound::Closed {
                    event: "phx_close".into(),
                }),
            ),
            (
                r#"{"topic":"relay","event":"disconnect","payload":{"reason":"token_expired"}}"#,
                Some(Inbound::Closed {
                    event: "disconnect".into(),
                }),
            ),
            // init on another topic, unknown events, replies without a usable ref: ignored.
            (
                r#"{"topic":"other","event":"init","payload":{}}"#,
                Some(Inbound::Other),
            ),
            (
                r#"{"topic":"relay","event":"presence_diff","payload":{}}"#,
                Some(Inbound::Other),
            ),
            (
                r#"{"topic":"relay","event":"phx_reply","payload":{},"ref":"x"}"#,
                Some(Inbound::Other),
            ),
            // Not Phoenix messages at all.
            ("not json", None),
            (r#"{"event":"init"}"#, None),
            (r#"[null,null,"relay","init",{}]"#, None),
        ];
        for (text, expected) in cases {
            assert_eq!(decode(text), expected, "{text}");
        }
    }
}
