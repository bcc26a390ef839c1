//! The relay sockets of allocations: bound when the core asks (`Output::OpenRelay`), put
//! in the slab with the connection that owns them (a stream client's), closed when the core
//! says; closing one that a connection owned lets that connection close too.

use std::io::ErrorKind;
use std::net::SocketAddr;

use log::warn;
use mio::{Interest, Token};

use super::{Driver, Socket, sockets};
use crate::core::{AllocationId, OpenError, RelayId};

impl Driver {
    pub(super) fn open_relay(
        &mut self,
        allocation: AllocationId,
        addr: SocketAddr,
        dont_fragment: bool,
    ) -> Result<RelayId, OpenError> {
        let owner = self.connection_of(allocation);
        let bound = sockets::bind_udp(addr, dont_fragment).and_then(|mut socket| {
            let entry = self.sockets.vacant_entry();
            self.poll
                .registry()
                .register(&mut socket, Token(entry.key()), Interest::READABLE)?;
            let key = entry.key();
            entry.insert(Socket::Relay {
                allocation,
                socket,
                owner,
            });
            Ok(key)
        });
        match bound {
            Ok(key) => Ok(RelayId(key)),
            Err(e) if e.kind() == ErrorKind::AddrInUse => Err(OpenError::AddressInUse),
            Err(e) => {
                warn!("cannot open relay socket {addr}: {e}");
                Err(OpenError::Other)
            }
        }
    }

    pub(super) fn close_relay(&mut self, relay: RelayId) {
        if !matches!(self.sockets.get(relay.0), Some(Socket::Relay { .. })) {
            return;
        }
        if let Some(Socket::Relay {
            mut socket, owner, ..
        }) = self.sockets.try_remove(relay.0)
        {
            let _ = self.poll.registry().deregister(&mut socket);
            if let Some(owner) = owner {
                self.allocation_ended(owner);
            }
        }
    }
}
