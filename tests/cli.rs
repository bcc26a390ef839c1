//! The binary's command line: every flag in --help with its environment variable, clear
//! errors with a non-zero exit, and a usable generated secret when none is given.

mod common;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::collections::BTreeMap;
use std::process::{Command, Output};

use crate::stun_encoder::codec::Attribute;
use common::{Client, RelayProcess};
use stun_codec::MessageClass;
use stun_codec::rfc5766::attributes::RequestedTransport;
use stun_codec::rfc5766::methods::ALLOCATE;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relay"));
    command.args(args).env_remove("RELAY_LISTEN_ADDR");
    for (key, value) in env {
        command.env(key, value);
    }
    // Invalid configurations exit before binding anything, so this cannot hang; a valid one
    // would run forever, which no case here is.
    command.output().expect("run relay")
}

#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    let output = run(&["--help"], &[]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for (flag, env) in [
        ("--listen-addr", "RELAY_LISTEN_ADDR"),
        ("--public-ip4-addr", "RELAY_PUBLIC_IP4_ADDR"),
        ("--public-ip6-addr", "RELAY_PUBLIC_IP6_ADDR"),
        ("--lowest-port", "RELAY_LOWEST_PORT"),
        ("--highest-port", "RELAY_HIGHEST_PORT"),
        ("--realm", "RELAY_REALM"),
        ("--auth-secret", "RELAY_AUTH_SECRET"),
        ("--allow-loopback-peers", "RELAY_ALLOW_LOOPBACK_PEERS"),
        ("--allow-peer", "RELAY_ALLOW_PEER"),
        ("--deny-peer", "RELAY_DENY_PEER"),
        (
            "--max-allocations-per-user",
            "RELAY_MAX_ALLOCATIONS_PER_USER",
        ),
        ("--max-allocations", "RELAY_MAX_ALLOCATIONS"),
        ("--metrics-addr", "RELAY_METRICS_ADDR"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        assert!(help.contains(env), "{env} missing from --help");
    }
}

type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn invalid_configuration_exits_non_zero_with_a_clear_message() {
    // (arguments, environment, what the error must mention)
    let cases: &[Case] = &[
        (&["--lowest-port", "70000"], &[], "--lowest-port"),
        (
            &["--lowest-port", "5000", "--highest-port", "4000"],
            &[],
            "--lowest-port",
        ),
        (&["--lowest-port", "0"], &[], "--lowest-port"),
        (&["--listen-addr", "not-an-address"], &[], "--listen-addr"),
        (&["--realm", ""], &[], "--realm"),
        (&["--auth-secret", ""], &[], "--auth-secret"),
        (&["--public-ip4-addr", "::1"], &[], "--public-ip4-addr"),
        (&["--no-such-flag"], &[], "--no-such-flag"),
        (&[], &[("RELAY_HIGHEST_PORT", "banana")], "--highest-port"),
        (&["--allow-peer", "10.0.0.0/33"], &[], "--allow-peer"),
        (
            &["--allow-peer", "10.0.0.1/8"],
            &[],
            "did you mean 10.0.0.0/8",
        ),
        (&["--deny-peer", "not-a-cidr"], &[], "--deny-peer"),
        (
            &["--deny-peer", "2001:db8::/"],
            &[],
            "missing prefix length",
        ),
        (&["--deny-peer", "fd00::/129"], &[], "longer than 128"),
        (&[], &[("RELAY_ALLOW_PEER", "10.1.0.0/16,bogus")], "bogus"),
        (&[], &[("RELAY_DENY_PEER", "8.8.8.8/24")], "--deny-peer"),
        (
            &["--max-allocations-per-user", "0"],
            &[],
            "--max-allocations",
        ),
        (&["--software", ""], &[], "--software"),
        (&["--log-format", "xml"], &[], "--log-format"),
        (&[], &[("RELAY_LOG_FORMAT", "yaml")], "--log-format"),
        (&["--max-bps-total", "0"], &[], "at least 1 bit per second"),
        (&["--max-bps-per-user", "2.5m"], &[], "--max-bps-per-user"),
        (&["--max-bps-per-allocation=-1"], &[], "not a rate"),
        (&[], &[("RELAY_MAX_BPS_PER_USER", "10 Mbit")], "not a rate"),
        (&[], &[("RELAY_MAX_BPS_TOTAL", "2000000G")], "more than"),
        // Past a year, a deadline would overflow the clock when it is set (a panic).
        (
            &["--drain-seconds", "31536001"],
            &[],
            "--drain-seconds: must be at most 31536000",
        ),
        (
            &[],
            &[("RELAY_ALLOCATE_DEADLINE", "18446744073709551615")],
            "--allocate-deadline: must be 1 to 31536000 seconds",
        ),
    ];
    for (args, env, mentions) in cases {
        let output = run(args, env);
        assert!(!output.status.success(), "{args:?} {env:?} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(mentions),
            "{args:?}: stderr {stderr:?} should mention {mentions}"
        );
    }
}

/// SOFTWARE is "fewer than 128 characters" (RFC 8489 §14.14): 127 pass (the next check,
/// an empty secret, is what fails), 128 are refused with exit code 2, counted in characters,
/// not bytes.
#[test]
fn software_longer_than_127_characters_is_refused() {
    let longest = "😀".repeat(127);
    let output = run(&["--software", &longest, "--auth-secret", ""], &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--auth-secret"), "{stderr}");
    assert!(!stderr.contains("--software"), "{stderr}");
    for too_long in ["😀".repeat(128), "x".repeat(128)] {
        let output = run(&[], &[("RELAY_SOFTWARE", &too_long)]);
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--software: must be 1 to 127 characters"),
            "{stderr}"
        );
    }
}

#[test]
fn listen_address_in_use_is_a_clear_start_up_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let output = run(&["--listen-addr", &addr, "--auth-secret", "x"], &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&addr), "{stderr}");
}

#[test]
fn without_a_secret_the_logged_credentials_work() {
    let (lowest, highest) = common::free_port_range_args(100);
    let mut relay = RelayProcess::start(&["--lowest-port", &lowest, "--highest-port", &highest]);
    let line = relay.wait_for_log("username ");
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| {
        let at = words.iter().position(|w| *w == key).expect(key);
        words[at + 1].to_owned()
    };
    let (username, password) = (after("username"), after("password"));
    let mut client = Client::new(relay.addr, &username, &password);
    let response = client.authenticated(
        ALLOCATE,
        vec![Attribute::RequestedTransport(RequestedTransport::new(17))],
    );
    assert_eq!(
        response.class(),
        MessageClass::SuccessResponse,
        "{:?}",
        response.error_code()
    );
}

#[test]
fn environment_variables_configure_the_relay() {
    // RELAY_LISTEN_ADDR takes a comma-separated list.
    let output = run(&[], &[("RELAY_LISTEN_ADDR", "127.0.0.1:1,bogus")]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("bogus"));
}

/// Long flags of a `--help` text with the environment variable each names, if any. Only the
/// option column counts (descriptions may mention other flags); --help/--version are clap's.
fn help_flags(help: &str) -> BTreeMap<String, Option<String>> {
    let mut flags = BTreeMap::new();
    let mut current = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('-') {
            let spec = trimmed.split("  ").next().unwrap_or(trimmed);
            current = spec
                .split([' ', ','])
                .find(|word| word.starts_with("--"))
                .map(str::to_owned);
            if let Some(flag) = &current {
                flags.insert(flag.clone(), None);
            }
        } else if trimmed.is_empty() || !line.starts_with(' ') {
            current = None;
        }
        if let (Some(flag), Some(at)) = (&current, line.find("[env: ")) {
            let env: String = line[at + "[env: ".len()..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            flags.insert(flag.clone(), Some(env));
        }
    }
    flags.remove("--help");
    flags.remove("--version");
    flags
}

/// The flag table under `heading` in README.md: each row's flags (first column) with the
/// environment variable of its second column, if any.
fn readme_flags(heading: &str) -> BTreeMap<String, Option<String>> {
    let readme = include_str!("../README.md");
    let section = readme
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README has no {heading:?}"))
        .1;
    let mut flags = BTreeMap::new();
    for line in section.lines().take_while(|l| !l.starts_with('#')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 3 || !cells[1].starts_with("`--") {
            continue;
        }
        let env = cells[2]
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|w| w.starts_with("RELAY_") || w.starts_with("PORTAL_"))
            .map(str::to_owned);
        for word in cells[1].split(|c: char| c == '`' || c.is_whitespace()) {
            if let Some(name) = word.strip_prefix("--")
                && !name.is_empty()
            {
                flags.insert(format!("--{name}"), env.clone());
            }
        }
    }
    assert!(!flags.is_empty(), "no flag table under {heading:?}");
    flags
}

fn assert_same_flags(readme: &BTreeMap<String, Option<String>>, help: &str, what: &str) {
    let help = help_flags(help);
    let missing: Vec<_> = help.keys().filter(|f| !readme.contains_key(*f)).collect();
    let stale: Vec<_> = readme.keys().filter(|f| !help.contains_key(*f)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "{what}: README lacks {missing:?}; README has {stale:?} which --help does not"
    );
    for (flag, env) in &help {
        assert_eq!(
            &readme[flag], env,
            "{what}: {flag}'s environment variable differs between README and --help"
        );
    }
}

#[test]
fn readme_flag_tables_match_help() {
    let output = run(&["--help"], &[]);
    assert!(output.status.success());
    assert_same_flags(
        &readme_flags("## Flags"),
        &String::from_utf8_lossy(&output.stdout),
        "relay --help",
    );
    let output = run(&["credentials", "--help"], &[]);
    assert!(output.status.success());
    assert_same_flags(
        &readme_flags("### `relay credentials`"),
        &String::from_utf8_lossy(&output.stdout),
        "relay credentials --help",
    );
}

#[test]
fn help_parser_sees_flags_only_in_the_option_column() {
    let help = "Options:\n      --alpha <A>  Mentions --beta in its text [env: RELAY_ALPHA=]\n      --gamma      Flag [env: RELAY_GAMMA]\n  -h, --help   Print help\n";
    let flags = help_flags(help);
    assert_eq!(
        flags.into_iter().collect::<Vec<_>>(),
        vec![
            ("--alpha".to_owned(), Some("RELAY_ALPHA".to_owned())),
            ("--gamma".to_owned(), Some("RELAY_GAMMA".to_owned())),
        ]
    );
}

#[test]
fn effective_peer_policy_is_logged_at_start_up() {
    let mut relay = RelayProcess::start_with_env(
        &[
            "--listen-addr",
            "127.0.0.1:0",
            "--auth-secret",
            "x",
            "--lowest-port",
            "44100",
            "--highest-port",
            "44199",
            "--deny-peer",
            "8.8.8.0/24",
        ],
        &[("RELAY_ALLOW_PEER", "10.1.0.0/16,fd00:1::/32")],
    );
    let line = relay.wait_for_log("peer policy:");
    for part in [
        "operator allow: 10.1.0.0/16, fd00:1::/32;",
        "operator deny: 8.8.8.0/24;",
        "loopback peers are denied",
        "own addresses 127.0.0.1 are reachable on relay ports 44100-44199 only",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
}

/// Issue 10, item 3: a listen port inside the relay port range is refused at start-up
/// (exit 2, a clear message), at both edges of the range; just outside it starts.
#[test]
fn a_listen_port_inside_the_relay_port_range_is_refused() {
    let (low, high) = common::free_port_range(3);
    let (lowest, highest) = ((low + 1).to_string(), high.to_string());
    for port in [low + 1, high] {
        let listen = format!("127.0.0.1:{port}");
        let output = run(
            &[
                "--listen-addr",
                &listen,
                "--lowest-port",
                &lowest,
                "--highest-port",
                &highest,
                "--auth-secret",
                "x",
            ],
            &[],
        );
        assert_eq!(output.status.code(), Some(2), "{listen}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!(
                "--listen-addr {listen}: port {port} is inside the relay port range {lowest}-{highest}"
            )),
            "{stderr}"
        );
    }
    let listen = format!("127.0.0.1:{low}");
    let mut relay = RelayProcess::start_with(&[
        "--listen-addr",
        &listen,
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
    ]);
    assert_eq!(relay.addr.to_string(), listen);
    relay.terminate();
}
