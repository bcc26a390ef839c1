//! Binding (RFC 8489): the client's reflexive address, answered unauthenticated.

use stun_codec::MessageClass;
use stun_codec::rfc5389::attributes::XorMappedAddress;

use super::Requester;
use crate::core::server::Server;
use crate::core::wire::{self as message, Attribute};

impl Server {
    /// A Binding success is an unauthenticated answer too (20 bytes in, 32 or 44 out).
    pub(super) fn binding(&mut self, requester: &Requester, request_len: usize) {
        let mut response = message::new_message(MessageClass::SuccessResponse, &requester.header);
        response.add_attribute(Attribute::XorMappedAddress(XorMappedAddress::new(
            requester.client.addr,
        )));
        let bytes = message::encode(response, None, requester.fingerprint);
        self.send_unauthenticated(requester, request_len, 200, bytes);
    }
}
