"""HOST:PORT parsing shared by the interop scripts' command lines."""

from __future__ import annotations

import argparse


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse HOST:PORT or [IPV6]:PORT."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected [IPV6]:PORT, got {text!r}")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    try:
        port_num = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None
    if not 0 < port_num < 65536:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}")
    return host, port_num
