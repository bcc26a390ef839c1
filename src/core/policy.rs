//! Which peer addresses a client may reach through the relay. A TURN relay is a proxy into
//! the network it sits in, so addresses that are not globally reachable are refused (403).

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    pub allow_loopback: bool,
}

/// What the peer address is used for: a permission ignores the port (RFC 8656 §10.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerUse {
    Permission,
    ChannelOrSend,
}

impl PeerPolicy {
    pub fn allows(&self, peer: SocketAddr, usage: PeerUse) -> bool {
        if usage == PeerUse::ChannelOrSend && peer.port() == 0 {
            return false;
        }
        let ip = canonical(peer.ip());
        if ip.is_loopback() {
            return self.allow_loopback;
        }
        !(ip.is_unspecified() || ip.is_multicast() || is_broadcast(ip))
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn is_broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denies_loopback_unless_allowed_and_port_zero_for_channels() {
        let strict = PeerPolicy::default();
        let lax = PeerPolicy {
            allow_loopback: true,
        };
        let lo: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let lo6: SocketAddr = "[::1]:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        for addr in [lo, lo6, mapped] {
            assert!(!strict.allows(addr, PeerUse::ChannelOrSend), "{addr}");
            assert!(lax.allows(addr, PeerUse::ChannelOrSend), "{addr}");
        }
        let public: SocketAddr = "198.51.100.7:0".parse().unwrap();
        assert!(strict.allows(public, PeerUse::Permission));
        assert!(!strict.allows(public, PeerUse::ChannelOrSend));
        for denied in [
            "0.0.0.0:9",
            "224.0.0.1:9",
            "255.255.255.255:9",
            "[::]:9",
            "[ff02::1]:9",
        ] {
            assert!(
                !lax.allows(denied.parse().unwrap(), PeerUse::Permission),
                "{denied}"
            );
        }
    }
}
