//! Authentication (RFC 8489 §9.2, the TURN REST API credentials): challenges, nonces,
//! the order of checks (§9.2.4), expiry, and which answers are signed.

use crate::harness::*;

// ---------------------------------------------------------------------------------------
// 2. Authentication
// ---------------------------------------------------------------------------------------

/// RFC 8489 §9.2.4: "If the message does not contain a MESSAGE-INTEGRITY [...] attribute, the
/// server MUST generate an error response with an error code of 401 (Unauthenticated). This
/// response MUST include a REALM value" and a NONCE; RFC 8656 §7.2: "the server MUST require
/// that the request be authenticated". Nothing is created before that.
#[test]
fn allocate_without_credentials_is_challenged_and_creates_nothing() {
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");
    let r = h.call(c, Req::request(ALLOCATE).attr(RequestedTransport::new(UDP)));
    assert_challenge(&h, &r, 401);
    assert_eq!(h.server.poll_timeout(), None);
    // The challenge mirrors FINGERPRINT too.
    let r = h.call(
        c,
        Req::request(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .fingerprint(),
    );
    assert_eq!(
        r.types(),
        vec![t::ERROR_CODE, t::REALM, t::NONCE, t::FINGERPRINT]
    );
    assert!(r.has_fingerprint());
}

/// RFC 8489 §9.2.4: a request with MESSAGE-INTEGRITY "but is missing either the USERNAME [...],
/// REALM, or NONCE attribute" gets 400 (Bad Request), which cannot carry MESSAGE-INTEGRITY.
#[test]
fn incomplete_credentials_are_a_bad_request() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    for omit in 0..3 {
        let mut req = c.req(ALLOCATE).attr(RequestedTransport::new(UDP));
        req.omit[omit] = true;
        let r = h.call(c.addr, req);
        assert_eq!(r.error_code(), Some(400), "omitting #{omit}");
        assert_eq!(r.types(), vec![t::ERROR_CODE]);
    }
    // MESSAGE-INTEGRITY alone.
    let mut req = Req::request(ALLOCATE).attr(RequestedTransport::new(UDP));
    req.bare_integrity = Some(c.key());
    let r = h.call(c.addr, req);
    assert_eq!(r.error_code(), Some(400));
    assert_eq!(r.types(), vec![t::ERROR_CODE]);
    assert_eq!(h.server.allocation_count(), 0);
}

/// RFC 8489 §9.2.4: "If the NONCE is no longer valid, the server MUST generate an error
/// response with an error code of 438 (Stale Nonce)" with a new NONCE and REALM. Our nonces are
/// bound to the client's address and port (DESIGN: stateless nonces).
#[test]
fn nonce_from_another_address_is_stale_and_the_fresh_one_works() {
    let mut h = Harness::new();
    let other = h.client("198.51.100.2:40000", "alice");
    let c = Client {
        addr: addr("198.51.100.1:40000"),
        ..other.clone()
    };
    let r = h.call(c.addr, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    assert_challenge(&h, &r, 438);
    assert_ne!(r.nonce(), other.nonce);
    // The same address and port but another IP is another client, and so is another port.
    let c2 = Client {
        addr: addr("198.51.100.2:40001"),
        ..other.clone()
    };
    let r2 = h.call(c2.addr, c2.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    assert_challenge(&h, &r2, 438);
    let c = Client {
        nonce: r.nonce(),
        ..c
    };
    h.allocate(&c);
}

/// RFC 8489 §9.2.4: an expired NONCE gets 438 (Stale Nonce) with a fresh NONCE, unsigned; our
/// nonces last 600 s.
#[test]
fn nonce_older_than_its_lifetime_is_stale() {
    let mut h = Harness::new();
    let fresh = h.client("198.51.100.1:40000", "alice");
    let old = h.client("198.51.100.2:40000", "bob");
    // 600 s old is still fine.
    h.set_time(600);
    h.allocate(&fresh);
    h.set_time(601);
    let r = h.call(
        old.addr,
        old.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
    );
    assert_eq!(r.error_code(), Some(438));
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::REALM, t::NONCE]);
    assert!(!r.has_integrity());
    assert_eq!(h.server.allocation_count(), 1);
    let old = Client {
        nonce: r.nonce(),
        ..old
    };
    h.allocate(&old);
}

/// TURN REST API: the username is `<expiry>[:<id>]` and is refused once the expiry has passed;
/// RFC 8489 §9.2.4: "If the value of the USERNAME [...] attribute is not valid, the server MUST
/// generate an error response with an error code of 401 (Unauthenticated)."
#[test]
fn expired_rest_username_is_unauthorized() {
    let mut h = Harness::new();
    let mut c = h.client("198.51.100.1:40000", "alice");
    c.creds = Creds::rest(SECRET, UNIX0 - 1, "alice", REALM);
    let r = h.call(c.addr, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    assert_challenge(&h, &r, 401);
    // Expiring exactly now is still accepted; a username that is not `<expiry>[:id]` is not.
    c.creds = Creds::rest(SECRET, UNIX0, "alice", REALM);
    h.allocate(&c);
    let mut d = h.client("198.51.100.2:40000", "x");
    let username = "alice".to_owned();
    let password = stun_encoder::rest_password(SECRET, &username);
    d.creds = Creds {
        key: stun_encoder::long_term_key(&username, REALM, &password),
        username,
        password,
        realm: REALM.to_owned(),
    };
    let r = h.call(d.addr, d.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    assert_challenge_with(&h, &r, 401, 1);
}

/// RFC 8489 §9.2.4: if the MESSAGE-INTEGRITY computed with the key of the USERNAME and REALM
/// does not match, "the server MUST reject the request with an error response. This response
/// MUST use an error code of 401 (Unauthenticated)."
#[test]
fn wrong_password_corrupted_integrity_and_foreign_realm_are_unauthorized() {
    let mut h = Harness::new();
    let base = h.client("198.51.100.1:40000", "alice");

    let wrong_secret = Client {
        creds: Creds::rest(b"not-our-secret", UNIX0 + 3600, "alice", REALM),
        ..base.clone()
    };
    let r = h.call(
        base.addr,
        wrong_secret
            .req(ALLOCATE)
            .attr(RequestedTransport::new(UDP)),
    );
    assert_challenge(&h, &r, 401);

    let mut req = base.req(ALLOCATE).attr(RequestedTransport::new(UDP));
    req.corrupt_integrity = true;
    let r = h.call(base.addr, req);
    assert_challenge(&h, &r, 401);

    let foreign_realm = Client {
        creds: Creds::rest(SECRET, UNIX0 + 3600, "alice", "elsewhere.test"),
        ..base.clone()
    };
    let r = h.call(
        base.addr,
        foreign_realm
            .req(ALLOCATE)
            .attr(RequestedTransport::new(UDP)),
    );
    assert_challenge(&h, &r, 401);
    assert_eq!(h.server.poll_timeout(), None);
}

/// TURN REST API, password = base64(HMAC-SHA1(secret, username)): during a secret rotation,
/// credentials minted from either configured secret authenticate (README, `--auth-secret`).
#[test]
fn credentials_from_either_rotated_secret_are_accepted() {
    let mut h = Harness::with_config(Config {
        auth_secrets: vec![SECRET.to_vec(), SECRET2.to_vec()],
        ..config()
    });
    let mut a = h.client("198.51.100.1:40000", "alice");
    a.creds = Creds::rest(SECRET, UNIX0 + 3600, "alice", REALM);
    let mut b = h.client("198.51.100.2:40000", "bob");
    b.creds = Creds::rest(SECRET2, UNIX0 + 3600, "bob", REALM);
    let first = h.allocate(&a);
    let second = h.allocate(&b);
    // Each answer is signed with the key of the secret the client used.
    assert!(first.response.integrity_valid(&a.key()));
    assert!(second.response.integrity_valid(&b.key()));
    assert!(
        !second
            .response
            .integrity_valid(&Creds::rest(SECRET, UNIX0 + 3600, "bob", REALM).key)
    );
    assert_eq!(h.server.allocation_count(), 2);
}

// ---------------------------------------------------------------------------------------
// 13. MESSAGE-INTEGRITY on responses
// ---------------------------------------------------------------------------------------

/// RFC 8489 §9.2.4: once the checks pass, "any response generated by the server MUST include
/// the MESSAGE-INTEGRITY attribute, computed using the username and password utilized to
/// authenticate the request"; 401 and 438 challenges are not signed.
#[test]
fn answers_to_authenticated_requests_are_signed_and_challenges_are_not() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    // 437 after authentication.
    let r = h.fails(&c, c.req(REFRESH), 437);
    assert!(!r.integrity_valid(&creds("bob").key));
    let a = h.allocate(&c);
    assert!(a.response.integrity_valid(&c.key()));
    // Successes.
    let r = h.ok(&c, c.req(REFRESH));
    assert!(r.integrity_valid(&c.key()));
    h.create_permission(&c, &[addr("8.8.8.11:1")]);
    h.channel_bind(&c, 0x4000, addr("8.8.8.11:1"));
    // A channel conflict.
    h.fails(
        &c,
        Harness::channel_bind_req(&c, 0x4000, addr("8.8.8.12:1")),
        400,
    );
    // With FINGERPRINT: MESSAGE-INTEGRITY, then FINGERPRINT last.
    let r = h.fails(
        &c,
        Harness::channel_bind_req(&c, 0x4000, addr("8.8.8.12:1")).fingerprint(),
        400,
    );
    assert_eq!(
        r.types(),
        vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY, t::FINGERPRINT]
    );
    assert!(r.has_fingerprint());
    // 401 and 438 are not signed.
    let mut bad = c.req(REFRESH);
    bad.corrupt_integrity = true;
    let r = h.call(c.addr, bad);
    assert_eq!(r.error_code(), Some(401));
    assert!(!r.has_integrity());
    let stale = Client {
        nonce: h.nonce(addr("198.51.100.99:1")),
        ..c.clone()
    };
    let r = h.call(c.addr, stale.req(REFRESH));
    assert_eq!(r.error_code(), Some(438));
    assert!(!r.has_integrity());
    assert_eq!(h.server.allocation_count(), 1);
}

// ---------------------------------------------------------------------------------------
// Issue 10: credentials and live calls, RFC 8489 §9.2.4 order, attribute cap
// ---------------------------------------------------------------------------------------

/// RFC 8489 §9.2.4 orders the checks: integrity (401) before the nonce (438), so a wrong
/// password with a stale nonce is 401 and the right one with a stale nonce is 438.
#[test]
fn wrong_password_with_a_stale_nonce_is_401() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.set_time(700); // the nonce is stale now
    let wrong = Client {
        creds: Creds::rest(b"not-our-secret", UNIX0 + 86_400, "alice", REALM),
        ..c.clone()
    };
    let r = h.call(
        c.addr,
        wrong.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
    );
    assert_challenge(&h, &r, 401);
    // The right password with the stale nonce: 438, unsigned.
    let r = h.call(c.addr, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    assert_challenge(&h, &r, 438);
}

/// RFC 8656 §8.2: "If the 'desired lifetime' is zero, then the request succeeds and the
/// allocation is deleted." Project rule: a closing Refresh whose integrity verifies is honoured
/// even with a stale nonce, so a client that leaves is never kept alive by a 438.
#[test]
fn closing_refresh_with_a_stale_nonce_deletes_the_allocation() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(3600)));
    h.set_time(700); // the nonce is stale, the allocation alive
    h.send(c.addr, c.req(REFRESH).attr(Lifetime::from_u32(0)));
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [Seen::close(a.relay), Seen::success(c.addr, REFRESH)]
    );
    let r = to_client(&outputs[1], c.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert_eq!(r.types(), vec![t::LIFETIME, t::MESSAGE_INTEGRITY]);
    assert!(r.integrity_valid(&c.key()));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.ports_in_use(), [0, 0]);
}

/// RFC 8489 §6.3.1 and §9.2.4: a malformed request is a 400 (Bad Request); integrity is checked
/// over the raw bytes first, so the 400 to an authenticated request is signed.
#[test]
fn undecodable_attributes_of_an_authenticated_request_get_a_signed_400() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.allocate(&c);
    let long_software = vec![b'x'; 130];
    let cases: Vec<(&str, Req)> = vec![
        (
            "address family 0x03",
            c.req(CREATE_PERMISSION)
                .raw(t::XOR_PEER_ADDRESS, &[0x00, 0x03, 0x00, 0x01, 1, 2, 3, 4]),
        ),
        (
            "SOFTWARE of 130 characters",
            c.req(REFRESH).raw(0x8022, &long_software),
        ),
    ];
    for (name, req) in cases {
        let r = h.call(c.addr, req);
        assert_eq!(r.error_code(), Some(400), "{name}");
        assert_eq!(
            r.types(),
            vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY],
            "{name}"
        );
        assert!(r.integrity_valid(&c.key()), "{name}");
    }
    assert_eq!(h.server.allocation_count(), 1);
}

/// Credentials that expire at UNIX0 + 100.
fn short_creds(id: &str) -> Creds {
    Creds::rest(SECRET, UNIX0 + 100, id, REALM)
}

/// DESIGN: the REST username's expiry is judged when the allocation is created; the
/// allocation lives on with that username (RFC 8656 §6: the authentication information is that
/// of the Allocate). Another username on the same 5-tuple is 441 (Wrong Credentials).
#[test]
fn expired_username_lives_on_with_its_allocation() {
    let mut h = Harness::new();
    let mut c = h.client("198.51.100.1:40000", "alice");
    c.creds = short_creds("alice");
    h.allocate(&c);
    h.set_time(500); // the username expired 400 s ago
    h.renew(&mut c);
    let r = h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(3600)));
    assert_eq!(lifetime_of(&r), 3600);
    h.create_permission(&c, &[addr("8.8.8.9:1")]);
    // Another username, expired, on the same 5-tuple: 401; valid but different: 441.
    let other = Client {
        creds: short_creds("bob"),
        ..c.clone()
    };
    let r = h.call(c.addr, other.req(REFRESH));
    assert_challenge_with(&h, &r, 401, 1);
    let other = Client {
        creds: creds("bob"),
        ..c.clone()
    };
    h.fails(&other, other.req(REFRESH), 441);
    // The expired username cannot make a new allocation elsewhere.
    let mut d = h.client("198.51.100.2:40000", "alice");
    d.creds = short_creds("alice");
    let r = h.call(d.addr, d.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    assert_challenge_with(&h, &r, 401, 1);
}

/// `--strict-credential-expiry` (README): requests after the REST username expired are 401,
/// and the allocation ends at the expiry.
#[test]
fn strict_credential_expiry_ends_the_allocation_at_the_expiry() {
    let mut h = Harness::with_config(Config {
        strict_credential_expiry: true,
        ..config()
    });
    let mut c = h.client("198.51.100.1:40000", "alice");
    c.creds = short_creds("alice");
    h.allocate(&c);
    h.set_time(100);
    h.ok(&c, c.req(REFRESH));
    h.set_time(101);
    let r = h.call(c.addr, c.req(REFRESH));
    assert_challenge_with(&h, &r, 401, 1);
}

/// Project rule (README, bounded work): a request with more than 128 attributes is a 400
/// (Bad Request, RFC 8489 §6.3.1) before any is decoded.
#[test]
fn attribute_count_is_capped_at_128() {
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");
    let with = |n: usize| {
        let mut req = Req::request(BINDING);
        for _ in 0..n {
            req = req.raw(0xC0AA, b"");
        }
        req
    };
    let r = h.call(c, with(128));
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    let r = h.call(c, with(129));
    assert_eq!(r.error_code(), Some(400));
    assert_eq!(r.types(), vec![t::ERROR_CODE]);
    // 16,200 empty attributes: the same 400, after walking 129 TLV headers.
    let r = h.call(c, with(16_200));
    assert_eq!(r.error_code(), Some(400));
    // An authenticated request with too many attributes is refused before its credentials.
    let client = h.client("198.51.100.2:40000", "alice");
    let mut req = client.req(ALLOCATE).attr(RequestedTransport::new(UDP));
    for _ in 0..130 {
        req = req.raw(0xC0AA, b"");
    }
    let r = h.call(client.addr, req);
    assert_eq!(r.error_code(), Some(400));
    assert_eq!(h.server.allocation_count(), 0);
}

/// RFC 8489 §14.3, §14.9, §14.10, §14.14: USERNAME is at most 512 bytes (as RFC 5389 had
/// it), REALM, NONCE and SOFTWARE fewer than 763. A longer one is refused with 400 before
/// anything is decoded, so that a 60 KB text attribute costs no more than a short one.
#[test]
fn text_attributes_over_their_rfc_length_are_refused_unread() {
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");
    // A USERNAME of 512 bytes decodes, and a Binding ignores it; 513 is a 400.
    let r = h.call(c, Req::request(BINDING).raw(t::USERNAME, &[b'u'; 512]));
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    let r = h.call(c, Req::request(BINDING).raw(t::USERNAME, &[b'u'; 513]));
    assert_eq!(
        (r.error_code(), r.types()),
        (Some(400), vec![t::ERROR_CODE])
    );
    for kind in [t::REALM, t::NONCE, 0x8022] {
        // 127 three-byte characters (381 bytes): within both of the RFC's limits.
        let text = "€".repeat(127).into_bytes()[..381].to_vec();
        let r = h.call(c, Req::request(BINDING).raw(kind, &text));
        assert_eq!(r.class(), MessageClass::SuccessResponse, "{kind:#06x}");
        let r = h.call(c, Req::request(BINDING).raw(kind, &vec![b'x'; 763]));
        assert_eq!(r.error_code(), Some(400), "{kind:#06x}");
        let r = h.call(c, Req::request(BINDING).raw(kind, &vec![b'x'; 60_000]));
        assert_eq!(r.error_code(), Some(400), "{kind:#06x}");
    }
}

/// RFC 8656 §7.2 item 10: a quota "SHOULD [be] based on the username used to authenticate the
/// request and not on the client's transport address": 1,000 clients behind one NAT address,
/// retransmitting per RFC 8489 §6.2.1, all get their 401 and then their allocation.
#[test]
fn a_thousand_clients_behind_one_address_are_all_allocated_within_two_seconds() {
    // 1,000 clients on one IP start within one second; each retransmits per RFC 8489 (RTO
    // 500 ms, doubling) until it has its 401, then its allocation.
    let mut h = Harness::with_config(Config {
        ports: 50000..=51999,
        max_allocations_per_user: 1000,
        ..config()
    });
    let n = 1000u64;
    // (address, nonce, next send ms, rto ms, tid); nonce None until the 401 arrived.
    struct Pending {
        addr: SocketAddr,
        nonce: Option<String>,
        next: u64,
        rto: u64,
        done_at: Option<u64>,
    }
    let mut clients: Vec<Pending> = (0..n)
        .map(|i| Pending {
            addr: addr(&format!("198.51.100.200:{}", 20000 + i)),
            nonce: None,
            next: i, // one per millisecond
            rto: 500,
            done_at: None,
        })
        .collect();
    let creds = creds("office");
    for ms in 0..=2000u64 {
        h.set_time_ms(ms);
        for client in clients
            .iter_mut()
            .filter(|c| c.done_at.is_none() && c.next == ms)
        {
            let req = match &client.nonce {
                None => Req::request(ALLOCATE).attr(RequestedTransport::new(UDP)),
                Some(nonce) => Req::request(ALLOCATE)
                    .attr(RequestedTransport::new(UDP))
                    .auth(&creds, nonce),
            };
            let mut req = req;
            let mut tid = [0x11; 12];
            tid[..8].copy_from_slice(&client.addr.port().to_be_bytes().repeat(4));
            tid[8] = u8::from(client.nonce.is_some());
            req.transaction_id = Some(tid);
            h.send_bytes(client.addr, &req.build());
            let mut answered = false;
            let outputs = h.drain();
            let shape = seen(&outputs);
            assert!(
                shape.is_empty()
                    || shape == [Seen::error(client.addr, ALLOCATE, 401)]
                    || shape == [Seen::open(V4), Seen::success(client.addr, ALLOCATE)],
                "{outputs:?}"
            );
            for output in outputs {
                let Output::ToClient {
                    bytes, client: to, ..
                } = output
                else {
                    continue;
                };
                assert_eq!(to, client.addr);
                let r = Response::decode(&bytes);
                answered = true;
                if r.class() == MessageClass::SuccessResponse {
                    client.done_at = Some(ms);
                } else {
                    assert_eq!(r.error_code(), Some(401), "{r:?}");
                    client.nonce = Some(r.nonce());
                    client.next = ms; // sends the authenticated one at once
                    client.rto = 500;
                }
            }
            if !answered {
                client.next = ms + client.rto;
                client.rto *= 2;
            } else if client.done_at.is_none() {
                // The authenticated Allocate goes out in the same millisecond.
                let req = Req::request(ALLOCATE)
                    .attr(RequestedTransport::new(UDP))
                    .auth(&creds, client.nonce.as_ref().unwrap())
                    .tid([0x22; 12]);
                let mut req = req;
                let mut tid = [0x22; 12];
                tid[..2].copy_from_slice(&client.addr.port().to_be_bytes());
                req.transaction_id = Some(tid);
                h.send_bytes(client.addr, &req.build());
                let outputs = h.drain();
                if !outputs.is_empty() {
                    let allocated = [Seen::open(V4), Seen::success(client.addr, ALLOCATE)];
                    assert_eq!(seen(&outputs), allocated);
                    client.done_at = Some(ms);
                }
                if client.done_at.is_none() {
                    client.next = ms + client.rto;
                }
            }
        }
    }
    let allocated = clients.iter().filter(|c| c.done_at.is_some()).count();
    assert_eq!(allocated, n as usize, "allocated within 2 s");
    assert_eq!(h.server.allocation_count(), n as usize);
    assert_eq!(h.server.counters().rate_limited, 0);
}
