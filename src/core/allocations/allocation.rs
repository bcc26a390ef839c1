//! One allocation: its client, credentials, relay sockets, permissions and channels, and the
//! RFC 8656 rules about them. Pure state; the server decides what to send.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use stun_codec::TransactionId;

use super::bandwidth::TokenBucket;
use super::ports::PortNeed;
use super::timer_wheel::TimerHandle;
use crate::core::client::ClientKey;
use crate::core::ids::{Family, RelayId};
use crate::core::usage::Usage;

/// Bounds on per-allocation state, so that one authenticated client cannot grow memory
/// without limit. WebRTC clients use a handful of each.
pub(crate) const MAX_PERMISSIONS: usize = 64;
pub(crate) const MAX_CHANNELS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelaySocket {
    /// Not requested for this allocation.
    None,
    /// The driver was asked to bind this port; `attempts` counts ports tried so far.
    Opening {
        port: u16,
        attempts: u8,
    },
    Open {
        relay: RelayId,
        port: u16,
    },
}

impl RelaySocket {
    pub(crate) fn port(self) -> Option<u16> {
        match self {
            RelaySocket::None => None,
            RelaySocket::Opening { port, .. } | RelaySocket::Open { port, .. } => Some(port),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Permission {
    pub ip: IpAddr,
    pub expires_at: Instant,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Channel {
    pub number: u16,
    pub peer: SocketAddr,
    pub expires_at: Instant,
    /// End of the reservation after expiry (RFC 8656 §12: the number and the peer stay
    /// unavailable for other bindings for 5 minutes).
    pub held_until: Instant,
}

/// Why a ChannelBind cannot be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindRefusal {
    /// The number is bound (or held) for another peer, or the peer for another number.
    Conflict,
    /// Too many channels on this allocation.
    Full,
}

/// What a new allocation is made of (`Allocations::create` files it).
pub(crate) struct NewAllocation {
    pub(crate) client: ClientKey,
    pub(crate) username: String,
    pub(crate) key: [u8; 16],
    pub(crate) expires_at: Instant,
    pub(crate) created_unix: u64,
    /// When it was created, for the usage record's duration.
    pub(crate) created_at: Instant,
    /// The ports taken for it, by `Family::index()`; a socket is opened on each.
    pub(crate) ports: [Option<u16>; 2],
    pub(crate) allocate_transaction: TransactionId,
    pub(crate) allocate_fingerprint: bool,
    pub(crate) dont_fragment: bool,
    pub(crate) retry_need: Option<PortNeed>,
    pub(crate) reservation: Option<u64>,
}

pub(crate) struct Allocation {
    /// Its key in the owner's client index: never changed after `create`.
    pub(super) client: ClientKey,
    pub username: String,
    pub key: [u8; 16],
    pub expires_at: Instant,
    /// Unix seconds when it was created: the oldest nonce a closing Refresh may carry
    /// stale is one issued a nonce lifetime before that.
    pub created_unix: u64,
    /// When it was created (the usage record's duration starts here).
    pub created_at: Instant,
    /// What it relayed so far, both ways (for the usage record).
    pub usage: Usage,
    /// Indexed by `Family::index()`.
    pub(super) relays: [RelaySocket; 2],
    pub permissions: Vec<Permission>,
    pub channels: Vec<Channel>,
    /// The Allocate transaction that created this allocation, and the success response
    /// sent for it, so a retransmission gets the same answer (RFC 8656 §7.2).
    pub allocate_transaction: TransactionId,
    pub allocate_response: Option<Vec<u8>>,
    /// Whether the Allocate carried FINGERPRINT (mirrored in its deferred response).
    pub allocate_fingerprint: bool,
    /// DONT-FRAGMENT was requested: relay sockets send with DF set.
    pub dont_fragment: bool,
    /// What another port must be when a bind finds the port in use (the kind EVEN-PORT
    /// asked for); `None` when only this port will do, as for a RESERVATION-TOKEN's.
    pub(super) retry_need: Option<PortNeed>,
    /// The token of the port reserved next to ours (EVEN-PORT with R), for the response.
    pub reservation: Option<u64>,
    /// Its one entry in the timer wheel, once it is live (filed when the Allocate succeeds,
    /// moved when a deadline changes, cancelled when the allocation goes).
    pub(super) timer: Option<TimerHandle>,
    /// Its bandwidth bucket (`--max-bps-per-allocation`).
    pub(super) bucket: TokenBucket,
    /// Its user's bandwidth bucket, in the owner's `user_buckets` (`--max-bps-per-user`).
    pub(super) user_bucket: usize,
}

impl Allocation {
    /// The client (5-tuple) this allocation belongs to.
    pub(crate) fn client(&self) -> ClientKey {
        self.client
    }

    pub(super) fn new(new: NewAllocation, user_bucket: usize) -> Self {
        Allocation {
            client: new.client,
            username: new.username,
            key: new.key,
            expires_at: new.expires_at,
            created_unix: new.created_unix,
            created_at: new.created_at,
            usage: Usage::default(),
            relays: new.ports.map(|port| match port {
                Some(port) => RelaySocket::Opening { port, attempts: 1 },
                None => RelaySocket::None,
            }),
            permissions: Vec::new(),
            channels: Vec::new(),
            allocate_transaction: new.allocate_transaction,
            allocate_response: None,
            allocate_fingerprint: new.allocate_fingerprint,
            dont_fragment: new.dont_fragment,
            retry_need: new.retry_need,
            reservation: new.reservation,
            timer: None,
            bucket: TokenBucket::default(),
            user_bucket,
        }
    }

    pub(crate) fn relay(&self, family: Family) -> RelaySocket {
        self.relays[family.index()]
    }

    pub(crate) fn has_family(&self, family: Family) -> bool {
        self.relay(family) != RelaySocket::None
    }

    pub(crate) fn is_open(&self) -> bool {
        self.relays
            .iter()
            .all(|r| !matches!(r, RelaySocket::Opening { .. }))
    }

    pub(crate) fn has_permission(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .iter()
            .any(|p| p.ip == ip && now < p.expires_at)
    }

    /// Installs or refreshes the permission for `ip`. False when the allocation is full.
    pub(crate) fn permit(&mut self, ip: IpAddr, now: Instant, lifetime: Duration) -> bool {
        let expires_at = now + lifetime;
        if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
            p.expires_at = expires_at;
            return true;
        }
        self.permissions.retain(|p| now < p.expires_at);
        if self.permissions.len() >= MAX_PERMISSIONS {
            return false;
        }
        self.permissions.push(Permission { ip, expires_at });
        true
    }

    /// Whether the permissions for all of `ips` (sorted, without duplicates) can be installed
    /// without passing the bound. Linear in the table: each live permission is looked up in
    /// `ips` by binary search (permissions are unique per IP, see `permit`).
    pub(crate) fn can_permit_all(&self, ips: &[IpAddr], now: Instant) -> bool {
        debug_assert!(ips.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
        let (mut live, mut present) = (0, 0);
        for p in self.permissions.iter().filter(|p| now < p.expires_at) {
            live += 1;
            if ips.binary_search(&p.ip).is_ok() {
                present += 1;
            }
        }
        live + (ips.len() - present) <= MAX_PERMISSIONS
    }

    /// Installs or refreshes the permissions for all of `ips` (sorted, without duplicates),
    /// or none of them when they would not all fit. One pass over the table, not one per IP.
    pub(crate) fn permit_all(&mut self, ips: &[IpAddr], now: Instant, lifetime: Duration) -> bool {
        if ips.len() > MAX_PERMISSIONS || !self.can_permit_all(ips, now) {
            return false;
        }
        let expires_at = now + lifetime;
        self.permissions.retain(|p| now < p.expires_at);
        let mut refreshed = [false; MAX_PERMISSIONS];
        for p in &mut self.permissions {
            if let Ok(i) = ips.binary_search(&p.ip) {
                p.expires_at = expires_at;
                refreshed[i] = true;
            }
        }
        for (ip, _) in ips.iter().zip(refreshed).filter(|(_, done)| !done) {
            self.permissions.push(Permission {
                ip: *ip,
                expires_at,
            });
        }
        true
    }

    /// The peer of a bound (not expired) channel.
    pub(crate) fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.channels
            .iter()
            .find(|c| c.number == number && now < c.expires_at)
            .map(|c| c.peer)
    }

    /// The number of the bound channel to `peer`.
    pub(crate) fn channel_to(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && now < c.expires_at)
            .map(|c| c.number)
    }

    /// Binds or refreshes channel `number` to `peer` (RFC 8656 §12.2 rules).
    pub(crate) fn bind_channel(
        &mut self,
        number: u16,
        peer: SocketAddr,
        now: Instant,
        lifetime: Duration,
        hold: Duration,
    ) -> Result<(), BindRefusal> {
        self.channels.retain(|c| now < c.held_until);
        let conflict = self
            .channels
            .iter()
            .any(|c| (c.number == number) != (c.peer == peer));
        if conflict {
            return Err(BindRefusal::Conflict);
        }
        let expires_at = now + lifetime;
        let held_until = expires_at + hold;
        if let Some(c) = self.channels.iter_mut().find(|c| c.number == number) {
            c.expires_at = expires_at;
            c.held_until = held_until;
            return Ok(());
        }
        if self.channels.len() >= MAX_CHANNELS {
            return Err(BindRefusal::Full);
        }
        self.channels.push(Channel {
            number,
            peer,
            expires_at,
            held_until,
        });
        Ok(())
    }

    /// Drops permissions and channel reservations that are over at `now`.
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.permissions.retain(|p| now < p.expires_at);
        self.channels.retain(|c| now < c.held_until);
    }

    /// The earliest moment something of this allocation is due.
    pub(crate) fn next_deadline(&self) -> Instant {
        let permissions = self.permissions.iter().map(|p| p.expires_at);
        let channels = self.channels.iter().map(|c| c.held_until);
        permissions
            .chain(channels)
            .fold(self.expires_at, |a, b| a.min(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::ListenerId;

    fn allocation(now: Instant) -> Allocation {
        Allocation {
            client: ClientKey::udp(ListenerId(0), "192.0.2.1:1000".parse().unwrap()),
            username: "u".into(),
            key: [0; 16],
            expires_at: now + Duration::from_secs(600),
            created_unix: 0,
            created_at: now,
            usage: Usage::default(),
            relays: [
                RelaySocket::Open {
                    relay: RelayId(1),
                    port: 50000,
                },
                RelaySocket::None,
            ],
            permissions: Vec::new(),
            channels: Vec::new(),
            allocate_transaction: TransactionId::new([0; 12]),
            allocate_response: None,
            allocate_fingerprint: false,
            dont_fragment: false,
            retry_need: Some(PortNeed::Any),
            reservation: None,
            timer: None,
            bucket: TokenBucket::default(),
            user_bucket: 0,
        }
    }

    const LIFE: Duration = Duration::from_secs(600);
    const HOLD: Duration = Duration::from_secs(300);

    #[test]
    fn channel_conflicts_and_hold() {
        let t0 = Instant::now();
        let mut a = allocation(t0);
        let p1: SocketAddr = "198.51.100.1:7".parse().unwrap();
        let p2: SocketAddr = "198.51.100.2:7".parse().unwrap();
        assert_eq!(a.bind_channel(0x4000, p1, t0, LIFE, HOLD), Ok(()));
        assert_eq!(
            a.bind_channel(0x4000, p2, t0, LIFE, HOLD),
            Err(BindRefusal::Conflict)
        );
        assert_eq!(
            a.bind_channel(0x4001, p1, t0, LIFE, HOLD),
            Err(BindRefusal::Conflict)
        );
        // Same pair refreshes.
        let t1 = t0 + Duration::from_secs(500);
        assert_eq!(a.bind_channel(0x4000, p1, t1, LIFE, HOLD), Ok(()));
        assert_eq!(
            a.channel_peer(0x4000, t0 + Duration::from_secs(1099)),
            Some(p1)
        );
        // Expired but held: unusable, and still not available to others.
        let t2 = t1 + LIFE + Duration::from_secs(1);
        assert_eq!(a.channel_peer(0x4000, t2), None);
        assert_eq!(
            a.bind_channel(0x4000, p2, t2, LIFE, HOLD),
            Err(BindRefusal::Conflict)
        );
        // After the hold, the number is free for another peer.
        let t3 = t1 + LIFE + HOLD;
        assert_eq!(a.bind_channel(0x4000, p2, t3, LIFE, HOLD), Ok(()));
        assert_eq!(a.channel_to(p2, t3), Some(0x4000));
    }

    #[test]
    fn permissions_expire_and_are_bounded() {
        let t0 = Instant::now();
        let mut a = allocation(t0);
        let life = Duration::from_secs(300);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(a.permit(ip, t0, life));
        assert!(a.has_permission(ip, t0 + Duration::from_secs(299)));
        assert!(!a.has_permission(ip, t0 + life));
        for i in 1..MAX_PERMISSIONS {
            assert!(a.permit(IpAddr::from([10, 0, 0, i as u8]), t0, life));
        }
        assert!(!a.permit("203.0.113.9".parse().unwrap(), t0, life));
        // Once the old ones expired there is room again.
        assert!(a.permit("203.0.113.9".parse().unwrap(), t0 + life, life));
        assert_eq!(a.next_deadline(), t0 + life + life);
    }
}
