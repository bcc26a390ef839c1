//! SIGHUP through the real binary: the config file and the secret file are re-read and
//! swapped in while every allocation goes on relaying; a file that does not validate is
//! refused with one error line and the old configuration stays; systemd hears READY=1,
//! RELOADING=1 and STOPPING=1 on $NOTIFY_SOCKET.

mod common;
#[path = "support/firezone_credentials.rs"]
mod firezone_credentials;
#[path = "support/sha256.rs"]
mod sha256;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use crate::stun_encoder::codec::Attribute;
use common::{Client, RelayProcess, channel_data, peer_socket, unix_now};
use stun_codec::MessageClass;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND};

fn udp() -> Attribute {
    Attribute::RequestedTransport(RequestedTransport::new(17))
}

/// A file in a fresh directory of its own under the system's temp directory.
fn temp_file(test: &str, name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-reload-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn client_for(relay: SocketAddr, secret: &str, user: &str) -> Client {
    let username = format!("{}:{user}", unix_now() + 3600);
    let password = stun_encoder::rest_password(secret.as_bytes(), &username);
    Client::new(relay, &username, &password)
}

/// Allocates and binds channel 0x4001 to a fresh peer; returns the peer and relayed address.
fn allocate_with_channel(client: &mut Client) -> (std::net::UdpSocket, SocketAddr) {
    let allocated = client.authenticated(ALLOCATE, vec![udp()]);
    let relayed = allocated
        .get::<XorRelayAddress>()
        .unwrap_or_else(|| panic!("allocated: {:?}", allocated.error_code()))
        .address();
    let peer = peer_socket();
    let bind = client.authenticated(
        CHANNEL_BIND,
        vec![
            Attribute::ChannelNumber(ChannelNumber::new(0x4001).expect("number")),
            Attribute::XorPeerAddress(XorPeerAddress::new(peer.local_addr().expect("peer"))),
        ],
    );
    assert_eq!(bind.class(), MessageClass::SuccessResponse);
    (peer, relayed)
}

fn assert_relays(client: &Client, relay: SocketAddr, peer: &std::net::UdpSocket, from: SocketAddr) {
    let payload = b"still relaying";
    client
        .socket
        .send_to(&channel_data(0x4001, payload), relay)
        .expect("send");
    let mut buf = [0u8; 256];
    let (len, source) = peer.recv_from(&mut buf).expect("the peer receives");
    assert_eq!((source, &buf[..len]), (from, &payload[..]));
}

/// Error code of a first Allocate with these credentials (None: it succeeded).
fn allocate_error(relay: SocketAddr, secret: &str, user: &str) -> Option<u16> {
    let mut client = client_for(relay, secret, user);
    client.authenticated(ALLOCATE, vec![udp()]).error_code()
}

fn ports() -> (String, String) {
    common::free_port_range_args(20)
}

#[test]
fn sighup_swaps_the_secret_and_keeps_every_allocation_relaying() {
    let secrets = temp_file("swap", "secrets", "old-secret\n");
    let (lowest, highest) = ports();
    let mut relay = RelayProcess::start(&[
        "--auth-secret-file",
        secrets.to_str().expect("path"),
        "--allow-loopback-peers",
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
    ]);
    let mut client = client_for(relay.addr, "old-secret", "alice");
    let (peer, relayed) = allocate_with_channel(&mut client);
    assert_relays(&client, relay.addr, &peer, relayed);

    std::fs::write(&secrets, "# rotated\nnew-secret\n").expect("rewrite");
    relay.signal(libc::SIGHUP);
    relay.wait_for_log("SIGHUP: reloaded the configuration (1 allocations kept)");

    assert_relays(&client, relay.addr, &peer, relayed);
    assert_eq!(allocate_error(relay.addr, "old-secret", "bob"), Some(401));
    assert_eq!(allocate_error(relay.addr, "new-secret", "carol"), None);
    assert!(relay.terminate().success());
}

#[test]
fn a_config_file_that_does_not_validate_on_sighup_keeps_the_old_one() {
    let config = temp_file(
        "bad",
        "relay.env",
        "# quoted, as systemd's EnvironmentFile= allows\nRELAY_AUTH_SECRET=\"first\"\n\
         RELAY_MAX_ALLOCATIONS_PER_USER=1\n",
    );
    let (lowest, highest) = ports();
    let mut relay = RelayProcess::start(&[
        "--config-file",
        config.to_str().expect("path"),
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
    ]);
    // The file's quota holds: a second allocation of one user gets 486.
    let mut first = client_for(relay.addr, "first", "dave");
    assert_eq!(
        first.authenticated(ALLOCATE, vec![udp()]).error_code(),
        None
    );
    assert_eq!(allocate_error(relay.addr, "first", "dave"), Some(486));

    // A new secret and a quota of 0 (invalid): refused as a whole.
    std::fs::write(
        &config,
        "RELAY_AUTH_SECRET=second\nRELAY_MAX_ALLOCATIONS_PER_USER=0\n",
    )
    .expect("rewrite");
    relay.signal(libc::SIGHUP);
    let line = relay.wait_for_log("keeping the current configuration");
    assert!(line.contains("--max-allocations-per-user"), "{line}");
    assert_eq!(allocate_error(relay.addr, "second", "erin"), Some(401));
    assert_eq!(allocate_error(relay.addr, "first", "erin"), None);

    // Fixed: the new secret and a quota of 2 take effect.
    std::fs::write(
        &config,
        "RELAY_AUTH_SECRET=second\nRELAY_MAX_ALLOCATIONS_PER_USER=2\nRELAY_METRICS_ADDR=127.0.0.1:1\n",
    )
    .expect("rewrite");
    relay.signal(libc::SIGHUP);
    relay.wait_for_log(
        "--metrics-addr changed from None to Some(127.0.0.1:1): that needs a restart",
    );
    relay.wait_for_log("SIGHUP: reloaded the configuration");
    assert_eq!(allocate_error(relay.addr, "first", "frank"), Some(401));
    assert_eq!(allocate_error(relay.addr, "second", "dave"), None);
    assert!(relay.terminate().success());
}

#[test]
fn the_command_line_beats_the_config_file_which_beats_the_environment() {
    let config = temp_file(
        "precedence",
        "relay.env",
        "RELAY_AUTH_SECRET=from-file\nRELAY_REALM=file.realm\nRELAY_NO_TCP=yes\n",
    );
    let (lowest, highest) = ports();
    let mut relay = RelayProcess::start_with_env(
        &[
            "--listen-addr",
            "127.0.0.1:0",
            "--realm",
            common::REALM,
            "--config-file",
            config.to_str().expect("path"),
            "--lowest-port",
            &lowest,
            "--highest-port",
            &highest,
        ],
        &[
            ("RELAY_AUTH_SECRET", "from-env"),
            ("RELAY_REALM", "env.realm"),
        ],
    );
    // A switch from the file: no TCP (logged before the peer policy when on).
    relay.wait_for_log("peer policy");
    assert!(
        !relay.seen.iter().any(|l| l.contains("TURN over TCP")),
        "{:#?}",
        relay.seen
    );
    // The realm is the command line's (Client checks it), the secret the file's.
    assert_eq!(allocate_error(relay.addr, "from-env", "gina"), Some(401));
    assert_eq!(allocate_error(relay.addr, "from-file", "gina"), None);
    assert!(relay.terminate().success());
}

#[test]
fn an_unknown_setting_in_the_config_file_is_a_start_up_error() {
    let config = temp_file("unknown", "relay.env", "RELAY_NO_SUCH_THING=1\n");
    let output = std::process::Command::new(common::relay_binary())
        .args(["--config-file", config.to_str().expect("path")])
        .output()
        .expect("run relay");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("relay.env:1: RELAY_NO_SUCH_THING: not a relay setting"),
        "{stderr}"
    );
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let (systemd, socket) = notify_socket("notify");
    let next = || next_notification(&systemd);
    let mut relay = RelayProcess::start_with_env(
        &[
            "--listen-addr",
            "127.0.0.1:0",
            "--realm",
            common::REALM,
            "--auth-secret",
            "x",
        ],
        &[("NOTIFY_SOCKET", socket.to_str().expect("path"))],
    );
    assert_eq!(next(), "READY=1");
    relay.signal(libc::SIGHUP);
    let reloading = next();
    let usec = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{reloading:?}"));
    assert!(usec.parse::<u64>().expect("microseconds") > 0);
    assert_eq!(next(), "READY=1");
    assert!(relay.terminate().success());
    assert_eq!(next(), "STOPPING=1");
}

#[test]
fn sighup_changes_the_log_level() {
    let config = temp_file("level", "relay.env", "RELAY_LOG_LEVEL=info\n");
    // systemd's READY=1 after each reload says when the next file may be written.
    let (systemd, socket) = notify_socket("level");
    let reload = |relay: &RelayProcess| {
        relay.signal(libc::SIGHUP);
        assert!(next_notification(&systemd).starts_with("RELOADING=1"));
        assert_eq!(next_notification(&systemd), "READY=1");
    };
    let mut relay = RelayProcess::start_with_env(
        &[
            "--listen-addr",
            "127.0.0.1:0",
            "--realm",
            common::REALM,
            "--auth-secret",
            "x",
            "--config-file",
            config.to_str().expect("path"),
        ],
        &[("NOTIFY_SOCKET", socket.to_str().expect("path"))],
    );
    assert_eq!(next_notification(&systemd), "READY=1");
    std::fs::write(&config, "RELAY_LOG_LEVEL=error\n").expect("rewrite");
    reload(&relay);
    relay.wait_for_log("SIGHUP: log level error");
    // At error, neither the warning about a restart-only change nor the info line of a
    // successful reload is logged; the error line of a refused reload is.
    std::fs::write(
        &config,
        "RELAY_LOG_LEVEL=error\nRELAY_METRICS_ADDR=127.0.0.1:1\n",
    )
    .expect("rewrite");
    reload(&relay);
    std::fs::write(&config, "RELAY_LOG_LEVEL=error\nRELAY_MAX_ALLOCATIONS=0\n").expect("rewrite");
    reload(&relay);
    relay.wait_for_log("keeping the current configuration");
    let quiet: Vec<&String> = relay
        .seen
        .iter()
        .filter(|l| l.contains("needs a restart") || l.contains("reloaded the configuration"))
        .collect();
    assert!(quiet.is_empty(), "{quiet:#?}");
    assert!(relay.terminate().success());
}

/// A Unix datagram socket standing in for systemd's, and its path.
fn notify_socket(test: &str) -> (UnixDatagram, PathBuf) {
    let path = temp_file(test, "unused", "").with_file_name("notify.sock");
    let _ = std::fs::remove_file(&path);
    let systemd = UnixDatagram::bind(&path).expect("bind the notify socket");
    systemd
        .set_read_timeout(Some(common::WAIT))
        .expect("timeout");
    (systemd, path)
}

fn next_notification(systemd: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let len = systemd.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// The shipped environment file is a valid --config-file (everything in it is a setting
/// the relay knows, in a syntax it reads); the command line overrides its addresses.
#[test]
fn the_shipped_environment_file_reads_as_a_config_file() {
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/deploy/systemd/relay.env"
    );
    let (lowest, highest) = ports();
    let mut relay = RelayProcess::start(&[
        "--config-file",
        shipped,
        "--public-ip4-addr",
        "127.0.0.1",
        "--metrics-addr",
        "127.0.0.1:0",
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
    ]);
    relay.wait_for_log("realm \"test.realm\"");
    // RELAY_DRAIN_SECONDS=300 from the file: SIGTERM drains, and with no allocation that
    // ends at once.
    assert!(relay.terminate().success());
    relay.wait_for_log("drain done");
}

#[test]
fn a_portal_token_added_on_sighup_is_refused_not_an_empty_secret() {
    // Started standalone with a secret; the file then names a portal token instead (an
    // operator switching to Firezone mode). The portal is joined only at start, so the
    // reload must be refused: taking the new scheme with the secret a portal would have been
    // given (none was made) would accept credentials minted from the empty secret.
    let config = temp_file("portal", "relay.env", "RELAY_AUTH_SECRET=standalone\n");
    let (lowest, highest) = ports();
    let mut relay = RelayProcess::start(&[
        "--config-file",
        config.to_str().expect("path"),
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
    ]);
    std::fs::write(&config, "PORTAL_TOKEN=a-relay-token\n").expect("rewrite");
    relay.signal(libc::SIGHUP);
    let line = relay.wait_for_log("keeping the current configuration");
    assert!(line.contains("--portal-token"), "{line}");
    let (username, password) =
        firezone_credentials::firezone_credentials("", unix_now() + 3600, "anyone");
    let mut forged = Client::new(relay.addr, &username, &password);
    assert_eq!(
        forged.authenticated(ALLOCATE, vec![udp()]).error_code(),
        Some(401)
    );
    assert_eq!(allocate_error(relay.addr, "standalone", "grace"), None);
    assert!(relay.terminate().success());
}

#[test]
fn what_a_reload_cannot_change_is_named_and_the_portal_token_never_logged() {
    // A portal nobody answers at: the relay keeps trying; what matters here is the reload.
    let portal = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}", portal.local_addr().expect("addr"));
    drop(portal);
    let config = temp_file(
        "restart-only",
        "relay.env",
        "PORTAL_TOKEN=first-token\nRELAY_MAX_PENDING_CONNECTIONS=100\n",
    );
    let (lowest, highest) = ports();
    let mut relay = RelayProcess::start(&[
        "--config-file",
        config.to_str().expect("path"),
        "--portal-ws-url",
        &url,
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
    ]);
    std::fs::write(
        &config,
        "PORTAL_TOKEN=second-token\nRELAY_MAX_PENDING_CONNECTIONS=50\nRELAY_AUTH_SCHEME=rest\n",
    )
    .expect("rewrite");
    relay.signal(libc::SIGHUP);
    // What start-up would have warned about, the reload warns about.
    relay.wait_for_log("SIGHUP: --auth-scheme rest with --portal-token");
    relay.wait_for_log("--max-pending-connections changed from 100 to 50: that needs a restart");
    let line = relay.wait_for_log("--portal-token (or an address sent with it) changed");
    assert!(!line.contains("token="), "{line}");
    let line = relay.wait_for_log("SIGHUP: reloaded the configuration");
    assert!(!line.contains("second-token"), "{line}");
    assert!(relay.terminate().success());
}

#[test]
fn an_environment_file_that_names_itself_as_the_config_file_is_reloadable() {
    // systemd's EnvironmentFile= sets RELAY_CONFIG_FILE from the file that it names: the
    // way to make the shipped relay.env reloadable without editing the unit.
    let config = temp_file("itself", "relay.env", "");
    let path = config.to_str().expect("path").to_owned();
    std::fs::write(
        &config,
        format!("RELAY_CONFIG_FILE={path}\nRELAY_AUTH_SECRET=first\n"),
    )
    .expect("write");
    let (lowest, highest) = ports();
    let mut relay = RelayProcess::start_with_env(
        &[
            "--listen-addr",
            "127.0.0.1:0",
            "--realm",
            common::REALM,
            "--lowest-port",
            &lowest,
            "--highest-port",
            &highest,
        ],
        &[("RELAY_CONFIG_FILE", &path), ("RELAY_AUTH_SECRET", "first")],
    );
    assert_eq!(allocate_error(relay.addr, "first", "ida"), None);
    std::fs::write(
        &config,
        format!("RELAY_CONFIG_FILE={path}\nRELAY_AUTH_SECRET=second\n"),
    )
    .expect("rewrite");
    relay.signal(libc::SIGHUP);
    relay.wait_for_log("SIGHUP: reloaded the configuration");
    assert_eq!(allocate_error(relay.addr, "second", "jan"), None);
    assert_eq!(allocate_error(relay.addr, "first", "kim"), Some(401));
    assert!(relay.terminate().success());
}
