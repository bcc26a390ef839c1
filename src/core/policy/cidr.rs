//! An IP prefix (`10.0.0.0/8`, `2001:db8::/32`) as operators write it on the command line.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 prefix. Host bits are always zero: parsing refuses `10.0.0.1/8` rather
/// than guess whether the operator meant the network or mistyped the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    len: u8,
}

impl Cidr {
    /// `network/len`; fails if `len` is longer than the address or host bits are set.
    pub fn new(network: IpAddr, len: u8) -> Result<Cidr, CidrError> {
        let max = max_len(network);
        if len > max {
            return Err(CidrError {
                input: format!("{network}/{len}"),
                reason: Reason::TooLong { len, max },
            });
        }
        let masked = mask(network, len);
        if masked != network {
            return Err(CidrError {
                input: format!("{network}/{len}"),
                reason: Reason::HostBits {
                    suggestion: Cidr {
                        network: masked,
                        len,
                    },
                },
            });
        }
        Ok(Cidr { network, len })
    }

    /// The first address of the prefix.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` lies in this prefix. Families never mix: `10.0.0.0/8` does not contain
    /// `::ffff:10.0.0.1` (the peer policy, not this type, unwraps IPv4-embedding addresses).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.len) == self.network
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `a.b.c.d/n`, `x::y/n`, or a bare address (a /32 or /128).
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let error = |reason| CidrError {
            input: s.to_owned(),
            reason,
        };
        let trimmed = s.trim();
        let (addr, len) = match trimmed.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (trimmed, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| error(Reason::NotAnAddress))?;
        let len = match len {
            None => max_len(network),
            Some("") => return Err(error(Reason::MissingLength)),
            // u8::from_str would accept "+8"; only plain digits are a prefix length.
            Some(len) if !len.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(error(Reason::BadLength));
            }
            Some(len) => match len.parse::<u8>() {
                Ok(len) => len,
                Err(_) => {
                    return Err(error(Reason::TooLong {
                        len: u8::MAX,
                        max: max_len(network),
                    }));
                }
            },
        };
        Cidr::new(network, len).map_err(|e| error(e.reason))
    }
}

/// Why a prefix was refused; its Display is a complete CLI error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError {
    input: String,
    reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reason {
    NotAnAddress,
    MissingLength,
    BadLength,
    TooLong { len: u8, max: u8 },
    HostBits { suggestion: Cidr },
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid CIDR '{}': ", self.input)?;
        match &self.reason {
            Reason::NotAnAddress => write!(f, "not an IPv4 or IPv6 address"),
            Reason::MissingLength => write!(f, "missing prefix length after '/'"),
            Reason::BadLength => write!(f, "the prefix length must be a number"),
            Reason::TooLong { len: u8::MAX, max } => {
                write!(f, "the prefix length is longer than {max}")
            }
            Reason::TooLong { len, max } => {
                write!(f, "prefix length {len} is longer than {max}")
            }
            Reason::HostBits { suggestion } => write!(
                f,
                "host bits are set after /{}; did you mean {suggestion}?",
                suggestion.len
            ),
        }
    }
}

impl std::error::Error for CidrError {}

fn max_len(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Netmask of `len` leading ones (`len` ≤ 32), for prefix matching on `u32` addresses.
pub(super) fn mask4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// Netmask of `len` leading ones (`len` ≤ 128), for prefix matching on `u128` addresses.
pub(super) fn mask6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask4(len.min(32)))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask6(len.min(128)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(s: &str) -> String {
        s.parse::<Cidr>().unwrap_err().to_string()
    }

    #[test]
    fn parses_prefixes_and_bare_addresses() {
        let net = cidr("10.0.0.0/8");
        assert_eq!(net.network(), "10.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(net.prefix_len(), 8);
        assert_eq!(cidr("10.1.2.3").prefix_len(), 32);
        assert_eq!(cidr("2001:db8::1").prefix_len(), 128);
        assert_eq!(cidr("0.0.0.0/0").prefix_len(), 0);
        assert_eq!(cidr("::/0").prefix_len(), 0);
        assert_eq!(cidr(" 192.168.0.0/16 ").to_string(), "192.168.0.0/16");
        assert_eq!(cidr("2001:0db8:0000::/32").to_string(), "2001:db8::/32");
        assert_eq!(
            cidr("::ffff:10.0.0.0/104").to_string(),
            "::ffff:10.0.0.0/104"
        );
    }

    #[test]
    fn contains_by_prefix_within_one_family() {
        let net = cidr("10.1.0.0/16");
        assert!(net.contains("10.1.0.0".parse().unwrap()));
        assert!(net.contains("10.1.255.255".parse().unwrap()));
        assert!(!net.contains("10.2.0.0".parse().unwrap()));
        assert!(!net.contains("10.0.255.255".parse().unwrap()));
        assert!(!net.contains("::ffff:10.1.2.3".parse().unwrap()));
        let v6 = cidr("2001:db8::/32");
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::".parse().unwrap()));
        assert!(!v6.contains("32.1.13.184".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("255.255.255.255".parse().unwrap()));
        assert!(cidr("::/0").contains("ffff::1".parse().unwrap()));
        assert!(cidr("8.8.8.8").contains("8.8.8.8".parse().unwrap()));
        assert!(!cidr("8.8.8.8").contains("8.8.8.9".parse().unwrap()));
    }

    #[test]
    fn rejects_garbage_with_a_message_naming_the_input() {
        assert_eq!(
            err("10.0.0.1/8"),
            "invalid CIDR '10.0.0.1/8': host bits are set after /8; did you mean 10.0.0.0/8?"
        );
        assert_eq!(
            err("2001:db8::1/32"),
            "invalid CIDR '2001:db8::1/32': host bits are set after /32; did you mean 2001:db8::/32?"
        );
        assert_eq!(
            err("10.0.0.0/33"),
            "invalid CIDR '10.0.0.0/33': prefix length 33 is longer than 32"
        );
        assert_eq!(
            err("::/129"),
            "invalid CIDR '::/129': prefix length 129 is longer than 128"
        );
        assert_eq!(
            err("::/1000"),
            "invalid CIDR '::/1000': the prefix length is longer than 128"
        );
        assert_eq!(
            err("10.0.0.0/"),
            "invalid CIDR '10.0.0.0/': missing prefix length after '/'"
        );
        for bad in ["10.0.0.0/+8", "10.0.0.0/-1", "10.0.0.0/8/8", "10.0.0.0/x"] {
            assert!(
                err(bad).ends_with("the prefix length must be a number"),
                "{bad}"
            );
        }
        for bad in [
            "",
            "/8",
            "10.0.0/8",
            "300.0.0.0/8",
            "example.com",
            "fe80::1%eth0",
            "[::1]/128",
        ] {
            assert_eq!(
                err(bad),
                format!("invalid CIDR '{bad}': not an IPv4 or IPv6 address")
            );
        }
    }

    #[test]
    fn new_checks_like_parsing() {
        assert!(Cidr::new("10.0.0.0".parse().unwrap(), 8).is_ok());
        assert!(Cidr::new("10.0.0.0".parse().unwrap(), 33).is_err());
        assert_eq!(
            Cidr::new("10.0.0.1".parse().unwrap(), 8)
                .unwrap_err()
                .to_string(),
            "invalid CIDR '10.0.0.1/8': host bits are set after /8; did you mean 10.0.0.0/8?"
        );
    }
}
