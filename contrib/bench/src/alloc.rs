//! The TURN client side of the load generator: many allocations at once, each the full
//! exchange a real client makes (Allocate → 401 with REALM/NONCE → Allocate with
//! MESSAGE-INTEGRITY → success), then optionally a ChannelBind on each. A window of
//! transactions is kept in flight over level-triggered epoll; lost requests are retransmitted.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::stun::{self, Builder, Credentials, Parsed, TidSource};
use crate::sys::Epoll;

pub const CHANNEL: u16 = 0x4000;
const MAX_TRIES: u32 = 7;

#[derive(Clone)]
enum State {
    Idle,
    /// Allocate without credentials sent (expecting 401).
    Probe {
        tid: [u8; 12],
        msg: Vec<u8>,
    },
    /// Allocate with MESSAGE-INTEGRITY sent.
    Allocate {
        tid: [u8; 12],
        msg: Vec<u8>,
    },
    Allocated,
    Bind {
        tid: [u8; 12],
        msg: Vec<u8>,
    },
    Bound,
    Failed(String),
}

struct Slot {
    state: State,
    sent_at: Instant,
    tries: u32,
    realm: Vec<u8>,
    nonce: Vec<u8>,
    relayed: Option<SocketAddr>,
}

/// What came out of `establish`.
pub struct Established {
    /// Relayed transport address of each allocation (None where it failed).
    pub relayed: Vec<Option<SocketAddr>>,
    pub allocations_ok: usize,
    pub allocate_secs: f64,
    pub binds_ok: usize,
    pub bind_secs: f64,
    pub retransmits: u64,
    pub failures: Vec<String>,
}

pub struct Options {
    pub window: usize,
    /// Retransmission timeout (doubles per try).
    pub rto: Duration,
    /// Bind channel CHANNEL on each allocation to this peer.
    pub channel_peer: Option<SocketAddr>,
}

/// Makes one allocation per socket on `server` (each socket must be connected to it).
pub fn establish(
    sockets: &[UdpSocket],
    creds: &Credentials,
    opts: &Options,
) -> io::Result<Established> {
    let n = sockets.len();
    let mut epoll = Epoll::new(256)?;
    for (i, s) in sockets.iter().enumerate() {
        s.set_nonblocking(true)?;
        epoll.add(s.as_raw_fd(), i as u64)?;
    }
    let mut slots: Vec<Slot> = (0..n)
        .map(|_| Slot {
            state: State::Idle,
            sent_at: Instant::now(),
            tries: 0,
            realm: Vec::new(),
            nonce: Vec::new(),
            relayed: None,
        })
        .collect();
    let mut tids = TidSource::new();
    let mut out = Established {
        relayed: vec![None; n],
        allocations_ok: 0,
        allocate_secs: 0.0,
        binds_ok: 0,
        bind_secs: 0.0,
        retransmits: 0,
        failures: Vec::new(),
    };

    // Phase 1: allocations.
    let t0 = Instant::now();
    run_phase(
        sockets,
        &mut slots,
        &mut epoll,
        opts,
        &mut out,
        |i, slot, tids_: &mut TidSource| {
            let _ = i;
            let tid = tids_.next();
            let msg = Builder::new(stun::ALLOCATE_REQUEST, tid)
                .attr(stun::ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .fingerprint();
            slot.state = State::Probe { tid, msg };
        },
        &mut tids,
        creds,
    )?;
    out.allocate_secs = t0.elapsed().as_secs_f64();
    out.allocations_ok = slots
        .iter()
        .filter(|s| matches!(s.state, State::Allocated))
        .count();
    for (i, s) in slots.iter().enumerate() {
        out.relayed[i] = s.relayed;
    }

    // Phase 2: channel bindings.
    if let Some(peer) = opts.channel_peer {
        let t1 = Instant::now();
        run_phase(
            sockets,
            &mut slots,
            &mut epoll,
            opts,
            &mut out,
            |_, slot, tids_: &mut TidSource| {
                if !matches!(slot.state, State::Allocated) {
                    return;
                }
                let tid = tids_.next();
                let msg = bind_request(tid, peer, creds, &slot.realm, &slot.nonce);
                slot.state = State::Bind { tid, msg };
            },
            &mut tids,
            creds,
        )?;
        out.bind_secs = t1.elapsed().as_secs_f64();
        out.binds_ok = slots
            .iter()
            .filter(|s| matches!(s.state, State::Bound))
            .count();
    }
    for s in &slots {
        if let State::Failed(why) = &s.state
            && out.failures.len() < 5
        {
            out.failures.push(why.clone());
        }
    }
    let failed = slots
        .iter()
        .filter(|s| matches!(s.state, State::Failed(_)))
        .count();
    if failed > 0 {
        out.failures.push(format!("{failed} of {n} failed"));
    }
    Ok(out)
}

pub fn bind_request(
    tid: [u8; 12],
    peer: SocketAddr,
    creds: &Credentials,
    realm: &[u8],
    nonce: &[u8],
) -> Vec<u8> {
    Builder::new(stun::CHANNEL_BIND_REQUEST, tid)
        .attr(
            stun::ATTR_CHANNEL_NUMBER,
            &[(CHANNEL >> 8) as u8, CHANNEL as u8, 0, 0],
        )
        .xor_address(stun::ATTR_XOR_PEER_ADDRESS, peer, &tid)
        .authenticate(creds, realm, nonce)
        .fingerprint()
}

pub fn allocate_request(tid: [u8; 12], creds: &Credentials, realm: &[u8], nonce: &[u8]) -> Vec<u8> {
    Builder::new(stun::ALLOCATE_REQUEST, tid)
        .attr(stun::ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .authenticate(creds, realm, nonce)
        .fingerprint()
}

fn in_flight_msg(state: &State) -> Option<&Vec<u8>> {
    match state {
        State::Probe { msg, .. } | State::Allocate { msg, .. } | State::Bind { msg, .. } => {
            Some(msg)
        }
        _ => None,
    }
}

/// Runs one phase: `start` turns a slot's state into a first request (or leaves it alone);
/// the phase ends when no slot has a request in flight.
#[allow(clippy::too_many_arguments)]
fn run_phase(
    sockets: &[UdpSocket],
    slots: &mut [Slot],
    epoll: &mut Epoll,
    opts: &Options,
    out: &mut Established,
    mut start: impl FnMut(usize, &mut Slot, &mut TidSource),
    tids: &mut TidSource,
    creds: &Credentials,
) -> io::Result<()> {
    let n = slots.len();
    let mut next = 0usize;
    let mut in_flight: Vec<usize> = Vec::with_capacity(opts.window);
    let mut ready = Vec::new();
    let mut buf = vec![0u8; 2048];
    let mut last_scan = Instant::now();
    loop {
        while in_flight.len() < opts.window && next < n {
            let i = next;
            next += 1;
            start(i, &mut slots[i], tids);
            if let Some(msg) = in_flight_msg(&slots[i].state) {
                let _ = sockets[i].send(msg);
                slots[i].sent_at = Instant::now();
                slots[i].tries = 1;
                in_flight.push(i);
            }
        }
        if in_flight.is_empty() && next >= n {
            return Ok(());
        }
        epoll.wait(5, &mut ready)?;
        for &token in &ready {
            let i = token as usize;
            while let Ok(len) = sockets[i].recv(&mut buf) {
                let Some(resp) = Parsed::parse(&buf[..len]) else {
                    continue;
                };
                if handle_response(&mut slots[i], &resp, tids, creds)
                    && let Some(msg) = in_flight_msg(&slots[i].state)
                {
                    let _ = sockets[i].send(msg);
                    slots[i].sent_at = Instant::now();
                    slots[i].tries = 1;
                }
            }
        }
        in_flight.retain(|&i| in_flight_msg(&slots[i].state).is_some());
        let now = Instant::now();
        if now.duration_since(last_scan) >= Duration::from_millis(10) {
            last_scan = now;
            for &i in &in_flight {
                let slot = &mut slots[i];
                let rto = opts.rto * (1 << (slot.tries - 1).min(6));
                if now.duration_since(slot.sent_at) >= rto {
                    if slot.tries >= MAX_TRIES {
                        slot.state = State::Failed("no response".into());
                        continue;
                    }
                    if let Some(msg) = in_flight_msg(&slot.state) {
                        let _ = sockets[i].send(msg);
                    }
                    slot.sent_at = now;
                    slot.tries += 1;
                    out.retransmits += 1;
                }
            }
            in_flight.retain(|&i| in_flight_msg(&slots[i].state).is_some());
        }
    }
}

/// Advances a slot on a response; true if it produced a new request to send.
fn handle_response(
    slot: &mut Slot,
    resp: &Parsed<'_>,
    tids: &mut TidSource,
    creds: &Credentials,
) -> bool {
    let remember_nonce = |slot: &mut Slot| {
        if let Some(r) = resp.attr(stun::ATTR_REALM) {
            slot.realm = r.to_vec();
        }
        if let Some(nonce) = resp.attr(stun::ATTR_NONCE) {
            slot.nonce = nonce.to_vec();
        }
    };
    match &slot.state {
        State::Probe { tid, .. } if *tid == resp.tid => {
            if resp.msg_type == stun::ALLOCATE_ERROR && resp.error_code() == Some(401) {
                remember_nonce(slot);
                let tid = tids.next();
                let msg = allocate_request(tid, creds, &slot.realm, &slot.nonce);
                slot.state = State::Allocate { tid, msg };
                true
            } else {
                slot.state = State::Failed(format!(
                    "unauthenticated Allocate: type {:#06x} code {:?}",
                    resp.msg_type,
                    resp.error_code()
                ));
                false
            }
        }
        State::Allocate { tid, .. } if *tid == resp.tid => {
            if resp.msg_type == stun::ALLOCATE_SUCCESS {
                slot.relayed = resp.xor_address(stun::ATTR_XOR_RELAYED_ADDRESS);
                slot.state = if slot.relayed.is_some() {
                    State::Allocated
                } else {
                    State::Failed("Allocate success without XOR-RELAYED-ADDRESS".into())
                };
                false
            } else if resp.error_code() == Some(438) {
                remember_nonce(slot);
                let tid = tids.next();
                let msg = allocate_request(tid, creds, &slot.realm, &slot.nonce);
                slot.state = State::Allocate { tid, msg };
                true
            } else {
                slot.state = State::Failed(format!(
                    "Allocate: type {:#06x} code {:?}",
                    resp.msg_type,
                    resp.error_code()
                ));
                false
            }
        }
        State::Bind { tid, msg } if *tid == resp.tid => {
            if resp.msg_type == stun::CHANNEL_BIND_SUCCESS {
                slot.state = State::Bound;
                false
            } else if resp.msg_type == stun::CHANNEL_BIND_ERROR && resp.error_code() == Some(438) {
                let peer =
                    Parsed::parse(msg).and_then(|p| p.xor_address(stun::ATTR_XOR_PEER_ADDRESS));
                remember_nonce(slot);
                let Some(peer) = peer else { return false };
                let tid = tids.next();
                let msg = bind_request(tid, peer, creds, &slot.realm, &slot.nonce);
                slot.state = State::Bind { tid, msg };
                true
            } else {
                slot.state = State::Failed(format!(
                    "ChannelBind: type {:#06x} code {:?}",
                    resp.msg_type,
                    resp.error_code()
                ));
                false
            }
        }
        _ => false,
    }
}
