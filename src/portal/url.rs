//! The portal's address (`--portal-ws-url`) and the URL the relay opens its WebSocket on:
//! `<base>/relay/websocket?token=…&ipv4=…[&ipv6=…]`, as Firezone's relay builds it.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Where the portal is: what to connect to and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// wss:// (or https://): TLS.
    pub tls: bool,
    /// The host name or address (IPv6 without brackets): what TLS verifies.
    pub host: String,
    pub port: u16,
    /// The path before `/relay/websocket`, without a trailing '/'.
    pub path: String,
}

impl Endpoint {
    /// Parses `ws://`, `wss://` (and `http://`, `https://`, taken as their WebSocket
    /// counterparts) URLs without query or fragment.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let bad = |why: &str| format!("{url:?}: {why}");
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("not a URL (ws://HOST or wss://HOST)"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "ws" | "http" => false,
            "wss" | "https" => true,
            _ => return Err(bad("the scheme must be ws, wss, http or https")),
        };
        if rest.contains(['?', '#', '@'])
            || rest.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("no query, fragment, user or spaces"));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in the host"))?;
            host.parse::<Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address in '[]'"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port must be 1 to 65535"))?,
        };
        Ok(Endpoint {
            tls,
            host: host.to_owned(),
            port,
            path: path.trim_end_matches('/').to_owned(),
        })
    }

    /// The WebSocket URL to join with: token and public addresses in the query.
    pub fn join_url(&self, token: &str, ipv4: Option<Ipv4Addr>, ipv6: Option<Ipv6Addr>) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        // The default port stays implicit, so that the Host header is the bare host name.
        let port = match (self.tls, self.port) {
            (true, 443) | (false, 80) => String::new(),
            (_, port) => format!(":{port}"),
        };
        let mut url = format!(
            "{scheme}://{host}{port}{}/relay/websocket?token={}",
            self.path,
            percent_encode(token)
        );
        if let Some(ip) = ipv4 {
            url.push_str(&format!("&ipv4={ip}"));
        }
        if let Some(ip) = ipv6 {
            url.push_str(&format!("&ipv6={}", percent_encode(&ip.to_string())));
        }
        url
    }
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_portal_urls() {
        let endpoint = |tls, host: &str, port, path: &str| Endpoint {
            tls,
            host: host.into(),
            port,
            path: path.into(),
        };
        for (url, expected) in [
            (
                "wss://api.firezone.dev",
                endpoint(true, "api.firezone.dev", 443, ""),
            ),
            (
                "wss://api.firezone.dev/",
                endpoint(true, "api.firezone.dev", 443, ""),
            ),
            (
                "https://portal.example:8443/api/",
                endpoint(true, "portal.example", 8443, "/api"),
            ),
            (
                "ws://127.0.0.1:4000",
                endpoint(false, "127.0.0.1", 4000, ""),
            ),
            ("http://[::1]", endpoint(false, "::1", 80, "")),
            ("WS://[::1]:9/x", endpoint(false, "::1", 9, "/x")),
        ] {
            assert_eq!(Endpoint::parse(url), Ok(expected), "{url}");
        }
        for bad in [
            "api.firezone.dev",
            "ftp://x",
            "wss://",
            "wss://:443",
            "wss://x:0",
            "wss://x:65536",
            "wss://x:port",
            "wss://[::1",
            "wss://[x]:1",
            "wss://x/?a=b",
            "wss://user@x",
            "wss://x y",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn join_url_carries_token_and_addresses() {
        let plain = Endpoint::parse("http://portal:80").unwrap();
        assert_eq!(
            plain.join_url("t", None, None),
            "ws://portal/relay/websocket?token=t"
        );
        let odd = Endpoint::parse("wss://portal:80").unwrap();
        assert_eq!(
            odd.join_url("t", None, None),
            "wss://portal:80/relay/websocket?token=t"
        );
        let endpoint = Endpoint::parse("wss://api.firezone.dev").unwrap();
        assert_eq!(
            endpoint.join_url("a b/c+=", Some(Ipv4Addr::new(203, 0, 113, 1)), None),
            "wss://api.firezone.dev/relay/websocket?token=a%20b%2Fc%2B%3D&ipv4=203.0.113.1"
        );
        let endpoint = Endpoint::parse("ws://[::1]:4000/base/").unwrap();
        assert_eq!(
            endpoint.join_url(
                "t",
                Some(Ipv4Addr::new(192, 0, 2, 1)),
                Some("2001:db8::1".parse().unwrap())
            ),
            "ws://[::1]:4000/base/relay/websocket?token=t&ipv4=192.0.2.1&ipv6=2001%3Adb8%3A%3A1"
        );
    }
}
