//! What the operator's signals do: SIGHUP reloads (configuration and TLS certificate),
//! SIGUSR1 drains, SIGTERM drains when `--drain-seconds` is set and otherwise stops, like
//! SIGINT; a second SIGTERM or SIGINT during a drain stops at once. systemd hears of each
//! step (notify.rs).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{error, info};

use super::Driver;
use super::notify::Notifier;
use crate::core::{Availability, Config};

/// How long SIGUSR1 drains when `--drain-seconds` is not set: one maximal allocation
/// lifetime (RFC 8656's 3600 s), after which no allocation that stopped refreshing is left.
pub const DEFAULT_SIGUSR1_DRAIN: Duration = Duration::from_secs(3600);

/// Re-reads the configuration (the command line and environment as at start, the config
/// and secret files as they are now) and validates it as at start; `Err` is the one line
/// to log while the old configuration stays.
pub type Reload = Box<dyn FnMut() -> Result<Config, String>>;

/// The operator's side of the loop: reload, drain, systemd notifications.
pub struct Control {
    reload: Option<Reload>,
    /// How long SIGTERM drains; zero: it stops at once.
    term_drain: Duration,
    alternate: Option<SocketAddr>,
    notifier: Notifier,
    /// Set while draining: when to stop at the latest.
    drain_deadline: Option<Instant>,
}

impl Control {
    /// `reload` rebuilds the configuration on SIGHUP (`None`: only the certificate reloads).
    pub fn new(
        reload: Option<Reload>,
        term_drain: Duration,
        alternate: Option<SocketAddr>,
    ) -> Self {
        Control {
            reload,
            term_drain,
            alternate,
            notifier: Notifier::from_env(),
            drain_deadline: None,
        }
    }

    /// When the drain ends at the latest, if draining.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.drain_deadline
    }
}

impl Default for Control {
    fn default() -> Self {
        Control::new(None, Duration::ZERO, None)
    }
}

impl Driver {
    /// Tells systemd the relay is up (every socket is bound).
    pub(super) fn notify_ready(&self) {
        self.control.notifier.send("READY=1");
    }

    /// Acts on one signal; true when the loop must stop now.
    pub(super) fn on_signal(&mut self, signal: i32, now: Instant) -> bool {
        let draining = self.control.drain_deadline.is_some();
        match signal {
            libc::SIGHUP => {
                self.reload();
                false
            }
            libc::SIGUSR1 if draining => false,
            libc::SIGUSR1 => {
                let seconds = match self.control.term_drain {
                    Duration::ZERO => DEFAULT_SIGUSR1_DRAIN,
                    seconds => seconds,
                };
                self.start_drain("SIGUSR1", seconds, now);
                false
            }
            libc::SIGTERM if !draining && !self.control.term_drain.is_zero() => {
                self.start_drain("SIGTERM", self.control.term_drain, now);
                false
            }
            _ => {
                let during = if draining { " during the drain" } else { "" };
                info!(
                    "signal {signal}{during}: shutting down, closing {} allocations",
                    self.core.allocation_count()
                );
                self.control.notifier.send("STOPPING=1");
                true
            }
        }
    }

    /// While draining: true once the last allocation has ended or the deadline has passed.
    pub(super) fn drain_finished(&self, now: Instant) -> bool {
        let Some(deadline) = self.control.drain_deadline else {
            return false;
        };
        let left = self.core.allocation_count();
        if left == 0 {
            info!("drain done: every allocation has ended, exiting");
            return true;
        }
        if now >= deadline {
            info!("drain deadline passed: closing {left} allocations, exiting");
            return true;
        }
        false
    }

    fn start_drain(&mut self, signal: &str, seconds: Duration, now: Instant) {
        let alternate = self.control.alternate;
        self.core
            .set_availability(Availability::Draining { alternate });
        self.control.drain_deadline = Some(now + seconds);
        self.control.notifier.send("STOPPING=1");
        let refusal = match alternate {
            Some(addr) => format!("300 with ALTERNATE-SERVER {addr}"),
            None => "508".to_owned(),
        };
        info!(
            "{signal}: draining {} allocations: new Allocates get {refusal}, /healthz 503; \
             exiting when they have ended or in {} s",
            self.core.allocation_count(),
            seconds.as_secs()
        );
    }

    fn reload(&mut self) {
        self.control.notifier.reloading();
        self.streams.reload_certificate();
        if let Some(reload) = self.control.reload.as_mut() {
            match reload() {
                Ok(config) => {
                    self.core.reconfigure(config);
                    info!(
                        "SIGHUP: reloaded the configuration ({} allocations kept); {}",
                        self.core.allocation_count(),
                        self.core.peer_policy().describe()
                    );
                }
                Err(e) => error!("SIGHUP: {e}; keeping the current configuration"),
            }
        }
        self.control.notifier.send("READY=1");
    }
}
