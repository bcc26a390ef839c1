//! The portal state machine with injected time: every output asserted.

use std::time::{Duration, Instant};

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const S: Duration = Duration::from_secs(1);

fn timing() -> Timing {
    Timing {
        heartbeat: 30 * S,
        backoff_initial: S,
        backoff_max: 8 * S,
        connect_timeout: 10 * S,
    }
}

fn outputs(portal: &mut Portal) -> Vec<Output> {
    std::iter::from_fn(|| portal.poll_output()).collect()
}

fn reply(reference: u64, status: &str) -> String {
    format!(
        r#"{{"topic":"relay","event":"phx_reply","payload":{{"status":"{status}","response":{{}}}},"ref":"{reference}"}}"#
    )
}

const INIT: &str = r#"{"topic":"relay","event":"init","payload":{},"ref":null}"#;

/// A portal connected and joined at `t0`, its outputs drained; the join's ref is 1.
fn joined(t0: Instant) -> Portal {
    let mut portal = Portal::new(SECRET.into(), timing(), t0, 1);
    portal.handle_timeout(t0);
    assert_eq!(outputs(&mut portal), vec![Output::Connect]);
    portal.handle_connected(t0);
    assert_eq!(
        outputs(&mut portal),
        vec![Output::Send(phoenix::join(1, SECRET))]
    );
    portal.handle_message(t0, &reply(1, "ok"));
    assert_eq!(outputs(&mut portal), vec![]);
    assert_eq!(portal.joins(), 1);
    portal
}

#[test]
fn connects_joins_with_the_secret_and_initialises_once() {
    let t0 = Instant::now();
    let mut portal = joined(t0);
    assert!(!portal.is_initialised());
    portal.handle_message(t0, INIT);
    assert_eq!(outputs(&mut portal), vec![Output::Initialised]);
    assert!(portal.is_initialised());
    // A second init (after a re-join) changes nothing.
    portal.handle_message(t0, INIT);
    assert_eq!(outputs(&mut portal), vec![]);
}

#[test]
fn heartbeats_every_interval_and_an_unanswered_one_drops_the_connection() {
    let t0 = Instant::now();
    let mut portal = joined(t0);
    assert_eq!(portal.poll_timeout(), t0 + 30 * S);
    portal.handle_timeout(t0 + 29 * S);
    assert_eq!(outputs(&mut portal), vec![]);
    portal.handle_timeout(t0 + 30 * S);
    assert_eq!(
        outputs(&mut portal),
        vec![Output::Send(phoenix::heartbeat(2))]
    );
    portal.handle_message(t0 + 31 * S, &reply(2, "ok"));
    assert_eq!(portal.poll_timeout(), t0 + 60 * S);
    portal.handle_timeout(t0 + 60 * S);
    assert_eq!(
        outputs(&mut portal),
        vec![Output::Send(phoenix::heartbeat(3))]
    );
    // A reply to something else does not count.
    portal.handle_message(t0 + 61 * S, &reply(99, "ok"));
    portal.handle_timeout(t0 + 90 * S);
    assert_eq!(outputs(&mut portal), vec![Output::Disconnect]);
    let retry = portal.poll_timeout();
    assert!(
        retry >= t0 + 90 * S + S / 2 && retry <= t0 + 91 * S,
        "{retry:?}"
    );
}

#[test]
fn a_refused_join_or_a_closed_channel_reconnects_with_growing_backoff() {
    let t0 = Instant::now();
    let mut portal = Portal::new(SECRET.into(), timing(), t0, 7);
    let mut now = t0;
    let mut reference = 1;
    for step in [1, 2, 4, 8, 8] {
        portal.handle_timeout(now);
        assert_eq!(outputs(&mut portal), vec![Output::Connect]);
        portal.handle_connected(now);
        assert_eq!(
            outputs(&mut portal),
            vec![Output::Send(phoenix::join(reference, SECRET))]
        );
        portal.handle_message(now, &reply(reference, "error"));
        reference += 1;
        assert_eq!(outputs(&mut portal), vec![Output::Disconnect]);
        let delay = portal.poll_timeout() - now;
        assert!(
            delay >= step * S / 2 && delay <= step * S,
            "{delay:?} for {step} s"
        );
        now += delay;
    }
    assert_eq!(portal.joins(), 0);
    // A successful join resets the backoff; then phx_close drops it again.
    portal.handle_timeout(now);
    portal.handle_connected(now);
    portal.handle_message(now, &reply(reference, "ok"));
    assert_eq!(
        outputs(&mut portal),
        vec![
            Output::Connect,
            Output::Send(phoenix::join(reference, SECRET))
        ]
    );
    portal.handle_message(
        now,
        r#"{"topic":"relay","event":"phx_close","payload":{},"ref":null}"#,
    );
    assert_eq!(outputs(&mut portal), vec![Output::Disconnect]);
    assert!(portal.poll_timeout() - now <= S);
}

#[test]
fn a_connect_that_takes_too_long_is_abandoned() {
    let t0 = Instant::now();
    let mut portal = Portal::new(SECRET.into(), timing(), t0, 1);
    portal.handle_timeout(t0);
    assert_eq!(outputs(&mut portal), vec![Output::Connect]);
    assert_eq!(portal.poll_timeout(), t0 + 10 * S);
    portal.handle_timeout(t0 + 10 * S);
    assert_eq!(outputs(&mut portal), vec![Output::Disconnect]);
}

#[test]
fn a_lost_connection_after_init_rejoins_with_the_same_secret() {
    let t0 = Instant::now();
    let mut portal = joined(t0);
    portal.handle_message(t0, INIT);
    assert_eq!(outputs(&mut portal), vec![Output::Initialised]);
    portal.handle_disconnected(t0 + S, "connection reset");
    assert_eq!(outputs(&mut portal), vec![]);
    // Disconnected twice (the driver saw it, then a late error): one backoff step.
    portal.handle_disconnected(t0 + S, "again");
    let retry = portal.poll_timeout();
    assert!(retry <= t0 + 2 * S);
    // Messages while not connected are ignored.
    portal.handle_message(retry, &reply(1, "ok"));
    portal.handle_timeout(retry);
    portal.handle_connected(retry);
    assert_eq!(
        outputs(&mut portal),
        vec![Output::Connect, Output::Send(phoenix::join(2, SECRET))]
    );
    portal.handle_message(retry, &reply(2, "ok"));
    assert_eq!(portal.joins(), 2);
    assert!(portal.is_initialised());
    assert_eq!(outputs(&mut portal), vec![]);
}

#[test]
fn heartbeats_start_before_the_join_is_answered() {
    let t0 = Instant::now();
    let mut portal = Portal::new(SECRET.into(), timing(), t0, 1);
    portal.handle_timeout(t0);
    portal.handle_connected(t0);
    outputs(&mut portal);
    portal.handle_timeout(t0 + 30 * S);
    assert_eq!(
        outputs(&mut portal),
        vec![Output::Send(phoenix::heartbeat(2))]
    );
}

/// A join the portal never answers (while it answers heartbeats) drops the connection at
/// two heartbeat intervals, so the relay joins again instead of waiting for `init` forever.
#[test]
fn a_join_never_answered_drops_the_connection() {
    let t0 = Instant::now();
    let mut portal = Portal::new(SECRET.into(), timing(), t0, 1);
    portal.handle_timeout(t0);
    portal.handle_connected(t0);
    outputs(&mut portal);
    portal.handle_timeout(t0 + 30 * S);
    assert_eq!(
        outputs(&mut portal),
        vec![Output::Send(phoenix::heartbeat(2))]
    );
    portal.handle_message(t0 + 31 * S, &reply(2, "ok"));
    assert_eq!(outputs(&mut portal), vec![]);
    assert_eq!(portal.poll_timeout(), t0 + 60 * S);
    portal.handle_timeout(t0 + 60 * S - Duration::from_millis(1));
    assert_eq!(outputs(&mut portal), vec![]);
    portal.handle_timeout(t0 + 60 * S);
    assert_eq!(outputs(&mut portal), vec![Output::Disconnect]);
    assert_eq!(portal.joins(), 0);
    assert!(portal.poll_timeout() > t0 + 60 * S, "waits for the backoff");
}
