//! The fuzz and property harness, shared by the fuzz targets (`fuzz/fuzz_targets/`) and
//! the property tests (`tests/properties.rs`); both include this file with `#[path]`, and
//! at their root the one fake driver (`tests/support/fake_driver.rs`) and the tests' own
//! STUN encoder (`tests/support/stun_encoder.rs`) it builds on.
//!
//! It runs an op model through the fake driver, which feeds the core datagrams and time,
//! drains `poll_output` after every input, answers `OpenRelay` (at once from a script, or
//! later in request order when the scenario defers completions), and keeps the books of the
//! relay sockets it opened. After every call into the core it checks `invariant_violations()`
//! and what it can see from outside: every output is well-formed, a socket is only closed
//! if it is open and only once, a port is never handed out while a socket is bound to it,
//! forwarded and delivered data is intact and goes to the allocation's owner, granted
//! lifetimes are within RFC 8656 bounds, Refresh(0) frees the allocation, and at the end of
//! a scenario (pending opens answered, time moved past every lifetime) everything is freed.
//!
//! The op model is plain data. In the fuzz crate it derives `arbitrary::Arbitrary`; the
//! property tests (compiled with `cfg(test)`, which fuzz targets never are) build it with
//! proptest strategies instead, so they do not depend on `arbitrary`. Any value of any field
//! is valid: the driver maps numbers into the ranges it wants (e.g. `secs % 4001`), and a zero
//! value is always the ordinary, valid choice, so the fuzzer reaches authenticated state early.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::{Deref, DerefMut, Range};
use std::time::Duration;

use relay::core::{
    AllocationId, Config, Family, Lifetimes, ListenerId, OpenError, Output, RelayAddress,
    Transport as ClientTransport,
};
use stun_codec::MessageClass;

use crate::fake_driver::{FakeDriver, OpenAnswer};
use crate::stun_encoder::{self as enc, Encoder, long_term_key, rest_password};

// ---------------------------------------------------------------------------------------
// The op model
// ---------------------------------------------------------------------------------------

/// With `RELAY_FUZZ_DUMP=<dir>`, every client datagram is written there (named by its
/// hash): replaying the core_sequence corpus this way gives well-formed, authenticated
/// seeds for the parse_datagram corpus, which the fuzzer would take long to find alone.
fn dump_seed(bytes: &[u8]) {
    use std::hash::{DefaultHasher, Hash, Hasher};
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    if let Some(dir) = DIR.get_or_init(|| std::env::var_os("RELAY_FUZZ_DUMP").map(Into::into)) {
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        // Best effort: a seed that cannot be written is just not a seed.
        let _ = std::fs::write(dir.join(format!("{:016x}", hasher.finish())), bytes);
    }
}

/// One fuzz/property case: a server seed, how the driver answers relay opens, and the inputs.
#[derive(Debug, Clone)]
#[cfg_attr(not(test), derive(arbitrary::Arbitrary))]
pub struct Scenario {
    pub seed: u8,
    /// Answer `OpenRelay` only when an `Op::RelayOpened` comes (in request order), instead of
    /// at once while draining (what the real driver does).
    pub deferred_opens: bool,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone)]
#[cfg_attr(not(test), derive(arbitrary::Arbitrary))]
pub enum Op {
    /// A datagram from one of `CLIENTS` (index taken modulo their number).
    Client { client: u8, datagram: Datagram },
    /// A datagram from `peer` on one of the open relay sockets (index modulo their number).
    Peer {
        relay: u8,
        peer: PeerChoice,
        /// Payload length: `len % 1501`, or `len` itself above 0xF000 (near the 16-bit limit).
        len: u16,
        /// Give the core a buffer one byte short of `HEADROOM + len + TAILROOM`.
        short_buffer: bool,
    },
    /// Deferred: completes the oldest pending open. Immediate: the answer to the next open.
    RelayOpened(OpenResult),
    /// Moves the clock by `secs % 4001` seconds and `millis % 1000` ms.
    Advance {
        secs: u16,
        millis: u16,
        timers: TimerMode,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), derive(arbitrary::Arbitrary))]
pub enum OpenResult {
    Ok,
    AddressInUse,
    Other,
}

impl OpenResult {
    pub fn as_result(self) -> Result<(), OpenError> {
        match self {
            OpenResult::Ok => Ok(()),
            OpenResult::AddressInUse => Err(OpenError::AddressInUse),
            OpenResult::Other => Err(OpenError::Other),
        }
    }
}

/// When the driver calls `handle_timeout` after moving the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), derive(arbitrary::Arbitrary))]
pub enum TimerMode {
    /// When `poll_timeout` says so, like the real driver.
    WhenDue,
    /// Regardless (early calls are harmless).
    Always,
    /// Not at all (late calls are harmless).
    Never,
}

#[derive(Debug, Clone)]
#[cfg_attr(not(test), derive(arbitrary::Arbitrary))]
pub enum Datagram {
    /// A well-formed, correctly authenticated (unless told otherwise) TURN request.
    Request(Request),
    /// A Send indication with `len % 1201` bytes of data.
    Send {
        peer: PeerChoice,
        len: u16,
        dont_fragment: bool,
        fingerprint: bool,
        tid: u8,
    },
    /// ChannelData with `len % 1201` bytes of payload and `padding % 4` bytes of padding.
    ChannelData {
        channel: ChannelChoice,
        len: u16,
        padding: u8,
        /// Length field one more than the bytes that follow.
        bad_length: bool,
    },
    /// Anything at all.
    Raw(Vec<u8>),
}

#[derive(Debug, Clone)]
#[cfg_attr(not(test), derive(arbitrary::Arbitrary))]
pub struct Request {
    pub method: Method,
    pub auth: Auth,
    /// Transaction ID, from a small set per client so that retransmissions happen.
    pub tid: u8,
    pub fingerprint: bool,
    /// One more attribute (type, value up to 64 bytes) before MESSAGE-INTEGRITY.
    pub extra: Option<(u16, Vec<u8>)>,
}

#[derive(Debug, Clone)]
#[cfg_attr(not(test), derive(arbitrary::Arbitrary))]
pub enum Method {
    Allocate {
        transport: Transport,
        lifetime: Option<u32>,
        family: FamilyRequest,
        /// EVEN-PORT with this R bit.
        even_port: Option<bool>,
        token: Option<TokenChoice>,
        dont_fragment: bool,
    },
    Refresh {
        lifetime: Option<u32>,
        /// REQUESTED-ADDRESS-FAMILY: IPv6 if true.
        family: Option<bool>,
    },
    ChannelBind {
        channel: ChannelChoice,
        peer: PeerChoice,
    },
    /// XOR-PEER-ADDRESS for each peer (at most 80).
    CreatePermission {
        peers: Vec<PeerChoice>,
    },
    Binding,
}

#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), derive(arbitrary::Arbitrary))]
pub enum Transport {
    Udp,
    Missing,
    Other(u8),
}

#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), derive(arbitrary::Arbitrary))]
pub enum FamilyRequest {
    Default,
    /// REQUESTED-ADDRESS-FAMILY: IPv6 if true.
    Requested(bool),
    /// ADDITIONAL-ADDRESS-FAMILY: IPv6 if true (only IPv6 is valid).
    Additional(bool),
    /// Both attributes (400).
    Both,
    /// REQUESTED-ADDRESS-FAMILY with this family byte.
    RawRequested(u8),
}

#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), derive(arbitrary::Arbitrary))]
pub enum TokenChoice {
    /// One of the RESERVATION-TOKENs the server handed out (modulo their number).
    Seen(u8),
    Raw(u64),
}

#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), derive(arbitrary::Arbitrary))]
pub enum ChannelChoice {
    /// 0x4000 + (n % 4): a few valid numbers, so that bindings collide.
    Low(u8),
    Any(u16),
}

#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), derive(arbitrary::Arbitrary))]
pub enum PeerChoice {
    /// One of `PEERS` (modulo their number).
    Known(u8),
    Any {
        v6: bool,
        ip: [u8; 16],
        port: u16,
    },
}

#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), derive(arbitrary::Arbitrary))]
pub struct Auth {
    /// One of `USERS` (modulo their number).
    pub user: u8,
    /// `SECRETS[secret]`; 2 and above: a secret the server does not know.
    pub secret: u8,
    pub nonce: NonceMode,
    /// Bit 0: leave out USERNAME, bit 1: REALM, bit 2: NONCE.
    pub omit: u8,
    /// Flip a bit of the MESSAGE-INTEGRITY value.
    pub corrupt: bool,
    /// Compute the key with (and send) another realm.
    pub wrong_realm: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), derive(arbitrary::Arbitrary))]
pub enum NonceMode {
    /// What a real client does: get a nonce from a 401 if it has none, retry once on 438.
    Fresh,
    /// Whatever nonce the driver last saw for this address (maybe stale), no retry.
    Cached,
    /// A nonce the server never issued.
    Garbage,
    /// No USERNAME/REALM/NONCE/MESSAGE-INTEGRITY at all.
    Omitted,
}

// ---------------------------------------------------------------------------------------
// The fixture
// ---------------------------------------------------------------------------------------

pub use crate::fake_driver::UNIX0;
pub const REALM: &str = "relay.test";
pub const SECRETS: [&[u8]; 2] = [b"north-secret", b"south-secret"];
pub const PORT_LOW: u16 = 50001;
pub const PORT_HIGH: u16 = 50008;
/// Longest a scenario can be; more ops are ignored (keeps one fuzz input bounded in time).
pub const MAX_OPS: usize = 200;
/// Moved after the last op: more than the longest lifetime (3600 s) plus a channel's hold.
pub const FINAL_ADVANCE: Duration = Duration::from_secs(3600 + 300 + 1);

pub fn listeners() -> Vec<SocketAddr> {
    vec![
        sa("192.0.2.10:3478"),
        sa("[2001:db8::10]:3478"),
        sa("192.0.2.10:3479"),
    ]
}

/// The 5-tuples clients send from: (listener, client address). The first and fourth share
/// an address but not a listener; the first and fifth an IP but not a port. Six of them,
/// with 8 ports per family, so that quotas and the port pool run out.
pub fn clients() -> [(ListenerId, SocketAddr); 6] {
    [
        (ListenerId(0), sa("192.0.2.1:40000")),
        (ListenerId(0), sa("192.0.2.2:40001")),
        (ListenerId(1), sa("[2001:db8::1]:40000")),
        (ListenerId(2), sa("192.0.2.1:40000")),
        (ListenerId(0), sa("192.0.2.1:40002")),
        (ListenerId(1), sa("[2001:db8::2]:40003")),
    ]
}

/// Peers: public v4 and v6, one IP on two ports, loopback (allowed by the config), and
/// addresses the policy refuses (unspecified, multicast) or refuses for channels (port 0).
pub fn peers() -> [SocketAddr; 9] {
    [
        sa("198.51.100.1:5000"),
        sa("198.51.100.2:5001"),
        sa("198.51.100.1:5002"),
        sa("[2001:db8:1::1]:6000"),
        sa("127.0.0.1:7000"),
        sa("0.0.0.0:7"),
        sa("198.51.100.3:0"),
        sa("[::ffff:198.51.100.1]:5000"),
        sa("224.0.0.1:9"),
    ]
}

/// Usernames `<expiry>:<id>`: valid for a day (two of them), expiring 2000 s into the
/// scenario, and already expired.
pub fn users() -> [String; 4] {
    [
        format!("{}:alice", UNIX0 + 86_400),
        format!("{}:bob", UNIX0 + 86_400),
        format!("{}:carol", UNIX0 + 2_000),
        format!("{}:dave", UNIX0 - 1),
    ]
}

#[allow(
    clippy::needless_update,
    reason = "every field is set today; fields the core grows later get their default"
)]
pub fn config() -> Config {
    Config {
        listeners: listeners(),
        realm: REALM.to_owned(),
        auth_secrets: SECRETS.iter().map(|s| s.to_vec()).collect(),
        auth_scheme: Default::default(),
        relay_v4: Some(RelayAddress {
            bind: ip("10.0.0.10"),
            public: ip("203.0.113.10"),
        }),
        relay_v6: Some(RelayAddress {
            bind: ip("fd00::10"),
            public: ip("2001:db8::10"),
        }),
        ports: PORT_LOW..=PORT_HIGH,
        allow_loopback_peers: true,
        // The known peers stand in for Internet hosts with documentation addresses, which
        // the default policy denies: the operator rules open them (and get exercised).
        allow_peers: vec![cidr("198.51.100.0/24"), cidr("2001:db8:1::/48")],
        deny_peers: vec![cidr("198.51.100.3/32")],
        lifetimes: Lifetimes::default(),
        // Quotas below what the pool and the clients allow, so that 486 and 508 happen.
        max_allocations_per_user: 3,
        max_allocations: 5,
        // Whatever else the core grows gets its default.
        ..Config::default()
    }
}

fn cidr(s: &str) -> relay::core::Cidr {
    s.parse().expect("fixture prefix")
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("fixture address")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("fixture address")
}

// ---------------------------------------------------------------------------------------
// Reading the server's answers (raw, so that nothing is hidden by a decoder)
// ---------------------------------------------------------------------------------------

/// A STUN message the server sent, checked for framing.
#[derive(Debug, Clone)]
pub struct Reply {
    pub class: MessageClass,
    pub method: u16,
    pub tid: [u8; 12],
    pub attrs: Vec<(u16, Vec<u8>)>,
}

/// Attribute codepoints, the tests' encoder's.
pub use crate::stun_encoder::kind as attr;

pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

impl Reply {
    /// Parses a datagram the server produced; panics if it is not well-formed STUN (read
    /// by the tests' own code, not the core's).
    pub fn parse(bytes: &[u8]) -> Reply {
        assert!(
            bytes.len() >= enc::HEADER_LEN
                && bytes[0] & 0xC0 == 0
                && bytes[4..8] == enc::MAGIC_COOKIE,
            "server sent a datagram that is not STUN: {bytes:02x?}"
        );
        let attrs =
            enc::tlvs(bytes).unwrap_or_else(|| panic!("server sent broken TLVs: {bytes:02x?}"));
        assert_ne!(
            enc::fingerprint_valid(bytes),
            Some(false),
            "server sent a bad FINGERPRINT: {bytes:02x?}"
        );
        let message_type = u16::from_be_bytes([bytes[0], bytes[1]]);
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&bytes[8..20]);
        Reply {
            class: match enc::Class::of(message_type) {
                enc::Class::Request => MessageClass::Request,
                enc::Class::Indication => MessageClass::Indication,
                enc::Class::Success => MessageClass::SuccessResponse,
                enc::Class::Error => MessageClass::ErrorResponse,
            },
            method: enc::method_of(message_type),
            tid,
            attrs,
        }
    }

    pub fn get(&self, kind: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }

    pub fn error_code(&self) -> Option<u16> {
        let v = self.get(attr::ERROR_CODE)?;
        assert!(v.len() >= 4, "short ERROR-CODE");
        Some(u16::from(v[2] & 0x07) * 100 + u16::from(v[3]))
    }

    pub fn is_success(&self) -> bool {
        self.class == MessageClass::SuccessResponse
    }

    pub fn lifetime(&self) -> Option<u32> {
        let v = self.get(attr::LIFETIME)?;
        Some(u32::from_be_bytes(
            v.try_into().expect("LIFETIME is 4 bytes"),
        ))
    }

    pub fn nonce(&self) -> Option<String> {
        let v = self.get(attr::NONCE)?;
        Some(String::from_utf8(v.to_vec()).expect("NONCE is UTF-8"))
    }

    /// Every XOR-RELAYED-ADDRESS.
    pub fn relayed(&self) -> Vec<SocketAddr> {
        self.attrs
            .iter()
            .filter(|(k, _)| *k == attr::XOR_RELAYED_ADDRESS)
            .map(|(_, v)| xor_decode(v, &self.tid).expect("well-formed XOR-RELAYED-ADDRESS"))
            .collect()
    }
}

pub fn xor_encode(addr: SocketAddr, tid: &[u8; 12]) -> Vec<u8> {
    enc::xor_address(addr, tid)
}

pub fn xor_decode(value: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    enc::xor_address_decode(value, tid)
}

/// A STUN message: header, the attributes (zero-padded), then MESSAGE-INTEGRITY under `key`
/// (one bit flipped if `corrupt`) and FINGERPRINT.
pub fn build_stun(
    message_type: u16,
    tid: &[u8; 12],
    attrs: &[(u16, Vec<u8>)],
    key: Option<&[u8]>,
    corrupt: bool,
    fingerprint: bool,
) -> Vec<u8> {
    let class = enc::Class::of(message_type);
    let mut m = Encoder::new(class, enc::method_of(message_type), *tid);
    for (kind, value) in attrs {
        m.tlv(*kind, value);
    }
    if let Some(key) = key {
        m.integrity(key);
        if corrupt {
            m.flip_last_bit();
        }
    }
    if fingerprint {
        m.fingerprint();
    }
    m.bytes()
}

/// Test data that tells one byte position from another.
pub fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

impl PeerChoice {
    pub fn addr(self) -> SocketAddr {
        match self {
            PeerChoice::Known(i) => peers()[usize::from(i) % peers().len()],
            PeerChoice::Any { v6, ip, port } => {
                let ip = if v6 {
                    IpAddr::V6(Ipv6Addr::from(ip))
                } else {
                    IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))
                };
                SocketAddr::new(ip, port)
            }
        }
    }
}

impl ChannelChoice {
    pub fn number(self) -> u16 {
        match self {
            ChannelChoice::Low(n) => 0x4000 + u16::from(n % 4),
            ChannelChoice::Any(n) => n,
        }
    }
}

fn client_data_len(len: u16) -> usize {
    usize::from(len) % 1201
}

fn peer_data_len(len: u16) -> usize {
    if len > 0xF000 {
        usize::from(len)
    } else {
        usize::from(len) % 1501
    }
}

// ---------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------

/// What a run did, so that property tests can check they were not vacuous.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub allocations: usize,
    pub refreshes_to_zero: usize,
    pub channel_binds: usize,
    pub permissions: usize,
    pub forwards: usize,
    pub delivers: usize,
    pub data_indications: usize,
    pub relays_opened: usize,
    pub errors: HashMap<u16, usize>,
}

pub struct Driver {
    /// The one fake driver: the server, virtual time, the relay sockets.
    pub fake: FakeDriver,
    deferred: bool,
    /// The 5-tuple each allocation ID was created for.
    owners: HashMap<AllocationId, (ListenerId, SocketAddr)>,
    /// The last nonce the server gave each client address.
    nonces: HashMap<SocketAddr, String>,
    /// RESERVATION-TOKENs the server handed out.
    tokens: Vec<u64>,
    /// The client whose datagram is being handled (its outputs go to it alone).
    current: Option<(ListenerId, SocketAddr)>,
    /// Every reply of the current client op, in order.
    replies: Vec<Reply>,
    pub stats: Stats,
}

impl Deref for Driver {
    type Target = FakeDriver;
    fn deref(&self) -> &FakeDriver {
        &self.fake
    }
}

impl DerefMut for Driver {
    fn deref_mut(&mut self) -> &mut FakeDriver {
        &mut self.fake
    }
}

impl Driver {
    pub fn new(seed: u8, deferred_opens: bool) -> Driver {
        let mut fake = FakeDriver::new(config(), [seed; 32]);
        if deferred_opens {
            fake.default_answer = OpenAnswer::Defer;
        }
        Driver {
            fake,
            deferred: deferred_opens,
            owners: HashMap::new(),
            nonces: HashMap::new(),
            tokens: Vec::new(),
            current: None,
            replies: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// The replies to the last client datagram.
    pub fn last_replies(&self) -> &[Reply] {
        &self.replies
    }

    /// Runs a whole scenario, then `finish`.
    pub fn run(scenario: &Scenario) -> Stats {
        let mut driver = Driver::new(scenario.seed, scenario.deferred_opens);
        for op in scenario.ops.iter().take(MAX_OPS) {
            driver.step(op);
        }
        driver.finish();
        driver.stats
    }

    pub fn step(&mut self, op: &Op) {
        match op {
            Op::Client { client, datagram } => {
                let client = clients()[usize::from(*client) % clients().len()];
                self.client_op(client, datagram);
            }
            Op::Peer {
                relay,
                peer,
                len,
                short_buffer,
            } => {
                let payload = pattern(peer_data_len(*len), *relay);
                self.peer_datagram(*relay, peer.addr(), &payload, *short_buffer);
            }
            Op::RelayOpened(result) => {
                if self.deferred {
                    if self.fake.complete_oldest(result.as_result()).is_some() {
                        self.drain();
                    }
                } else {
                    self.fake.script.push_back(match result.as_result() {
                        Ok(()) => OpenAnswer::Ok,
                        Err(e) => OpenAnswer::Err(e),
                    });
                }
            }
            Op::Advance {
                secs,
                millis,
                timers,
            } => {
                let step = Duration::from_secs(u64::from(*secs % 4001))
                    + Duration::from_millis(u64::from(*millis % 1000));
                self.advance(step, *timers);
            }
        }
        self.check_invariants(&format!("{op:?}"));
    }

    /// Moves the clock and maybe fires the timers.
    pub fn advance(&mut self, step: Duration, timers: TimerMode) {
        self.fake.advance_clock(step);
        let now = self.fake.now();
        let fire = match timers {
            TimerMode::WhenDue => self
                .fake
                .server
                .poll_timeout()
                .is_some_and(|at| at <= now.instant),
            TimerMode::Always => true,
            TimerMode::Never => false,
        };
        if fire {
            self.fake.fire_timers();
            self.drain();
        }
    }

    /// The end of every scenario: the driver answers every open still pending, time moves
    /// past every lifetime and timers fire: then nothing may be left.
    pub fn finish(&mut self) {
        while self.fake.complete_oldest(Ok(())).is_some() {
            self.drain();
        }
        self.advance(FINAL_ADVANCE, TimerMode::WhenDue);
        assert_eq!(
            self.server.allocation_count(),
            0,
            "allocations left after every lifetime ran out"
        );
        assert_eq!(
            self.server.ports_in_use(),
            [0, 0],
            "ports left in use after every lifetime ran out"
        );
        let open = self.fake.open_relays();
        assert!(open.is_empty(), "relay sockets never closed: {open:?}");
        assert_eq!(
            self.server.poll_timeout(),
            None,
            "timers left after everything expired"
        );
        assert_eq!(
            self.server.footprint(),
            relay::core::Footprint::default(),
            "per-client state left after everything expired"
        );
        self.check_invariants("the end");
    }

    // --- outputs ------------------------------------------------------------------------

    /// Takes every output (the fake driver opens and closes the sockets and checks them),
    /// checking what this model knows on top: replies go to the client that sent, and each
    /// allocation's owner.
    fn drain(&mut self) {
        while let Some(output) = self.fake.next_output() {
            match output {
                Output::ToClient {
                    transport,
                    client,
                    bytes,
                } => {
                    // The model has UDP clients only.
                    let ClientTransport::Udp(listener) = transport else {
                        panic!("reply over a stream to a UDP-only model: {transport:?}");
                    };
                    assert!(
                        usize::from(listener.0) < listeners().len(),
                        "reply on unknown listener {listener:?}"
                    );
                    if let Some(current) = self.current {
                        assert_eq!(
                            (listener, client),
                            current,
                            "reply to another client than the one that sent"
                        );
                    }
                    let reply = Reply::parse(&bytes);
                    self.observe(listener, client, &reply);
                    self.replies.push(reply);
                }
                Output::OpenRelay { allocation, .. } => {
                    if let Some(current) = self.current {
                        self.owners.insert(allocation, current);
                    }
                }
                Output::CloseRelay { .. } => {}
            }
        }
        self.stats.relays_opened = self.fake.opened;
        self.fake.check_invariants("draining");
    }

    /// Checks one reply on its own and learns nonces and tokens from it.
    fn observe(&mut self, listener: ListenerId, client: SocketAddr, reply: &Reply) {
        assert!(
            matches!(
                reply.class,
                MessageClass::SuccessResponse | MessageClass::ErrorResponse
            ),
            "server sent a {:?}",
            reply.class
        );
        if let Some(code) = reply.error_code() {
            *self.stats.errors.entry(code).or_default() += 1;
        }
        if let Some(nonce) = reply.nonce() {
            self.nonces.insert(client, nonce);
        }
        if let Some(token) = reply.get(attr::RESERVATION_TOKEN) {
            let token = u64::from_be_bytes(token.try_into().expect("8-byte RESERVATION-TOKEN"));
            self.tokens.push(token);
        }
        if reply.is_success() && reply.method == method::ALLOCATE {
            self.stats.allocations += 1;
            let lifetime = reply.lifetime().expect("Allocate success without LIFETIME");
            assert!(
                lifetime <= 3600,
                "Allocate granted {lifetime} s, more than 3600"
            );
            if !self.deferred {
                // Answered at the instant of the request: the whole lifetime is granted.
                assert!(
                    lifetime >= 600,
                    "Allocate granted {lifetime} s, less than 600"
                );
            }
            // Every relayed address is a socket the driver has open for this client.
            let relayed = reply.relayed();
            assert!(
                !relayed.is_empty(),
                "Allocate success without a relayed address"
            );
            for addr in relayed {
                let family = Family::of_addr(addr);
                let public = config().relay_address(family).expect("family").public;
                assert_eq!(addr.ip(), public, "relayed address is not the public one");
                let bound = self.fake.open.values().any(|r| {
                    r.family == family
                        && r.addr.port() == addr.port()
                        && self.owners.get(&r.allocation) == Some(&(listener, client))
                });
                assert!(
                    bound,
                    "Allocate success names {addr}, but no open relay socket of this client \
                     is bound to that port: {:?}",
                    self.fake.open
                );
            }
        }
    }

    // --- inputs -------------------------------------------------------------------------

    fn client_op(&mut self, client: (ListenerId, SocketAddr), datagram: &Datagram) {
        match datagram {
            Datagram::Raw(bytes) => {
                self.client_datagram(client, bytes);
            }
            Datagram::Request(request) => self.request(client, request),
            Datagram::Send {
                peer,
                len,
                dont_fragment,
                fingerprint,
                tid,
            } => {
                let tid = tid_for(client, *tid);
                let data = pattern(client_data_len(*len), tid[11]);
                let mut attrs = vec![
                    (attr::XOR_PEER_ADDRESS, xor_encode(peer.addr(), &tid)),
                    (attr::DATA, data.clone()),
                ];
                if *dont_fragment {
                    attrs.push((attr::DONT_FRAGMENT, Vec::new()));
                }
                let bytes = build_stun(0x0016, &tid, &attrs, None, false, *fingerprint);
                let forward = self.client_datagram(client, &bytes);
                if let Some((range, to)) = forward {
                    assert_eq!(to, peer.addr(), "Send forwarded to another peer");
                    assert_eq!(bytes[range], data[..], "Send forwarded other bytes");
                }
            }
            Datagram::ChannelData {
                channel,
                len,
                padding,
                bad_length,
            } => {
                let data = pattern(client_data_len(*len), 0x5A);
                let declared = data.len() + usize::from(*padding % 4) + usize::from(*bad_length);
                let mut bytes = channel.number().to_be_bytes().to_vec();
                bytes.extend_from_slice(&(declared as u16).to_be_bytes());
                bytes.extend_from_slice(&data);
                bytes.resize(bytes.len() + usize::from(*padding % 4), 0);
                let forward = self.client_datagram(client, &bytes);
                if let Some((range, _)) = forward {
                    assert!(!*bad_length, "ChannelData with a lying length forwarded");
                    assert!(
                        (0x4000..=0x4FFF).contains(&channel.number()),
                        "ChannelData forwarded on channel {:#06x}",
                        channel.number()
                    );
                    assert_eq!(range.start, 4, "ChannelData payload does not start at 4");
                    assert_eq!(
                        bytes[range][..data.len()],
                        data[..],
                        "ChannelData forwarded other bytes"
                    );
                }
            }
        }
    }

    /// Hands one datagram to the core and drains; returns the forwarded range and peer.
    pub fn client_datagram(
        &mut self,
        client: (ListenerId, SocketAddr),
        bytes: &[u8],
    ) -> Option<(Range<usize>, SocketAddr)> {
        self.current = Some(client);
        self.replies.clear();
        dump_seed(bytes);
        let forward = self.fake.client_datagram(client.0, client.1, bytes);
        let result = forward.map(|f| {
            assert_eq!(
                self.owners.get(&self.fake.relay(f.relay).allocation),
                Some(&client),
                "Forward through another client's relay"
            );
            self.stats.forwards += 1;
            (f.payload, f.peer)
        });
        self.drain();
        self.current = None;
        result
    }

    /// A datagram from `peer` arriving on one of the open relay sockets (or, when there is
    /// none, for a made-up allocation ID). Checks the frame handed to the client.
    pub fn peer_datagram(
        &mut self,
        relay: u8,
        peer: SocketAddr,
        payload: &[u8],
        short_buffer: bool,
    ) {
        let open = self.open_relays();
        let allocation = if open.is_empty() {
            AllocationId {
                slot: usize::from(relay % 4),
                generation: 0,
            }
        } else {
            open[usize::from(relay) % open.len()].1.allocation
        };
        let delivered = self
            .fake
            .peer_datagram(allocation, peer, payload, short_buffer);
        if let Some((deliver, frame)) = delivered {
            assert_eq!(
                self.owners.get(&allocation),
                Some(&(
                    match deliver.transport {
                        ClientTransport::Udp(listener) => listener,
                        ClientTransport::Stream(_) => panic!("delivered over a stream"),
                    },
                    deliver.client
                )),
                "delivered to another client than the allocation's"
            );
            check_frame(&frame, peer, payload);
            self.stats.delivers += 1;
            if frame[0] < 0x40 {
                self.stats.data_indications += 1;
            }
        }
        self.drain();
    }

    /// A structured request, authenticated like a real client would (or broken as told).
    fn request(&mut self, client: (ListenerId, SocketAddr), request: &Request) {
        let tid = tid_for(client, request.tid);
        if request.auth.nonce == NonceMode::Fresh && !self.nonces.contains_key(&client.1) {
            // First contact: an unauthenticated attempt gets the 401 with a nonce.
            let mut probe = tid;
            probe[0] ^= 0xFF;
            let bytes = self.build_request(client, request, &probe, false);
            self.client_datagram(client, &bytes);
        }
        let mut attempt = self.send_request(client, request, &tid);
        if request.auth.nonce == NonceMode::Fresh
            && attempt
                .iter()
                .any(|r| r.tid == tid && r.error_code() == Some(438))
        {
            attempt = self.send_request(client, request, &tid);
        }
        let _ = attempt;
    }

    /// Sends the request once and checks what its answer implies.
    fn send_request(
        &mut self,
        client: (ListenerId, SocketAddr),
        request: &Request,
        tid: &[u8; 12],
    ) -> Vec<Reply> {
        let bytes = self.build_request(client, request, tid, true);
        let allocations_before = self.server.allocation_count();
        let ports_before: usize = self.server.ports_in_use().iter().sum();
        let own_relays: Vec<_> = self
            .fake
            .open_relays()
            .into_iter()
            .filter(|(_, r)| self.owners.get(&r.allocation) == Some(&client))
            .map(|(id, _)| id)
            .collect();
        let forward = self.client_datagram(client, &bytes);
        assert!(forward.is_none(), "a request was forwarded");
        let replies = std::mem::take(&mut self.replies);
        let answer = replies.iter().find(|r| r.tid == *tid);
        let Some(answer) = answer.filter(|r| r.is_success()) else {
            return replies;
        };
        match &request.method {
            Method::Refresh { .. } if answer.lifetime() == Some(0) => {
                // Refresh(0) deletes the allocation at once, and with it its ports and sockets.
                self.stats.refreshes_to_zero += 1;
                assert_eq!(
                    self.server.allocation_count() + 1,
                    allocations_before,
                    "Refresh(0) answered with success but the allocation is still there"
                );
                let ports_after: usize = self.server.ports_in_use().iter().sum();
                assert_eq!(
                    ports_before - ports_after,
                    own_relays.len(),
                    "Refresh(0) freed {} ports, the allocation had {} relay sockets",
                    ports_before - ports_after,
                    own_relays.len()
                );
                assert!(
                    !own_relays.is_empty(),
                    "Refresh(0) of an allocation without sockets"
                );
                for id in own_relays {
                    assert!(!self.fake.is_open(id), "Refresh(0) left {id:?} open");
                }
            }
            Method::Refresh { lifetime, .. } => {
                let granted = answer.lifetime().expect("Refresh success without LIFETIME");
                assert!(granted <= 3600, "Refresh granted {granted} s");
                if let Some(asked) = lifetime {
                    assert!(
                        granted <= (*asked).max(600),
                        "Refresh granted more than asked"
                    );
                }
            }
            Method::ChannelBind { channel, .. } => {
                self.stats.channel_binds += 1;
                assert!(
                    (0x4000..=0x4FFF).contains(&channel.number()),
                    "ChannelBind of {:#06x} succeeded",
                    channel.number()
                );
            }
            Method::CreatePermission { .. } => self.stats.permissions += 1,
            Method::Allocate { .. } | Method::Binding => {}
        }
        replies
    }

    fn build_request(
        &self,
        client: (ListenerId, SocketAddr),
        request: &Request,
        tid: &[u8; 12],
        with_auth: bool,
    ) -> Vec<u8> {
        let mut attrs: Vec<(u16, Vec<u8>)> = Vec::new();
        let method = match &request.method {
            Method::Allocate {
                transport,
                lifetime,
                family,
                even_port,
                token,
                dont_fragment,
            } => {
                match transport {
                    Transport::Udp => attrs.push((attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])),
                    Transport::Missing => {}
                    Transport::Other(p) => {
                        attrs.push((attr::REQUESTED_TRANSPORT, vec![*p, 0, 0, 0]))
                    }
                }
                if let Some(lifetime) = lifetime {
                    attrs.push((attr::LIFETIME, lifetime.to_be_bytes().to_vec()));
                }
                let fam = |v6: bool| vec![if v6 { 2 } else { 1 }, 0, 0, 0];
                match family {
                    FamilyRequest::Default => {}
                    FamilyRequest::Requested(v6) => {
                        attrs.push((attr::REQUESTED_ADDRESS_FAMILY, fam(*v6)))
                    }
                    FamilyRequest::Additional(v6) => {
                        attrs.push((attr::ADDITIONAL_ADDRESS_FAMILY, fam(*v6)))
                    }
                    FamilyRequest::Both => {
                        attrs.push((attr::REQUESTED_ADDRESS_FAMILY, fam(false)));
                        attrs.push((attr::ADDITIONAL_ADDRESS_FAMILY, fam(true)));
                    }
                    FamilyRequest::RawRequested(b) => {
                        attrs.push((attr::REQUESTED_ADDRESS_FAMILY, vec![*b, 0, 0, 0]))
                    }
                }
                if let Some(reserve) = even_port {
                    attrs.push((attr::EVEN_PORT, vec![if *reserve { 0x80 } else { 0 }]));
                }
                match token {
                    Some(TokenChoice::Seen(i)) if !self.tokens.is_empty() => {
                        let token = self.tokens[usize::from(*i) % self.tokens.len()];
                        attrs.push((attr::RESERVATION_TOKEN, token.to_be_bytes().to_vec()));
                    }
                    Some(TokenChoice::Seen(_)) => {}
                    Some(TokenChoice::Raw(token)) => {
                        attrs.push((attr::RESERVATION_TOKEN, token.to_be_bytes().to_vec()))
                    }
                    None => {}
                }
                if *dont_fragment {
                    attrs.push((attr::DONT_FRAGMENT, Vec::new()));
                }
                method::ALLOCATE
            }
            Method::Refresh { lifetime, family } => {
                if let Some(lifetime) = lifetime {
                    attrs.push((attr::LIFETIME, lifetime.to_be_bytes().to_vec()));
                }
                if let Some(v6) = family {
                    let f = if *v6 { 2 } else { 1 };
                    attrs.push((attr::REQUESTED_ADDRESS_FAMILY, vec![f, 0, 0, 0]));
                }
                method::REFRESH
            }
            Method::ChannelBind { channel, peer } => {
                let mut number = channel.number().to_be_bytes().to_vec();
                number.extend_from_slice(&[0, 0]);
                attrs.push((attr::CHANNEL_NUMBER, number));
                attrs.push((attr::XOR_PEER_ADDRESS, xor_encode(peer.addr(), tid)));
                method::CHANNEL_BIND
            }
            Method::CreatePermission { peers } => {
                for peer in peers.iter().take(80) {
                    attrs.push((attr::XOR_PEER_ADDRESS, xor_encode(peer.addr(), tid)));
                }
                method::CREATE_PERMISSION
            }
            Method::Binding => method::BINDING,
        };
        if let Some((kind, value)) = &request.extra {
            attrs.push((*kind, value.iter().take(64).copied().collect()));
        }
        let auth = request.auth;
        let mut key = None;
        if with_auth && auth.nonce != NonceMode::Omitted {
            let username = users()[usize::from(auth.user) % users().len()].clone();
            let realm = if auth.wrong_realm {
                "elsewhere.test"
            } else {
                REALM
            };
            let nonce = match auth.nonce {
                NonceMode::Fresh | NonceMode::Cached => self.nonces.get(&client.1).cloned(),
                NonceMode::Garbage | NonceMode::Omitted => None,
            }
            .unwrap_or_else(|| "0000000065535f00deadbeefdeadbeef".to_owned());
            let secret: &[u8] = SECRETS
                .get(usize::from(auth.secret))
                .copied()
                .unwrap_or(b"unknown-secret");
            let password = rest_password(secret, &username);
            if auth.omit & 1 == 0 {
                attrs.push((attr::USERNAME, username.clone().into_bytes()));
            }
            if auth.omit & 2 == 0 {
                attrs.push((attr::REALM, realm.as_bytes().to_vec()));
            }
            if auth.omit & 4 == 0 {
                attrs.push((attr::NONCE, nonce.into_bytes()));
            }
            key = Some(long_term_key(&username, realm, &password));
        }
        build_stun(
            method,
            tid,
            &attrs,
            key.as_ref().map(|k| &k[..]),
            auth.corrupt,
            request.fingerprint,
        )
    }
}

/// Transaction IDs: per client, a few per scenario, so the fuzzer can retransmit.
fn tid_for(client: (ListenerId, SocketAddr), n: u8) -> [u8; 12] {
    let mut tid = [0x5Au8; 12];
    tid[0] = client.0.0 as u8;
    tid[1] = client.1.port() as u8;
    tid[2] = match client.1.ip() {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(v6) => v6.octets()[15],
    };
    tid[11] = n % 8;
    tid
}

/// A frame the core built for the client from a peer datagram: ChannelData carrying the
/// payload, or a Data indication from `peer` carrying it.
pub fn check_frame(frame: &[u8], peer: SocketAddr, payload: &[u8]) {
    assert!(frame.len() >= 4, "delivered a runt frame: {frame:02x?}");
    if frame[0] & 0xC0 == 0x40 {
        let channel = u16::from_be_bytes([frame[0], frame[1]]);
        let len = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
        assert!(
            (0x4000..=0x4FFF).contains(&channel),
            "channel {channel:#06x}"
        );
        assert_eq!(
            frame.get(4..4 + len),
            Some(payload),
            "ChannelData carries other bytes"
        );
    } else {
        let reply = Reply::parse(frame);
        assert_eq!(reply.class, MessageClass::Indication);
        assert_eq!(reply.method, method::DATA);
        let from = reply
            .get(attr::XOR_PEER_ADDRESS)
            .and_then(|v| xor_decode(v, &reply.tid));
        assert_eq!(from, Some(peer), "Data indication names another peer");
        assert_eq!(
            reply.get(attr::DATA),
            Some(payload),
            "Data indication carries other bytes"
        );
    }
}
