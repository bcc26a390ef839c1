//! Every datagram a client or a peer can send, through the parsers and the data path:
//! `message::classify` then `message::decode`, `integrity::locate` and the checks that
//! follow it, then the same bytes handed to a server that has an allocation (IPv4 and IPv6
//! relays, permissions, a channel): once from the allocation's client and once from each of
//! several peers (channel peer, permitted peer, IPv6 peer, unpermitted peer). Any panic, a
//! broken invariant or a malformed frame for the client is a finding.
#![no_main]

use std::cell::RefCell;
use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use relay::core::integrity;
use relay::core::message::{self, DecodeError, Framing};

#[path = "../harness/core_driver.rs"]
mod core_driver;
#[path = "../../tests/support/fake_driver.rs"]
mod fake_driver;
#[path = "../../tests/support/stun_encoder.rs"]
mod stun_encoder;

use core_driver::{
    Auth, ChannelChoice, Datagram, Driver, FamilyRequest, Method, NonceMode, Op, PeerChoice,
    Request, Transport, clients,
};

/// Any 16-byte key: a MAC over fuzzer bytes essentially never verifies, but the walk to it
/// must not panic.
const KEY: [u8; 16] = [0x42; 16];

fn parse(data: &[u8]) {
    match message::classify(data) {
        Framing::ChannelData { channel, payload } => {
            assert!((0x4000..=0x4FFF).contains(&channel));
            assert_eq!(payload.start, 4);
            assert!(payload.end <= data.len());
        }
        Framing::Stun(header) => {
            assert_eq!(data.len() % 4, 0);
            assert!(header.method <= 0x0FFF);
            match message::decode(data, header) {
                Ok(decoded) => {
                    if let Some(at) = decoded.integrity {
                        assert!(at + 4 <= data.len());
                    }
                    let _ = message::unknown_required(&decoded.message);
                    assert_eq!(decoded.message.class(), header.class);
                }
                Err(DecodeError::Drop | DecodeError::BadAttributes { .. }) => {}
            }
            for kind in [0x0012, 0x0013, 0x0008, 0x8028] {
                if let Some(range) = message::attribute_value(data, kind) {
                    assert!(range.start >= 24 && range.end <= data.len());
                }
            }
        }
        Framing::Malformed => {}
    }
    if let Ok(layout) = integrity::locate(data) {
        if let Some(mi) = layout.message_integrity {
            assert!(mi >= 20 && mi + 4 <= data.len());
            let _ = integrity::verify_message_integrity(data, mi, &KEY);
        }
        if let Some(fp) = layout.fingerprint {
            assert!(fp >= 20 && fp + 4 <= data.len());
            if let Some(mi) = layout.message_integrity {
                assert!(mi < fp, "FINGERPRINT before MESSAGE-INTEGRITY");
            }
            let _ = integrity::verify_fingerprint(data, fp);
        }
    }
    // Arbitrary offsets must be refused, never panic.
    let offset = data.len().saturating_sub(24);
    let _ = integrity::verify_message_integrity(data, offset, &KEY);
    let _ = integrity::verify_fingerprint(data, data.len().saturating_sub(8));
}

fn request(method: Method) -> Datagram {
    Datagram::Request(Request {
        method,
        auth: Auth {
            user: 0,
            secret: 0,
            nonce: NonceMode::Fresh,
            omit: 0,
            corrupt: false,
            wrong_realm: false,
        },
        tid: 1,
        fingerprint: false,
        extra: None,
    })
}

/// A server with one allocation (IPv4 and IPv6 relays), permissions for peers 0, 1 and 3
/// and channel 0x4000 bound to peer 0.
fn server_with_allocation() -> Driver {
    let mut driver = Driver::new(1, false);
    let client = |datagram| Op::Client {
        client: 0,
        datagram,
    };
    driver.step(&client(request(Method::Allocate {
        transport: Transport::Udp,
        lifetime: Some(3600),
        family: FamilyRequest::Additional(true),
        even_port: None,
        token: None,
        dont_fragment: false,
    })));
    driver.step(&client(request(Method::CreatePermission {
        peers: vec![PeerChoice::Known(1), PeerChoice::Known(3)],
    })));
    driver.step(&client(request(Method::ChannelBind {
        channel: ChannelChoice::Low(0),
        peer: PeerChoice::Known(0),
    })));
    assert_eq!(driver.server.allocation_count(), 1);
    assert_eq!(driver.server.ports_in_use(), [1, 1]);
    assert_eq!(driver.open_relays().len(), 2);
    driver
}

thread_local! {
    static SERVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    parse(data);

    SERVER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let driver = slot.get_or_insert_with(server_with_allocation);
        let client = clients()[0];
        driver.client_datagram(client, data);
        // A request that changed state (only possible with a valid MESSAGE-INTEGRITY) would
        // make later inputs behave differently: start afresh next time.
        let changed = driver.server.allocation_count() != 1
            || driver.server.ports_in_use() != [1, 1]
            || driver
                .last_replies()
                .iter()
                .any(|r| r.is_success() && r.method != core_driver::method::BINDING);
        let peers: [SocketAddr; 4] = [
            core_driver::peers()[0],
            core_driver::peers()[1],
            core_driver::peers()[3],
            "198.51.100.99:9".parse().unwrap(),
        ];
        if data.len() <= 65535 {
            for (relay, peer) in peers.into_iter().enumerate() {
                driver.peer_datagram(relay as u8, peer, data, false);
            }
        }
        if changed {
            *slot = None;
        }
    });
});
