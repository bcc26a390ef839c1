#!/usr/bin/env python3
"""Interop check: a WebRTC data channel between two aiortc peers, relayed by a TURN server.

Two aiortc RTCPeerConnections live in this one asyncio process. Both are
configured with the TURN server only:

  RTCConfiguration(
      iceServers=[RTCIceServer(urls="turn:HOST:PORT?transport=udp",  # --transport
                               username=..., credential=...)],
      iceTransportPolicy=RTCIceTransportPolicy.RELAY)

How only relay candidates are used: aiortc 1.16 supports the standard
iceTransportPolicy "relay" (RTCIceTransportPolicy.RELAY). aiortc hands it to
aioice as Connection(transport_policy=TransportPolicy.RELAY), and with it
aioice gathers no host or server-reflexive candidates at all (RFC 9429
section 3.5.3): the only local candidate of each peer is its TURN-relayed
address, and the related address in the SDP is hidden (0.0.0.0 9). So no
SDP filtering is needed; the script still checks that every candidate in
both descriptions is "typ relay".

The offer/answer is exchanged in-process (aiortc gathers before
setLocalDescription returns, so the descriptions carry all candidates). The
offerer opens an ordered, reliable data channel, and each side then sends
--count numbered binary messages (16 to ~2000 bytes, so some span several
SCTP chunks) to the other. Every message must arrive intact, exactly once and
in order within --timeout (SCTP is reliable: a loss shows up as a message
that never arrives).

What proves the traffic went through the relay: after the transfer, the
nominated ICE pair of each peer (aioice's Connection._nominated, which aiortc
does not expose publicly) must be relay/relay: the local candidate is this
peer's relayed address, the remote candidate is the other peer's relayed
address, both of type relay. With --expect-relay-ports the relayed ports must
lie in the relay's port range. The address the TURN server saw (the
XOR-MAPPED-ADDRESS of the Allocate response, kept by aioice as the TURN
transport's "related_address") must be of the family of --server, which shows
which transport to the TURN server was used. Finally closing both peers must
delete both allocations (aioice sends Refresh LIFETIME=0 and logs the outcome).

Relayed address family: aioice never sends REQUESTED-ADDRESS-FAMILY, so per
RFC 8656 section 7.2 the server allocates IPv4 relayed addresses even when it
is reached over IPv6. --request-family 6 makes aioice (under aiortc) ask for
IPv6 relayed addresses (aioice_address_family.py adds the attribute to its
Allocate); --expect-relayed-family defaults to the --request-family, else 4.

IPv6 servers: RFC 7065 writes an IPv6 server as "turn:[::1]:3478", but
aiortc 1.16's URI parser (aiortc.rtcicetransport.TURN_REGEX, host
"[^?:]+") rejects every IPv6 literal with "malformed uri". The script then
wraps aiortc's parse_stun_turn_uri so that a bracketed IP-literal is parsed
as RFC 7065 says (host without brackets, handed to aioice, which connects to
("::1", PORT)); the wrapper is installed only when aiortc rejects the URL.

Output: progress on stderr, exactly one JSON line on stdout, e.g.
  {"ok": true, "count": 200, "a_to_b": 200, "b_to_a": 200, "pairs": [...], ...}
Exit status 0 on success, 1 on any failure ("ok": false and "error" in the
JSON line), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import re
import struct
import sys
import time
import zlib

import aiortc.rtcicetransport as rtcicetransport
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
)

from aioice_address_family import request_address_family
from hostport import parse_hostport

MAGIC = b"DC01"
# magic, direction (0: A->B, 1: B->A), sequence number, crc32 of the body
HEADER = struct.Struct("!4sBII")
DIRECTIONS = ("a_to_b", "b_to_a")


def make_message(direction: int, seq: int) -> bytes:
    """A message distinct for each direction and sequence number, 16..~2000 bytes."""
    body_len = (seq * 97 + direction * 31) % 2000
    pattern = struct.pack("!I", (seq * 2654435761 + direction) & 0xFFFFFFFF)
    body = (pattern * (body_len // 4 + 1))[:body_len]
    return HEADER.pack(MAGIC, direction, seq, zlib.crc32(body)) + body


def parse_message(data: bytes | str, direction: int) -> int | None:
    """The sequence number of an intact message of `direction`, or None."""
    if not isinstance(data, bytes) or len(data) < HEADER.size:
        return None
    magic, got_direction, seq, _ = HEADER.unpack_from(data)
    if magic != MAGIC or got_direction != direction or data != make_message(direction, seq):
        return None
    return seq


def parse_port_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH, got {text!r}") from None
    if not sep or not 0 < lo <= hi < 65536:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH, got {text!r}")
    return lo, hi


def family_of(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def fmt_addr(host: str | None, port: int | None) -> str | None:
    if host is None:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def turn_url(host: str, port: int, transport: str) -> str:
    """The RFC 7065 URI: an IPv6 literal in brackets; TLS is `turns:` over TCP."""
    shown = f"[{host}]" if ":" in host else host
    if transport == "tls":
        return f"turns:{shown}:{port}?transport=tcp"
    return f"turn:{shown}:{port}?transport={transport}"


def log(msg: str) -> None:
    print(f"aiortc_datachannel: {msg}", file=sys.stderr, flush=True)


IP_LITERAL_URI = re.compile(r"(?P<scheme>turns?|stuns?):\[(?P<host>[0-9A-Fa-f:.]+)\](?P<rest>.*)")


def allow_ipv6_literal_uris(url: str) -> bool:
    """Make aiortc accept `url` if only its IPv6 literal trips aiortc's parser.

    Returns True when the wrapper was installed. aiortc looks the parser up as a
    module global of aiortc.rtcicetransport when it builds the ICE gatherer.
    """
    original = rtcicetransport.parse_stun_turn_uri
    try:
        original(url)
        return False  # aiortc parses it by itself
    except ValueError:
        if not IP_LITERAL_URI.fullmatch(url):
            raise

    def parse(uri: str) -> dict:
        match = IP_LITERAL_URI.fullmatch(uri)
        if match is None:
            return original(uri)
        # Let aiortc parse the rest (port, transport, defaults) around a placeholder host.
        parsed = original(f"{match['scheme']}:ip-literal{match['rest']}")
        parsed["host"] = str(ipaddress.IPv6Address(match["host"]))
        return parsed

    rtcicetransport.parse_stun_turn_uri = parse
    return True


class AllocationWatcher(logging.Handler):
    """aioice reports deleting an allocation (Refresh LIFETIME=0) only in its log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.deleted = 0
        self.deletion_failed = 0

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("TURN allocation deleted"):
            self.deleted += 1
        elif msg.startswith("TURN allocation deletion failed"):
            self.deletion_failed += 1


class Receiver:
    """Collects the messages of one direction and checks them."""

    def __init__(self, direction: int, count: int) -> None:
        self.direction = direction
        self.count = count
        self.order: list[int] = []
        self.corrupted = 0
        self.done = asyncio.Event()

    def on_message(self, data: bytes | str) -> None:
        seq = parse_message(data, self.direction)
        if seq is None:
            self.corrupted += 1
        else:
            self.order.append(seq)
        if len(self.order) + self.corrupted >= self.count:
            self.done.set()

    def problems(self) -> list[str]:
        name = DIRECTIONS[self.direction]
        out = []
        if self.corrupted:
            out.append(f"{name}: {self.corrupted} messages corrupted")
        if len(self.order) < self.count:
            out.append(f"{name}: only {len(self.order)} of {self.count} messages arrived")
        if len(set(self.order)) != len(self.order):
            out.append(f"{name}: duplicated messages")
        if self.order != list(range(len(self.order))):
            first = next(i for i, s in enumerate(self.order) if s != i)
            out.append(f"{name}: out of order at position {first} (got {self.order[first]})")
        return out


def ice_connection(pc_channel) -> object:
    """The aioice Connection under a data channel: channel -> SCTP -> DTLS -> ICE."""
    return pc_channel.transport.transport.transport._connection


def describe_pair(connection) -> dict:
    pair = connection._nominated.get(1)
    if pair is None:
        return {"nominated": False}
    local, remote = pair.local_candidate, pair.remote_candidate
    info = {
        "nominated": True,
        "local_type": local.type,
        "local": fmt_addr(local.host, local.port),
        "remote_type": remote.type,
        "remote": fmt_addr(remote.host, remote.port),
        "local_host": local.host,
        "local_port": local.port,
    }
    # For a relay candidate the protocol's transport is aioice's TurnTransport;
    # its related_address is the XOR-MAPPED-ADDRESS the TURN server saw.
    mapped = pair.protocol.transport.get_extra_info("related_address")
    if mapped is not None:
        info["mapped"] = fmt_addr(mapped[0], mapped[1])
        info["mapped_family"] = family_of(mapped[0])
    return info


def sdp_candidates(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:")]


async def wait_event(event: asyncio.Event, deadline: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), max(0.0, deadline - time.monotonic()))
        return True
    except (asyncio.TimeoutError, TimeoutError):
        return False


async def exchange(args: argparse.Namespace, pcs: list, result: dict, deadline: float) -> None:
    pc_a, pc_b = pcs
    started = time.monotonic()
    receivers = [Receiver(0, args.count), Receiver(1, args.count)]  # at B, at A
    channels: dict[str, object] = {}
    a_open = asyncio.Event()
    b_channel = asyncio.Event()

    channel_a = pc_a.createDataChannel("relay-interop")  # ordered, reliable
    channels["a"] = channel_a
    channel_a.on("open", a_open.set)
    channel_a.on("message", receivers[1].on_message)

    @pc_b.on("datachannel")
    def on_datachannel(channel) -> None:
        # Called synchronously when the DATA_CHANNEL_OPEN arrives, before any message.
        channels["b"] = channel
        channel.on("message", receivers[0].on_message)
        b_channel.set()

    result["stage"] = "offer/answer (gathering relay candidates)"
    await pc_a.setLocalDescription(await pc_a.createOffer())
    await pc_b.setRemoteDescription(pc_a.localDescription)
    await pc_b.setLocalDescription(await pc_b.createAnswer())
    await pc_a.setRemoteDescription(pc_b.localDescription)
    candidates = {
        "a": sdp_candidates(pc_a.localDescription.sdp),
        "b": sdp_candidates(pc_b.localDescription.sdp),
    }
    result["sdp_candidates"] = candidates
    result["gathered_ms"] = round((time.monotonic() - started) * 1000)
    for side, lines in candidates.items():
        if not lines:
            raise Failure(f"peer {side} gathered no candidate (did the TURN Allocate fail?)")
        others = [line for line in lines if " typ relay" not in line]
        if others:
            raise Failure(f"peer {side} offered non-relay candidates: {others}")

    result["stage"] = "ICE, DTLS and SCTP connection"
    if not await wait_event(a_open, deadline) or not await wait_event(b_channel, deadline):
        raise Failure(
            "the data channel did not open within --timeout "
            f"(ICE {pc_a.iceConnectionState}/{pc_b.iceConnectionState}, "
            f"connection {pc_a.connectionState}/{pc_b.connectionState})"
        )
    result["connected_ms"] = round((time.monotonic() - started) * 1000)

    result["stage"] = "message exchange"
    sending = time.monotonic()
    for seq in range(args.count):
        channel_a.send(make_message(0, seq))
        channels["b"].send(make_message(1, seq))
    for receiver in receivers:
        await wait_event(receiver.done, deadline)
    result["transfer_ms"] = round((time.monotonic() - sending) * 1000)
    result["a_to_b"] = len(receivers[0].order)
    result["b_to_a"] = len(receivers[1].order)
    result["bytes_each_way"] = sum(len(make_message(0, s)) for s in range(args.count))
    problems = receivers[0].problems() + receivers[1].problems()
    if problems:
        raise Failure("; ".join(problems))

    result["stage"] = "checking the nominated pairs"
    pairs = [describe_pair(ice_connection(channel_a)), describe_pair(ice_connection(channels["b"]))]
    result["pairs"] = [
        {k: v for k, v in p.items() if k not in ("local_host", "local_port")} for p in pairs
    ]
    check_pairs(args, pairs)


def check_pairs(args: argparse.Namespace, pairs: list[dict]) -> None:
    problems = []
    for side, pair, other in (("a", pairs[0], pairs[1]), ("b", pairs[1], pairs[0])):
        if not pair["nominated"]:
            problems.append(f"peer {side} has no nominated candidate pair")
            continue
        if pair["local_type"] != "relay" or pair["remote_type"] != "relay":
            problems.append(
                f"peer {side} nominated {pair['local_type']}/{pair['remote_type']}, not relay/relay"
            )
        if other["nominated"] and pair["remote"] != other["local"]:
            problems.append(
                f"peer {side} talks to {pair['remote']}, not to peer's relayed address {other['local']}"
            )
        relayed_family = family_of(pair["local_host"])
        if relayed_family != args.expect_relayed_family:
            problems.append(
                f"peer {side}'s relayed address {pair['local']} is IPv{relayed_family}, "
                f"expected IPv{args.expect_relayed_family}"
            )
        if args.expect_relay_ports:
            lo, hi = args.expect_relay_ports
            if not lo <= pair["local_port"] <= hi:
                problems.append(f"peer {side}'s relayed port {pair['local_port']} is not in {lo}-{hi}")
        if pair.get("mapped_family") != args.transport_family:
            problems.append(
                f"peer {side} reached the TURN server from {pair.get('mapped')}, "
                f"not over IPv{args.transport_family}"
            )
    if problems:
        raise Failure("; ".join(problems))


class Failure(Exception):
    pass


async def run(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    deadline = started + args.timeout
    host, port = args.server
    url = turn_url(host, port, args.transport)
    result: dict = {
        "ok": False,
        "server": url,
        "count": args.count,
        "a_to_b": 0,
        "b_to_a": 0,
        "stage": "setup",
    }
    try:
        result["ipv6_uri_workaround"] = allow_ipv6_literal_uris(url)
    except ValueError as exc:
        result["error"] = f"aiortc cannot parse {url}: {exc}"
        return result

    watcher = AllocationWatcher()
    turn_logger = logging.getLogger("aioice.turn")
    turn_logger.addHandler(watcher)
    if turn_logger.getEffectiveLevel() > logging.INFO:
        turn_logger.setLevel(logging.INFO)

    config = RTCConfiguration(
        iceServers=[RTCIceServer(urls=url, username=args.username, credential=args.password)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )
    pcs = [RTCPeerConnection(config), RTCPeerConnection(config)]
    try:
        await asyncio.wait_for(exchange(args, pcs, result, deadline), args.timeout)
        result["ok"] = True
    except (asyncio.TimeoutError, TimeoutError):
        result["error"] = f"{result['stage']} did not finish within --timeout {args.timeout}s"
    except Failure as exc:
        result["error"] = f"{result['stage']}: {exc}"
    except Exception as exc:
        result["error"] = f"{result['stage']}: unexpected {type(exc).__name__}: {exc}"
    finally:
        closing = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.gather(*(pc.close() for pc in pcs)), args.close_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            if result["ok"]:
                result["ok"] = False
                result["error"] = f"closing the peer connections took over {args.close_timeout}s"
        result["close_ms"] = round((time.monotonic() - closing) * 1000)
        turn_logger.removeHandler(watcher)
        result["allocations_deleted"] = watcher.deleted
        if result["ok"] and watcher.deleted != 2:
            result["ok"] = False
            result["error"] = (
                f"closing deleted {watcher.deleted} of 2 TURN allocations "
                f"({watcher.deletion_failed} deletions failed)"
            )
        result["elapsed_ms"] = round((time.monotonic() - started) * 1000)
    if result["ok"]:
        del result["stage"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, type=parse_hostport,
                        help="TURN server, HOST:PORT or [IPV6]:PORT (UDP)")
    parser.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp",
                        help="transport to the TURN server: turn:?transport=udp|tcp, or turns: (tls)")
    parser.add_argument("--ca-file", default=None,
                        help="PEM file of the CA that signed the server's certificate (tls): "
                             "aioice verifies turns: servers with ssl.create_default_context(), "
                             "so it becomes SSL_CERT_FILE")
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--count", type=int, default=200,
                        help="messages each way (default 200)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds for gathering, connecting and the exchange (default 30)")
    parser.add_argument("--close-timeout", type=float, default=5.0,
                        help="seconds for closing both peers afterwards (default 5)")
    parser.add_argument("--request-family", type=int, choices=(4, 6), default=None,
                        help="make aioice send REQUESTED-ADDRESS-FAMILY with this family "
                             "(default: none, as aioice itself does)")
    parser.add_argument("--expect-relayed-family", type=int, choices=(4, 6), default=None,
                        help="family of the relayed addresses (default: the --request-family, "
                             "else 4: aioice by itself never asks for another)")
    parser.add_argument("--expect-relay-ports", type=parse_port_range, default=None,
                        metavar="LOW-HIGH", help="the relay's port range, checked if given")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log aiortc's and aioice's debug output to stderr")
    args = parser.parse_args()
    if args.transport == "tls":
        if args.ca_file is None:
            parser.error("--transport tls needs --ca-file")
        # aiortc hands aioice turn_ssl=True, which verifies with the default context; that
        # reads SSL_CERT_FILE when each connection is made.
        os.environ["SSL_CERT_FILE"] = args.ca_file
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.timeout <= 0 or args.close_timeout <= 0:
        parser.error("--timeout and --close-timeout must be positive")
    if args.expect_relayed_family is None:
        args.expect_relayed_family = args.request_family or 4
    if args.request_family is not None:
        request_address_family(args.request_family)
    args.transport_family = family_of(args.server[0])
    if args.transport_family is None:
        parser.error("--server must be a numeric IPv4 or [IPv6] address")

    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(message)s")

    try:
        result = asyncio.run(run(args))
    except Exception as exc:  # a bug or an unexpected error: still one JSON line
        result = {"ok": False, "error": f"unexpected {type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    if not result.get("ok"):
        log(f"FAILED: {result.get('error')}")
        return 1
    log(f"ok: {result['a_to_b']}+{result['b_to_a']} messages relayed "
        f"({result['pairs'][0]['local']} <-> {result['pairs'][1]['local']}), "
        f"connected in {result['connected_ms']} ms, transfer {result['transfer_ms']} ms, "
        f"total {result['elapsed_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
