//! Process limits set at start-up.

/// Raises the soft RLIMIT_NOFILE to the hard limit (no privilege needed) and returns the
/// resulting limit: the relay holds one descriptor per relay socket, so this bounds capacity.
pub fn raise_nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Descriptors kept for everything but client connections: standard streams, epoll,
/// signalfd, listeners, metrics connections.
const RESERVED_DESCRIPTORS: u64 = 32;

/// How many TCP/TLS connections `descriptors` can serve: each connection holds one, and its
/// allocation at least one relay socket, so connections get at most half of what is left
/// after the reserve (the other half, and the reserve, stay for relay sockets of UDP
/// clients and of the connections). Beyond it accept() would fail with EMFILE.
pub fn connection_budget(descriptors: u64) -> usize {
    let budget = descriptors.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    usize::try_from(budget).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::connection_budget;

    #[test]
    fn connections_get_half_the_descriptors_past_the_reserve() {
        assert_eq!(connection_budget(1024), 496);
        assert_eq!(connection_budget(64), 16);
        assert_eq!(connection_budget(16), 1);
        assert_eq!(connection_budget(1 << 20), 524_272);
    }
}
