//! systemd's readiness protocol (sd_notify): one datagram per state change to the Unix
//! socket named by `$NOTIFY_SOCKET` (a path, or an abstract name when it starts with '@').
//! Without the variable (not under systemd's Type=notify) every call does nothing. A few
//! lines rather than a crate: the protocol is one `sendto`.

use std::os::unix::net::{SocketAddr, UnixDatagram};

use log::debug;

/// Where systemd listens for our state, if it does.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; an unusable value is logged at debug and ignored (the relay
    /// runs the same without a supervisor).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let addr = socket_address(&name);
            let socket = UnixDatagram::unbound();
            match (socket, addr) {
                (Ok(socket), Ok(addr)) => Some((socket, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    debug!("NOTIFY_SOCKET {name:?}: {e}");
                    None
                }
            }
        });
        Notifier { target }
    }

    /// Sends `state` (e.g. "READY=1"); a failure is logged at debug, never fatal.
    pub fn send(&self, state: &str) {
        if let Some((socket, addr)) = &self.target
            && let Err(e) = socket.send_to_addr(state.as_bytes(), addr)
        {
            debug!("sd_notify {state:?}: {e}");
        }
    }

    /// RELOADING=1 with the monotonic time systemd (≥ 253) wants with it.
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }
}

fn socket_address(name: &std::ffi::OsStr) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    match name.as_bytes().strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name),
        None => SocketAddr::from_pathname(name),
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd reads it (std's Instant hides its value).
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a valid, owned struct.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } == 0;
    if !ok {
        return 0;
    }
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1_000
}
