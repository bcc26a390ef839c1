//! Firezone mode's flags: the portal to join, validated.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::Args;
use crate::core::RelayAddress;
use crate::portal::Timing;
use crate::portal::url::Endpoint;

/// The portal connection, validated (Firezone mode). No Debug: it holds the token and
/// the stamp secret, which are never logged.
pub struct PortalSettings {
    pub endpoint: Endpoint,
    /// The WebSocket URL with the token and the public addresses.
    pub join_url: String,
    /// The secret made for this run, sent in `phx_join`.
    pub stamp_secret: String,
    pub ca_file: Option<PathBuf>,
    pub timing: Timing,
}

/// The portal to join: its URL with the token and the public addresses the portal hands
/// clients, the secret, the timing.
pub(super) fn settings(
    args: &Args,
    token: &str,
    secrets: &[String],
    relay_v4: Option<RelayAddress>,
    relay_v6: Option<RelayAddress>,
) -> Result<PortalSettings, String> {
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("--portal-token: must not be empty or contain spaces".into());
    }
    let endpoint =
        Endpoint::parse(&args.portal_ws_url).map_err(|e| format!("--portal-ws-url {e}"))?;
    let ipv4 = relay_v4.and_then(|r| match r.public {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    });
    let ipv6 = relay_v6.and_then(|r| match r.public {
        IpAddr::V6(ip) => Some(ip),
        IpAddr::V4(_) => None,
    });
    let mut timing = Timing::default();
    match args.test_portal_heartbeat_ms {
        None => {}
        Some(0) => return Err("--test-portal-heartbeat-ms: must be at least 1".into()),
        Some(ms) => timing.heartbeat = Duration::from_millis(ms),
    }
    match args.test_portal_backoff_ms {
        None => {}
        Some(0) => return Err("--test-portal-backoff-ms: must be at least 1".into()),
        Some(ms) => {
            timing.backoff_initial = Duration::from_millis(ms);
            timing.backoff_max = Duration::from_millis(ms.saturating_mul(4));
        }
    }
    Ok(PortalSettings {
        join_url: endpoint.join_url(token, ipv4, ipv6),
        endpoint,
        stamp_secret: secrets.first().cloned().unwrap_or_default(),
        ca_file: args.portal_ca_file.clone(),
        timing,
    })
}
