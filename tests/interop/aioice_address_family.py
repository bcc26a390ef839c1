"""Teach aioice's TURN client to ask for an IPv6 (or IPv4) relayed address.

aioice 0.13.0 never sends REQUESTED-ADDRESS-FAMILY (RFC 8656 section 7.2,
attribute 0x0017), so an RFC 8656 server always gives it an IPv4 relayed
address, whatever family the client reaches the server over. To run aioice's
own TURN client (and aiortc, which uses it) over an IPv6 relayed address, this
module registers the attribute in aioice's STUN codec and adds it to every
Allocate request aioice sends. Nothing else of aioice's flow changes: Allocate,
ChannelBind, ChannelData and Refresh are still aioice's.

The value is one byte of family (0x01 IPv4, 0x02 IPv6) followed by three
reserved zero bytes, which aioice's 32-bit "unsigned" packer produces from
family << 24.
"""

from __future__ import annotations

from aioice import stun, turn

REQUESTED_ADDRESS_FAMILY = 0x0017
NAME = "REQUESTED-ADDRESS-FAMILY"
FAMILY_CODES = {4: 0x01, 6: 0x02}


def request_address_family(family: int) -> None:
    """Make every later aioice Allocate carry REQUESTED-ADDRESS-FAMILY `family` (4 or 6)."""
    code = FAMILY_CODES[family]
    if NAME not in stun.ATTRIBUTES_BY_NAME:
        entry = (REQUESTED_ADDRESS_FAMILY, NAME, stun.pack_unsigned, stun.unpack_unsigned)
        stun.ATTRIBUTES_BY_TYPE[REQUESTED_ADDRESS_FAMILY] = entry
        stun.ATTRIBUTES_BY_NAME[NAME] = entry

    original = turn.TurnClientMixin.request_with_retry
    if getattr(original, "_adds_address_family", False):
        original = original.__wrapped__  # type: ignore[attr-defined]

    async def request_with_retry(self, request: stun.Message):
        if (
            request.message_method == stun.Method.ALLOCATE
            and request.message_class == stun.Class.REQUEST
        ):
            request.attributes[NAME] = code << 24
        return await original(self, request)

    request_with_retry._adds_address_family = True  # type: ignore[attr-defined]
    request_with_retry.__wrapped__ = original  # type: ignore[attr-defined]
    turn.TurnClientMixin.request_with_retry = request_with_retry  # type: ignore[method-assign]
