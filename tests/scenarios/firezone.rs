//! Firezone's credential scheme through the core: `<expiry>:<salt>` with a password the
//! portal minted from the relay's secret, realm `firezone`. The credentials are computed
//! by the tests' own SHA-256 and base64 (support/firezone_credentials.rs).

use relay::core::AuthScheme;

use crate::firezone_credentials::firezone_credentials;
use crate::harness::*;

/// What the relay would have handed the portal: 64 hex characters.
const STAMP_SECRET: &str = "4c98bf59c99b3e467ecd7cf9d6b3e5279645fca59be67bc5bb4af3cf653761ab";
const FIREZONE: &str = "firezone";

fn firezone_config() -> Config {
    Config {
        realm: FIREZONE.to_owned(),
        auth_secrets: vec![STAMP_SECRET.as_bytes().to_vec()],
        auth_scheme: AuthScheme::Firezone,
        ..config()
    }
}

fn firezone_creds(secret: &str, expiry: u64, salt: &str) -> Creds {
    let (username, password) = firezone_credentials(secret, expiry, salt);
    let key = stun_encoder::long_term_key(&username, FIREZONE, &password);
    Creds {
        username,
        password,
        realm: FIREZONE.to_owned(),
        key,
    }
}

fn client_with(h: &mut Harness, from: &str, creds: Creds) -> Client {
    let addr = addr(from);
    let nonce = h.nonce(addr);
    Client { addr, creds, nonce }
}

/// A portal-minted credential allocates, binds a channel and relays both ways.
#[test]
fn portal_minted_credentials_allocate_and_relay() {
    let mut h = Harness::with_config(firezone_config());
    let creds = firezone_creds(STAMP_SECRET, UNIX0 + 3600, "uvdgKvS9GXYZ_vmv");
    let alice = client_with(&mut h, "198.51.100.1:40000", creds);
    let allocated = h.allocate(&alice);
    let peer = addr("8.8.8.9:7000");
    h.channel_bind(&alice, 0x4000, peer);
    assert_eq!(
        h.channel_data(alice.addr, 0x4000, b"hello"),
        Some(forward_to(&allocated, peer, 4..9))
    );
    let (_, frame) = h.peer(allocated.id, peer, b"back").unwrap();
    assert_eq!(frame, channel_data_frame(0x4000, b"back"));
}

/// Wrong secret, wrong scheme, a second ':', an expiry in the past: 401, nothing allocated.
#[test]
fn other_credentials_are_refused() {
    let mut h = Harness::with_config(firezone_config());
    let wrong_secret = firezone_creds(&"0".repeat(64), UNIX0 + 3600, "salt");
    let expired = firezone_creds(STAMP_SECRET, UNIX0 - 1, "salt");
    let two_colons = firezone_creds(STAMP_SECRET, UNIX0 + 3600, "sa:lt");
    // A REST credential from the same secret: the right shape, the wrong password.
    let rest = Creds::rest(STAMP_SECRET.as_bytes(), UNIX0 + 3600, "salt", FIREZONE);
    for (i, creds) in [wrong_secret, expired, two_colons, rest]
        .into_iter()
        .enumerate()
    {
        let client = client_with(&mut h, &format!("198.51.100.{}:40000", i + 1), creds);
        let r = h.call(
            client.addr,
            client.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
        );
        assert_eq!(r.error_code(), Some(401), "credentials {i}");
        assert_eq!(r.types(), vec![t::ERROR_CODE, t::REALM, t::NONCE]);
        assert_eq!(r.realm(), FIREZONE);
    }
    assert_eq!(h.server.allocation_count(), 0);
}

/// The expiry itself is still valid (the seed refuses only an expiry before now).
#[test]
fn an_expiry_of_now_is_accepted() {
    let mut h = Harness::with_config(firezone_config());
    let creds = firezone_creds(STAMP_SECRET, UNIX0, "salt");
    let client = client_with(&mut h, "198.51.100.1:40000", creds);
    h.allocate(&client);
}
