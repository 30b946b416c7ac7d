"""Pieces shared by the browser-facing WebRTC servers (``sink.viewer``, ``capture.webrtc_ingest``).

A tiny HTTP/1.1 server on standard-library asyncio (one request per connection, no framework), the
token rule for addresses other than loopback, and ICE on loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import logging
import sys
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("webrtc")

MAX_BODY = 256 * 1024
STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    503: "Service Unavailable",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def only_loopback_candidates() -> None:
    """Let aioice gather on 127.0.0.1 only (by default it skips loopback, so a loopback-only host
    could never connect); the browser needs loopback candidates too (Chromium:
    ``--allow-loopback-in-peer-connection``)."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []


def add_http_args(parser: argparse.ArgumentParser, default_port: int) -> None:
    """--host, --port and --token, with the same meaning in every browser-facing server."""
    parser.add_argument("--host", default="127.0.0.1", help="address the page binds (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port, help=f"HTTP port (default {default_port})")
    parser.add_argument("--token", default=None, help="access token; required when --host is not a loopback address")


def prepare_http(prog: str, host: str, token: str | None) -> bool:
    """Apply the token rule (False, with the reason on stderr, when ``host`` is public and there is no
    token) and, on loopback, make ICE gather on 127.0.0.1."""
    if not is_loopback(host) and not token:
        print(f"{prog}: refusing to serve on {host} (not a loopback address) without --token", file=sys.stderr)
        return False
    if is_loopback(host):
        only_loopback_candidates()
    return True


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_offer(body: bytes) -> dict[str, Any]:
    """A browser's ``{"type": "offer", "sdp": ...}`` (400 when it is not one)."""
    try:
        offer = json.loads(body)
        if not isinstance(offer, dict) or offer.get("type") != "offer":
            raise ValueError("not an offer")
        str(offer["sdp"])
    except (ValueError, KeyError, TypeError) as exc:
        raise HttpError(400, f"bad offer: {exc}") from None
    return offer


class HttpApp:
    """Parses one request per connection, checks the token, and answers what :meth:`route` returns:
    ``(status, content type, body)``; :class:`HttpError` becomes a JSON error."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def _authorized(self, query: dict[str, list[str]], headers: dict[str, str]) -> bool:
        if not self.token:
            return True
        given = (query.get("token") or [""])[0]
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def route(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes
    ) -> tuple[int, str, bytes]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def close(self) -> None:
        """Release what the app holds (peer connections) when the server stops."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body = await self._respond(reader)
        except HttpError as err:
            status, ctype, body = err.status, "application/json", json.dumps({"error": str(err)}).encode()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            writer.close()
            return
        except Exception as exc:  # one bad request must not stop the server
            log.exception("request failed")
            status, ctype, body = 500, "application/json", json.dumps({"error": str(exc)}).encode()
        head = (
            f"HTTP/1.1 {status} {STATUS_TEXT.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = request.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            raise HttpError(400, "bad request line")
        method, target = parts[0], parts[1]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        if not 0 <= length <= MAX_BODY:
            raise HttpError(400, "body too large")
        body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
        url = urlsplit(target)
        query = parse_qs(url.query)
        if not self._authorized(query, headers):
            raise HttpError(401, "a valid token is required (?token=... or Authorization: Bearer ...)")
        return await self.route(method, url.path, query, body)


async def serve(app: HttpApp, host: str, port: int, stop: threading.Event, what: str) -> None:
    """Serve ``app`` on ``host:port`` until ``stop`` is set, then close it."""
    listener = await asyncio.start_server(app.handle, host, port)
    log.info("%s on http://%s:%d/%s", what, host, port, " (token required)" if app.token else "")
    try:
        while not stop.is_set():
            await asyncio.sleep(0.2)
    finally:
        listener.close()
        await app.close()
        await listener.wait_closed()
