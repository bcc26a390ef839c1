//! Building and sending responses: success, errors from the one `Failure` table, and the
//! admission of answers to unauthenticated requests.

use stun_codec::rfc5389::attributes::Software;
use stun_codec::{Message, MessageClass};

use super::Requester;
use crate::core::client::Transport;
use crate::core::failure::Failure;
use crate::core::server::Server;
use crate::core::wire::{self as message, Attribute};

impl Server {
    pub(super) fn success_response(
        &self,
        requester: &Requester,
        attributes: Vec<Attribute>,
        key: Option<&[u8; 16]>,
    ) -> Vec<u8> {
        let mut response = message::new_message(MessageClass::SuccessResponse, &requester.header);
        for attribute in attributes {
            response.add_attribute(attribute);
        }
        self.add_software(&mut response, key.is_some());
        message::encode(response, key.map(|k| &k[..]), requester.fingerprint)
    }

    /// SOFTWARE, when configured, in a response signed with the client's key. Never in an
    /// unauthenticated answer (Binding, 400, 401, 438): those are what a spoofed source
    /// could have reflected, and `admission` bounds them to 3x the request's bytes; the
    /// software name is no reason to spend that bound, nor to tell it to strangers.
    pub(super) fn add_software(&self, response: &mut Message<Attribute>, signed: bool) {
        if let (true, Some(text)) = (signed, &self.config.software)
            // The CLI checked its length; the encoder checks it again.
            && let Ok(software) = Software::new(text.clone())
        {
            response.add_attribute(Attribute::Software(software));
        }
    }

    /// An error answer to a request that is not authenticated (yet).
    pub(super) fn reply_unauthenticated(
        &mut self,
        requester: &Requester,
        request_len: usize,
        failure: Failure,
    ) {
        let code = failure.code();
        let bytes = self.error_response(requester, failure, None);
        self.send_unauthenticated(requester, request_len, code, bytes);
    }

    /// Sends an answer to an unauthenticated request if its source's byte credit covers it
    /// (`admission`): these are what a spoofed source could reflect at a victim.
    pub(super) fn send_unauthenticated(
        &mut self,
        requester: &Requester,
        request_len: usize,
        code: u16,
        bytes: Vec<u8>,
    ) {
        if !Self::is_request(&requester.header) {
            return;
        }
        // A stream client's address is proven by the TCP handshake: an answer over the
        // connection cannot be reflected at a spoofed victim, so it needs no byte credit.
        let is_stream = matches!(requester.client.transport, Transport::Stream(_));
        if is_stream
            || self.unauthenticated_answers.admit(
                requester.client.addr.ip(),
                request_len,
                bytes.len(),
            )
        {
            self.counters.count_response(requester.header.method, code);
            self.reply(requester.client, bytes);
        } else {
            self.counters.rate_limited += 1;
        }
    }

    /// The one place an error response is built and sent. `key` signs it when the request
    /// was authenticated; 401 and 438 never are.
    pub(super) fn reply_error(
        &mut self,
        requester: &Requester,
        failure: Failure,
        key: Option<&[u8; 16]>,
    ) {
        if !Self::is_request(&requester.header) {
            return;
        }
        self.counters
            .count_response(requester.header.method, failure.code());
        let bytes = self.error_response(requester, failure, key);
        self.reply(requester.client, bytes);
    }

    pub(super) fn error_response(
        &self,
        requester: &Requester,
        failure: Failure,
        key: Option<&[u8; 16]>,
    ) -> Vec<u8> {
        let mut response = message::new_message(MessageClass::ErrorResponse, &requester.header);
        for attribute in failure.attributes(&self.config.realm) {
            response.add_attribute(attribute);
        }
        self.add_software(&mut response, key.is_some());
        message::encode(response, key.map(|k| &k[..]), requester.fingerprint)
    }
}
