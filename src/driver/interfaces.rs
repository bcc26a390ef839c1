//! The host's own addresses, for a default relayed address when the relay listens on an
//! unspecified address and no public address was given.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Addresses of the interfaces that are up, in the order the kernel lists them.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we only read and then free.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return found;
    }
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_flags & libc::IFF_UP as u32 == 0 {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr of the family it declares.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        if family == libc::AF_INET {
            // SAFETY: AF_INET means the sockaddr is a sockaddr_in.
            let v4 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
            found.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))));
        } else if family == libc::AF_INET6 {
            // SAFETY: AF_INET6 means the sockaddr is a sockaddr_in6.
            let v6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
            found.push(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)));
        }
    }
    // SAFETY: `list` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// The first address of the family that is neither loopback, link-local nor (IPv6)
/// unique-local: one a client elsewhere could plausibly reach.
pub fn default_address(want_v6: bool) -> Option<IpAddr> {
    local_addresses().into_iter().find(|ip| match ip {
        IpAddr::V4(v4) => {
            !want_v6 && !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified()
        }
        IpAddr::V6(v6) => {
            want_v6
                && !v6.is_loopback()
                && !v6.is_unicast_link_local()
                && !v6.is_unique_local()
                && !v6.is_unspecified()
        }
    })
}
