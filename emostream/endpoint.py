"""ZeroMQ endpoints as users type them: ``HOST:PORT`` means ``tcp://HOST:PORT``, anything else that is
not ``TRANSPORT://ADDRESS`` is a one-line error instead of ZeroMQ's "Invalid argument" traceback."""

from __future__ import annotations

import re

#: The transports libzmq knows; ZeroMQ itself says which of them this build supports.
TRANSPORTS = ("tcp", "ipc", "inproc", "pgm", "epgm", "norm", "vmci", "udp", "ws", "wss", "tipc")
#: ``HOST:PORT`` with a host name, an IPv4 address, ``*`` or a bracketed IPv6 address.
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.*-]+):(\d{1,5})")
EXAMPLE = "tcp://127.0.0.1:5560"


def normalize_endpoint(text: str) -> str:
    """``text`` as a ZeroMQ endpoint: ``HOST:PORT`` gets ``tcp://``; ValueError says what is wrong."""
    text = text.strip()
    if "://" in text:
        transport, _, address = text.partition("://")
        if transport not in TRANSPORTS:
            raise ValueError(f"{text!r}: unknown transport {transport!r}; use one of {', '.join(TRANSPORTS[:3])}")
        if not address:
            raise ValueError(f"{text!r} has no address after {transport}://, e.g. {EXAMPLE}")
        return text
    match = _HOST_PORT.fullmatch(text)
    if match and 1 <= int(match.group(2)) <= 65535:
        return f"tcp://{text}"
    raise ValueError(f"{text!r} is not a ZeroMQ endpoint; write TRANSPORT://ADDRESS or HOST:PORT, e.g. {EXAMPLE}")
