//! Firezone mode: the relay's side of the portal connection as a sans-IO state machine.
//! The driver (driver/portal.rs) owns the WebSocket; this decides when to connect, what to
//! send (`phx_join` with the stamp secret, heartbeats), when the connection is dead (an
//! unanswered heartbeat, a refused join, a closed channel, a connect that takes too long)
//! and when to try again (capped exponential backoff with jitter). Inputs carry `now`;
//! outputs are polled. The relay takes allocations once the portal has sent `init`, and
//! goes on relaying whatever happens to the portal connection after that.

pub mod backoff;
pub mod phoenix;
pub mod url;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use backoff::Backoff;
use phoenix::Inbound;

/// The portal connection's timing (shortened only by tests' hidden flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Between heartbeats (Phoenix's default and Firezone's: 30 s). A heartbeat still
    /// unanswered when the next is due means the connection is dead.
    pub heartbeat: Duration,
    /// The first reconnection delay; it doubles per failed attempt, up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A connection (TCP, TLS and WebSocket handshakes) not open by then is abandoned.
    pub connect_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_secs(30),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Open a WebSocket to the portal; report `handle_connected` or `handle_disconnected`.
    Connect,
    /// Send this text frame on the open WebSocket.
    Send(String),
    /// Close the WebSocket (the state machine has already moved on).
    Disconnect,
    /// The portal sent `init` for the first time: take allocations.
    Initialised,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not connected; connect at `until`.
    Waiting { until: Instant },
    /// The driver is connecting; give up at `deadline`.
    Connecting { deadline: Instant },
    /// The WebSocket is open and our join sent (answered when `joined`).
    Open {
        join_ref: u64,
        joined: bool,
        next_heartbeat: Instant,
        unanswered: Option<u64>,
        /// A join still unanswered then means the channel is stuck: connect again (the
        /// heartbeats alone would keep it open, and the relay not ready, forever).
        join_by: Instant,
    },
}

/// The relay's portal connection.
pub struct Portal {
    stamp_secret: String,
    timing: Timing,
    state: State,
    backoff: Backoff,
    next_ref: u64,
    initialised: bool,
    joins: u64,
    outputs: VecDeque<Output>,
}

impl Portal {
    /// Connects at once (the first `handle_timeout`); `seed` jitters the backoff.
    pub fn new(stamp_secret: String, timing: Timing, now: Instant, seed: u64) -> Self {
        Portal {
            stamp_secret,
            timing,
            state: State::Waiting { until: now },
            backoff: Backoff::new(timing.backoff_initial, timing.backoff_max, seed),
            next_ref: 1,
            initialised: false,
            joins: 0,
            outputs: VecDeque::new(),
        }
    }

    /// Whether the portal has sent `init` (on any connection of this run).
    pub fn is_initialised(&self) -> bool {
        self.initialised
    }

    /// Joins the portal accepted, over the run.
    pub fn joins(&self) -> u64 {
        self.joins
    }

    /// When `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Instant {
        match self.state {
            State::Waiting { until } => until,
            State::Connecting { deadline } => deadline,
            State::Open {
                next_heartbeat,
                joined: false,
                join_by,
                ..
            } => next_heartbeat.min(join_by),
            State::Open { next_heartbeat, .. } => next_heartbeat,
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Connects when the backoff is over, abandons a slow connect, sends heartbeats and
    /// drops a connection whose last heartbeat went unanswered.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Waiting { until } if now >= until => {
                self.state = State::Connecting {
                    deadline: now + self.timing.connect_timeout,
                };
                self.outputs.push_back(Output::Connect);
            }
            State::Connecting { deadline } if now >= deadline => {
                self.fail(now, "connecting timed out");
            }
            State::Open {
                joined: false,
                join_by,
                ..
            } if now >= join_by => {
                self.fail(now, "join unanswered");
            }
            State::Open {
                next_heartbeat,
                unanswered,
                join_ref,
                joined,
                join_by,
            } if now >= next_heartbeat => {
                if unanswered.is_some() {
                    self.fail(now, "heartbeat unanswered");
                    return;
                }
                let reference = self.take_ref();
                self.outputs
                    .push_back(Output::Send(phoenix::heartbeat(reference)));
                self.state = State::Open {
                    join_ref,
                    joined,
                    next_heartbeat: now + self.timing.heartbeat,
                    unanswered: Some(reference),
                    join_by,
                };
            }
            _ => {}
        }
    }

    /// The WebSocket is open: join `relay` with the stamp secret.
    pub fn handle_connected(&mut self, now: Instant) {
        if !matches!(self.state, State::Connecting { .. }) {
            return;
        }
        let join_ref = self.take_ref();
        self.outputs
            .push_back(Output::Send(phoenix::join(join_ref, &self.stamp_secret)));
        self.state = State::Open {
            join_ref,
            joined: false,
            next_heartbeat: now + self.timing.heartbeat,
            unanswered: None,
            join_by: now + 2 * self.timing.heartbeat,
        };
    }

    /// The connection failed or closed (seen by the driver): try again after the backoff.
    pub fn handle_disconnected(&mut self, now: Instant, why: &str) {
        if matches!(self.state, State::Waiting { .. }) {
            return;
        }
        self.wait(now, why);
    }

    /// A text frame from the portal.
    pub fn handle_message(&mut self, now: Instant, text: &str) {
        let State::Open {
            join_ref,
            joined,
            next_heartbeat,
            unanswered,
            join_by,
        } = self.state
        else {
            return;
        };
        match phoenix::decode(text) {
            Some(Inbound::Reply { reference, result }) if reference == join_ref && !joined => {
                match result {
                    Ok(()) => {
                        self.joins += 1;
                        self.backoff.reset();
                        info!("portal: joined the relay channel");
                        self.state = State::Open {
                            join_ref,
                            joined: true,
                            next_heartbeat,
                            unanswered,
                            join_by,
                        };
                    }
                    Err(reason) => self.fail(now, &format!("join refused: {reason}")),
                }
            }
            Some(Inbound::Reply { reference, .. }) if Some(reference) == unanswered => {
                self.state = State::Open {
                    join_ref,
                    joined,
                    next_heartbeat,
                    unanswered: None,
                    join_by,
                };
            }
            Some(Inbound::Init) => {
                if !self.initialised {
                    self.initialised = true;
                    info!("portal: init received, taking allocations");
                    self.outputs.push_back(Output::Initialised);
                }
            }
            Some(Inbound::Closed { event }) => self.fail(now, &format!("portal sent {event}")),
            Some(Inbound::Reply { .. } | Inbound::Other) => {}
            None => debug!("portal: ignored a frame that is not a Phoenix message"),
        }
    }

    /// Drops the connection (the driver closes it) and waits for the backoff.
    fn fail(&mut self, now: Instant, why: &str) {
        self.outputs.push_back(Output::Disconnect);
        self.wait(now, why);
    }

    fn wait(&mut self, now: Instant, why: &str) {
        let delay = self.backoff.next_delay();
        let serving = if self.initialised {
            "; relaying goes on"
        } else {
            "; not taking allocations until init"
        };
        warn!("portal: {why}; reconnecting in {delay:?}{serving}");
        self.state = State::Waiting { until: now + delay };
    }

    fn take_ref(&mut self) -> u64 {
        let reference = self.next_ref;
        self.next_ref += 1;
        reference
    }
}

#[cfg(test)]
mod tests;
