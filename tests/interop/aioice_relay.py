#!/usr/bin/env python3
"""Interop check: relay UDP traffic through a TURN server with aioice's client.

It starts a plain UDP echo peer, allocates a relayed address on the TURN server
with aioice's TURN client (aioice.turn.create_turn_endpoint, over UDP, TCP or
TLS: --transport), sends
--count distinct numbered payloads through the relay to the peer, and expects
every one of them echoed back intact, through the relay, within --timeout.

aioice's flow (0.13.0): Allocate (LIFETIME, REQUESTED-TRANSPORT=UDP; first
unauthenticated, then again with USERNAME/REALM/NONCE/MESSAGE-INTEGRITY/
FINGERPRINT after the 401), one ChannelBind per peer (no CreatePermission),
then ChannelData both ways, and Refresh with LIFETIME=0 on close.

Over TCP and TLS (--transport tcp|tls) aioice frames STUN messages and
ChannelData back to back on the stream and pads every frame it writes to a
multiple of 4 bytes (RFC 8656 section 12.5); it parses what it reads the same
way, so it needs the server's ChannelData padded too. Over TLS aioice
verifies the server certificate against --ca-file (the test's own CA), for
the --server address (an IP literal: the certificate needs an IP SAN).

Address families are independent: --family (default: that of the --server
literal) is how the TURN server is reached; the relayed address is IPv4
unless the server hands out something else, because aioice never sends
REQUESTED-ADDRESS-FAMILY and RFC 8656 section 7.2 then says "the server MUST
allocate an IPv4-relayed transport address". So with --server [::1]:PORT the
expected case is an IPv6 transport to the relay, an IPv4 relayed address and
an IPv4 peer. --request-family 6 makes aioice ask for an IPv6 relayed
address (aioice_address_family.py adds REQUESTED-ADDRESS-FAMILY to its
Allocate). --expect-relayed-family (default: the --request-family, else 4)
states which relayed family must come back; the echo peer (--peer-host)
defaults to the loopback address of that family, and must be of it (a
relayed address reaches only peers of its own family).

Output: progress on stderr, and exactly one JSON line on stdout, e.g.
  {"ok": true, "sent": 200, "received": 200, "relayed": "127.0.0.1:50000", "lost": 0, ...}
Exit status: 0 when every payload came back intact and the allocation was
deleted; 1 on any failure (with "ok": false and "error" in the JSON line and a
message on stderr); 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import socket
import ssl
import struct
import sys
import time
import zlib

from aioice import stun, turn

from aioice_address_family import request_address_family
from hostport import parse_hostport

MAGIC = b"RLY1"
HEADER = struct.Struct("!4sII")  # magic, sequence number, crc32 of the rest
MIN_SIZE = HEADER.size


def make_payload(seq: int, size: int) -> bytes:
    """A payload of exactly `size` bytes, distinct for each sequence number."""
    body_len = size - HEADER.size
    pattern = struct.pack("!I", seq * 2654435761 & 0xFFFFFFFF)
    body = (pattern * (body_len // 4 + 1))[:body_len]
    return HEADER.pack(MAGIC, seq, zlib.crc32(body)) + body


def parse_payload(data: bytes, size: int) -> int | None:
    """The sequence number of an intact payload, or None."""
    if len(data) != size:
        return None
    magic, seq, _ = HEADER.unpack_from(data)
    if magic != MAGIC or data != make_payload(seq, size):
        return None
    return seq


def fmt_addr(addr: tuple | None) -> str | None:
    if addr is None:
        return None
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def same_addr(a: tuple, b: tuple) -> bool:
    try:
        return ipaddress.ip_address(a[0]) == ipaddress.ip_address(b[0]) and a[1] == b[1]
    except ValueError:
        return a[0] == b[0] and a[1] == b[1]


def log(msg: str) -> None:
    print(f"aioice_relay: {msg}", file=sys.stderr, flush=True)


class EchoPeer(asyncio.DatagramProtocol):
    """The peer: echoes every datagram back to its sender (the relayed address)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0
        self.sources: set[tuple[str, int]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.received += 1
        self.sources.add((addr[0], addr[1]))
        assert self.transport is not None
        self.transport.sendto(data, addr)


class Client(asyncio.DatagramProtocol):
    """Receives what the relay forwards from the peer (via aioice's TurnTransport)."""

    def __init__(self, size: int, count: int) -> None:
        self.size = size
        self.count = count
        self.seen: set[int] = set()
        self.duplicates = 0
        self.corrupted = 0
        self.wrong_source: set[tuple[str, int]] = set()
        self.expected_source: tuple[str, int] | None = None
        self.errors: list[Exception] = []
        self.progress = asyncio.Event()
        self.closed = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if self.expected_source is not None and not same_addr(addr, self.expected_source):
            self.wrong_source.add((addr[0], addr[1]))
        seq = parse_payload(data, self.size)
        if seq is None or seq >= self.count:
            self.corrupted += 1
        elif seq in self.seen:
            self.duplicates += 1
        else:
            self.seen.add(seq)
        self.progress.set()

    def error_received(self, exc: Exception) -> None:
        # aioice reports failed sends (e.g. a rejected ChannelBind) here.
        self.errors.append(exc)
        self.progress.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.progress.set()


class DeletionWatcher(logging.Handler):
    """aioice reports the outcome of the deleting Refresh only in its log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.deleted: bool | None = None

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("TURN allocation deleted"):
            self.deleted = True
        elif msg.startswith("TURN allocation deletion failed"):
            self.deleted = False


def describe(exc: BaseException) -> str:
    if isinstance(exc, stun.TransactionFailed):
        code, reason = exc.response.attributes.get("ERROR-CODE", (exc.response.error_code, ""))
        return f"TURN error response {code} {reason}".rstrip()
    if isinstance(exc, stun.TransactionTimeout):
        return "no response from the TURN server (STUN transaction timed out)"
    return f"{type(exc).__name__}: {exc}"


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """Over TLS, a client context that trusts --ca-file (and checks the server's name)."""
    if args.transport != "tls":
        return None
    return ssl.create_default_context(cafile=args.ca_file)


async def run(args: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    deadline = started + args.timeout
    family = socket.AF_INET6 if args.family == 6 else socket.AF_INET
    peer_family = socket.AF_INET6 if args.peer_family == 6 else socket.AF_INET
    result: dict = {
        "ok": False,
        "sent": 0,
        "received": 0,
        "relayed": None,
        "lost": args.count,
        "count": args.count,
        "size": args.size,
        "family": args.family,
        "peer_family": args.peer_family,
        "transport": args.transport,
    }

    # Resolve the server to a numeric address of the wanted family.
    host, port = args.server
    try:
        infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        result["error"] = f"cannot resolve server {host!r} for IPv{args.family}: {exc}"
        return result
    server_addr = infos[0][4][:2]

    watcher = DeletionWatcher()
    turn.logger.addHandler(watcher)
    if turn.logger.getEffectiveLevel() > logging.INFO:
        turn.logger.setLevel(logging.INFO)
    client = Client(args.size, args.count)
    peer_transport = None
    turn_transport = None
    try:
        peer_transport, peer = await loop.create_datagram_endpoint(
            EchoPeer, local_addr=(args.peer_host, 0), family=peer_family
        )
        peer_addr = peer_transport.get_extra_info("sockname")[:2]
        client.expected_source = peer_addr
        log(f"echo peer on {fmt_addr(peer_addr)}")

        try:
            turn_transport, _ = await asyncio.wait_for(
                turn.create_turn_endpoint(
                    lambda: client,
                    server_addr=server_addr,
                    username=args.username,
                    password=args.password,
                    lifetime=args.lifetime,
                    channel_refresh_time=args.channel_refresh_time,
                    transport="udp" if args.transport == "udp" else "tcp",
                    ssl=tls_context(args),
                ),
                timeout=max(0.1, deadline - time.monotonic()),
            )
        except (asyncio.TimeoutError, TimeoutError):
            result["error"] = f"allocation on {fmt_addr(server_addr)} did not finish within --timeout"
            return result
        except Exception as exc:
            result["error"] = f"allocation on {fmt_addr(server_addr)} failed: {describe(exc)}"
            return result

        relayed = turn_transport.get_extra_info("sockname")
        mapped = turn_transport.get_extra_info("related_address")
        result["relayed"] = fmt_addr(relayed)
        result["mapped"] = fmt_addr(mapped)
        log(f"relayed address {fmt_addr(relayed)} (mapped {fmt_addr(mapped)})")
        relayed_family = 6 if ":" in relayed[0] else 4
        result["relayed_family"] = relayed_family
        if relayed_family != args.expect_relayed_family:
            result["error"] = (
                f"relayed address {fmt_addr(relayed)} is IPv{relayed_family}, "
                f"expected IPv{args.expect_relayed_family} "
                f"(--expect-relayed-family; the peer is {fmt_addr(peer_addr)})"
            )
            return result
        mapped_family = 6 if mapped and ":" in mapped[0] else 4
        if mapped is None or mapped_family != args.family:
            result["error"] = (
                f"the TURN server saw the client as {fmt_addr(mapped)}, "
                f"not as an IPv{args.family} address"
            )
            return result

        # Send paced: at most --window payloads in flight, so that loopback
        # socket buffers are never the cause of a loss.
        sent = 0
        while sent < args.count and not client.errors and not client.closed.is_set():
            if sent - len(client.seen) >= args.window:
                client.progress.clear()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(client.progress.wait(), remaining)
                except (asyncio.TimeoutError, TimeoutError):
                    break
                continue
            turn_transport.sendto(make_payload(sent, args.size), peer_addr)
            sent += 1
            if sent % 8 == 0:
                await asyncio.sleep(0)
        result["sent"] = sent

        # Wait for the remaining echoes.
        while len(client.seen) < args.count and not client.errors and not client.closed.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            client.progress.clear()
            try:
                await asyncio.wait_for(client.progress.wait(), remaining)
            except (asyncio.TimeoutError, TimeoutError):
                break

        received = len(client.seen)
        result["received"] = received
        result["lost"] = args.count - received
        result["duplicates"] = client.duplicates
        result["corrupted"] = client.corrupted
        result["peer_received"] = peer.received
        result["peer_saw"] = sorted(fmt_addr(a) for a in peer.sources)
        result["elapsed_ms"] = round((time.monotonic() - started) * 1000)

        problems = []
        if client.errors:
            problems.append("send failed: " + "; ".join(describe(e) for e in client.errors[:3]))
        if client.closed.is_set():
            problems.append("the TURN client transport closed early (allocation lost)")
        if received < args.count:
            problems.append(
                f"{args.count - received} of {args.count} payloads did not come back "
                f"within --timeout {args.timeout}s (sent {sent}, peer got {peer.received})"
            )
        if client.corrupted:
            problems.append(f"{client.corrupted} echoes were corrupted or unknown")
        if client.duplicates:
            problems.append(f"{client.duplicates} echoes were duplicated")
        if client.wrong_source:
            problems.append(
                "echoes were attributed to a wrong peer: "
                + ", ".join(sorted(fmt_addr(a) for a in client.wrong_source))
            )
        wrong = [a for a in peer.sources if not same_addr(a, relayed)]
        if wrong:
            problems.append(
                f"the peer got data from {', '.join(sorted(fmt_addr(a) for a in wrong))}, "
                f"not from the relayed address {fmt_addr(relayed)}"
            )
        if problems:
            result["error"] = "; ".join(problems)
            return result
        result["ok"] = True
        return result
    finally:
        if turn_transport is not None:
            # Deletes the allocation (Refresh LIFETIME=0), then closes the socket.
            turn_transport.close()
            try:
                await asyncio.wait_for(client.closed.wait(), args.close_timeout)
            except (asyncio.TimeoutError, TimeoutError):
                # Cancelling the deletion still closes aioice's socket.
                close_task = getattr(turn_transport, "_TurnTransport__close_task", None)
                if close_task is not None:
                    close_task.cancel()
                    try:
                        await close_task
                    except BaseException:
                        pass
            result["deleted"] = bool(watcher.deleted)
            if result["ok"] and not watcher.deleted:
                result["ok"] = False
                result["error"] = "deleting the allocation (Refresh with LIFETIME=0) failed"
        if peer_transport is not None:
            peer_transport.close()
        turn.logger.removeHandler(watcher)
        result["elapsed_ms"] = round((time.monotonic() - started) * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, type=parse_hostport,
                        help="TURN server, HOST:PORT or [IPV6]:PORT")
    parser.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp",
                        help="transport to the TURN server (default udp)")
    parser.add_argument("--ca-file", default=None,
                        help="PEM file of the CA that signed the server's certificate (--transport tls)")
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--count", type=int, default=200, help="payloads to send (default 200)")
    parser.add_argument("--size", type=int, default=100,
                        help=f"payload size in bytes, >= {MIN_SIZE} (default 100)")
    parser.add_argument("--family", type=int, choices=(4, 6), default=None,
                        help="IP family of the transport to the TURN server "
                             "(default 6 for an IPv6 --server, else 4)")
    parser.add_argument("--request-family", type=int, choices=(4, 6), default=None,
                        help="send REQUESTED-ADDRESS-FAMILY with this family in Allocate "
                             "(default: none, as aioice itself does)")
    parser.add_argument("--expect-relayed-family", type=int, choices=(4, 6), default=None,
                        help="IP family the relayed address must have (default: the "
                             "--request-family, else 4: without REQUESTED-ADDRESS-FAMILY "
                             "RFC 8656 servers allocate IPv4)")
    parser.add_argument("--peer-host", default=None,
                        help="numeric address of the echo peer, of the relayed family "
                             "(default 127.0.0.1, or ::1 with --expect-relayed-family 6)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds for allocation plus traffic (default 10)")
    parser.add_argument("--close-timeout", type=float, default=2.0,
                        help="seconds for deleting the allocation at the end, after --timeout at most (default 2)")
    parser.add_argument("--window", type=int, default=32,
                        help="payloads in flight at most (default 32)")
    parser.add_argument("--lifetime", type=int, default=turn.DEFAULT_ALLOCATION_LIFETIME,
                        help="LIFETIME asked for in Allocate/Refresh (aioice default 600)")
    parser.add_argument("--channel-refresh-time", type=int,
                        default=turn.DEFAULT_CHANNEL_REFRESH_TIME,
                        help="seconds before aioice re-sends ChannelBind (aioice default 500)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log aioice's STUN messages to stderr")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.size < MIN_SIZE or args.size > 65000:
        parser.error(f"--size must be between {MIN_SIZE} and 65000")
    if args.window < 1:
        parser.error("--window must be at least 1")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.transport == "tls" and args.ca_file is None:
        parser.error("--transport tls needs --ca-file")
    if args.family is None:
        args.family = 6 if ":" in args.server[0] else 4
    if args.expect_relayed_family is None:
        args.expect_relayed_family = args.request_family or 4
    if args.peer_host is None:
        args.peer_host = "::1" if args.expect_relayed_family == 6 else "127.0.0.1"
    try:
        args.peer_family = ipaddress.ip_address(args.peer_host).version
    except ValueError:
        parser.error(f"--peer-host must be a numeric address, got {args.peer_host!r}")
    if args.peer_family != args.expect_relayed_family:
        parser.error(
            f"--peer-host {args.peer_host} is IPv{args.peer_family}, but a relayed address "
            f"of IPv{args.expect_relayed_family} (--expect-relayed-family) cannot reach it"
        )

    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(message)s")

    if args.request_family is not None:
        request_address_family(args.request_family)

    try:
        result = asyncio.run(run(args))
    except Exception as exc:  # a bug or an unexpected error: still one JSON line
        result = {"ok": False, "error": f"unexpected {describe(exc)}"}
    print(json.dumps(result), flush=True)
    if not result.get("ok"):
        log(f"FAILED: {result.get('error')}")
        return 1
    log(f"ok: {result['received']}/{result['count']} payloads of {args.size} bytes "
        f"relayed via {result['relayed']} in {result['elapsed_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
