"""CurveZMQ on every emostream socket: key files, securing sockets, ZAP authentication, failure counting.

Off by default: without keys every socket stays plain (and the defaults bind to 127.0.0.1 only). With
``--curve-keys DIR`` (every stage; ``security.curve_keys`` in the launcher's config) every ZeroMQ socket
of the stage is encrypted and authenticated with CURVE: binding sockets are CURVE servers that accept
only clients whose public key is in ``DIR/authorized/`` (ZAP, served by pyzmq's ``zmq.auth.Authenticator``
with ``configure_curve``), connecting sockets are CURVE clients. A peer without keys, with an unknown
key, or expecting another server key never completes the handshake, so it receives nothing; each
attempt is counted in ``emostream_auth_failures_total{stage}`` by a monitor on every server socket.

Key layout, written by ``python -m deploy keys --out DIR [--client NAME ...]`` (ZeroMQ certificate
files, as ``zmq.auth.create_certificates`` writes them; ``*.key_secret`` files are mode 0600)::

    DIR/server.key              the deployment's server public key: every client needs it
    DIR/server.key_secret       its secret: every binding socket presents it
    DIR/pipeline.key            the pipeline stages' own client key pair (detector -> capture, ...)
    DIR/pipeline.key_secret
    DIR/clients/NAME.key        one client key pair per ``--client NAME``, for users (sink.subscribe)
    DIR/clients/NAME.key_secret
    DIR/authorized/*.key        public keys the servers accept: pipeline.key and every NAME.key

A stage reads ``server.key``, ``server.key_secret``, ``pipeline.key_secret`` and ``authorized/`` (the
``clients/`` folder need not be copied to the stages' hosts). A user needs ``server.key`` and their
``clients/NAME.key_secret`` in the same layout (:func:`load_client_keys`). Revoking a user: delete
``authorized/NAME.key`` and restart the binding stages (the authenticator reads the folder at start).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth import Authenticator, create_certificates, load_certificate
from zmq.utils.monitor import recv_monitor_message

from emostream.metrics import AUTH_FAILURES

log = logging.getLogger("emostream.security")

SERVER = "server"
PIPELINE = "pipeline"
CLIENTS_DIR = "clients"
AUTHORIZED_DIR = "authorized"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Handshake outcomes a server socket's monitor counts as an authentication failure: ZAP refused the
#: client's key (AUTH), the peer spoke another mechanism, e.g. no CURVE at all, or used another server
#: key so its HELLO did not decrypt (PROTOCOL), or the handshake broke off (NO_DETAIL).
FAILURE_EVENTS: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no_detail",
}
#: A client without keys retries every reconnect interval: log the failures at most this often.
LOG_EVERY_S = 10.0


class SecurityError(ValueError):
    """Keys that cannot be used: a missing folder or file, a file without the key it should hold."""


@dataclass(frozen=True)
class CurveKeys:
    """The keys one process uses. ``server_secret`` and ``authorized`` only where it binds sockets."""

    directory: Path
    server_public: bytes
    client_public: bytes
    client_secret: bytes
    server_secret: bytes | None = None
    authorized: Path | None = None


def _read(path: Path) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise SecurityError(f"key file {path} does not exist (python -m deploy keys creates it)")
    try:
        return load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{path}: not a ZeroMQ key file: {exc}") from None


def _read_pair(path: Path) -> tuple[bytes, bytes]:
    public, secret = _read(path)
    if not secret:
        raise SecurityError(f"{path}: holds no secret key")
    return public, secret


def _directory(directory: str | Path) -> Path:
    path = Path(directory)
    if not path.is_dir():
        raise SecurityError(f"key folder {path} does not exist (python -m deploy keys --out {path} creates it)")
    return path


def load_keys(directory: str | Path) -> CurveKeys:
    """The keys of a pipeline stage: the server pair, the pipeline's client pair, the authorized folder."""
    path = _directory(directory)
    server_public, server_secret = _read_pair(path / (SERVER + SECRET_SUFFIX))
    client_public, client_secret = _read_pair(path / (PIPELINE + SECRET_SUFFIX))
    authorized = path / AUTHORIZED_DIR
    if not authorized.is_dir():
        raise SecurityError(f"folder {authorized} of authorized client keys does not exist")
    return CurveKeys(path, server_public, client_public, client_secret, server_secret, authorized)


def load_client_keys(directory: str | Path, client: str | None = None) -> CurveKeys:
    """A subscriber's keys: ``server.key`` and ``clients/<client>.key_secret`` (no client: the pipeline's)."""
    path = _directory(directory)
    server_public, _ = _read(path / (SERVER + PUBLIC_SUFFIX))
    pair = path / CLIENTS_DIR / (client + SECRET_SUFFIX) if client else path / (PIPELINE + SECRET_SUFFIX)
    client_public, client_secret = _read_pair(pair)
    return CurveKeys(path, server_public, client_public, client_secret)


def keys_argument(text: str) -> CurveKeys:
    """argparse ``type=`` for ``--curve-keys``: a bad folder is a usage error (exit 2, never restarted)."""
    try:
        return load_keys(text)
    except SecurityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def secure_client(socket: zmq.Socket, keys: CurveKeys | None) -> None:
    """Make a connecting socket a CURVE client (no-op without keys). Call before ``connect``."""
    if keys is None:
        return
    socket.curve_serverkey = keys.server_public
    socket.curve_publickey = keys.client_public
    socket.curve_secretkey = keys.client_secret


def secure_server(socket: zmq.Socket, keys: CurveKeys | None, stage: str) -> None:
    """Make a binding socket a CURVE server that accepts only authorized clients (no-op without keys).

    Call before ``bind``. Starts the context's ZAP authenticator if it does not run yet, and a monitor
    thread that counts failed handshakes in ``emostream_auth_failures_total{stage}``.
    """
    if keys is None:
        return
    if keys.server_secret is None or keys.authorized is None:
        raise SecurityError(f"{keys.directory}: a binding socket needs the server secret key and authorized/")
    _ensure_zap_handler(socket.context, keys.authorized)
    socket.curve_secretkey = keys.server_secret
    socket.curve_publickey = keys.server_public
    socket.curve_server = True
    # No zap_domain: the authenticator files its keys under "*", which is where an empty domain is looked up.
    AUTH_FAILURES.labels(stage=stage)  # exported at 0 from the start, so rate() and alerts see it
    events = zmq.EVENT_MONITOR_STOPPED
    for event in FAILURE_EVENTS:
        events |= event
    monitor = socket.get_monitor_socket(events)
    # The monitor socket is handed to the thread and never touched here again (sockets are not thread-safe).
    threading.Thread(target=_watch, args=(monitor, stage), name=f"auth-monitor-{stage}", daemon=True).start()


class _ZapHandler(threading.Thread):
    """The context's ZAP handler: pyzmq's Authenticator (``configure_curve``) served from a plain thread.

    Not pyzmq's ThreadAuthenticator: its asyncio thread spins on ETERM when ``context.term()`` comes
    before ``stop()``, and term() then waits forever for its socket. This one closes its socket on ETERM,
    so a stage's ``context.term()`` needs no extra call; in a process that never terms its context the
    daemon thread simply ends with it.
    """

    def __init__(self, context: zmq.Context, authorized: Path) -> None:
        super().__init__(name="zap", daemon=True)
        self.authenticator = Authenticator(context, log=logging.getLogger("emostream.security.zap"))
        self.authenticator.start()  # binds inproc://zeromq.zap.01 here, before any server socket binds
        self.authenticator.configure_curve(domain="*", location=str(authorized))

    def run(self) -> None:
        zap = self.authenticator.zap_socket
        loop = asyncio.new_event_loop()  # handle_zap_message is a coroutine; it awaits nothing for key files
        try:
            while True:
                try:
                    request = zap.recv_multipart()
                except zmq.ZMQError:
                    return  # ETERM: the context is terminating
                try:
                    loop.run_until_complete(self.authenticator.handle_zap_message(request))
                except Exception:
                    # Keep serving: libzmq lets every CURVE client in once no ZAP handler is bound.
                    log.exception("ZAP request failed; refusing that client")
                    request_id = request[1] if len(request) > 1 else b""
                    with contextlib.suppress(zmq.ZMQError):  # EFSM: a reply already went out
                        zap.send_multipart([b"1.0", request_id, b"500", b"Internal error", b"", b""])
        finally:
            zap.close(linger=0)
            loop.close()


# One ZAP handler per context (libzmq's inproc://zeromq.zap.01 is per context), shared by its server sockets.
_zap_handlers: dict[int, _ZapHandler] = {}
_lock = threading.Lock()


def _ensure_zap_handler(context: zmq.Context, authorized: Path) -> None:
    with _lock:
        if id(context) not in _zap_handlers:
            handler = _zap_handlers[id(context)] = _ZapHandler(context, authorized)
            handler.start()
            log.info("CURVE: accepting the client keys in %s", authorized)


def _watch(monitor: zmq.Socket, stage: str) -> None:
    """Count failed handshakes on one server socket until the socket closes or the context ends."""
    failures = AUTH_FAILURES.labels(stage=stage)
    logged_at, unlogged = 0.0, 0
    try:
        while True:
            message = recv_monitor_message(monitor)
            event = message["event"]
            if event == zmq.EVENT_MONITOR_STOPPED:
                return
            if event not in FAILURE_EVENTS:
                continue
            failures.inc()
            unlogged += 1
            now = time.monotonic()
            if now - logged_at >= LOG_EVERY_S:
                log.warning(
                    "%s: %d failed CURVE handshake(s) on %s, the peer receives nothing (last: %s, code %s)",
                    stage,
                    unlogged,
                    message["endpoint"].decode(errors="replace"),
                    FAILURE_EVENTS[event],
                    message["value"],
                )
                logged_at, unlogged = now, 0
    except zmq.ZMQError:
        pass  # ETERM: the context is terminating
    finally:
        monitor.close(linger=0)  # else context.term() would wait for it


def create_keys(
    out: str | Path, clients: Sequence[str] = (), force: bool = False, clients_only: bool = False
) -> list[Path]:
    """Write the key layout described in this module's docstring into ``out``; return the files written.

    ``clients_only`` adds client pairs to an existing folder without touching the server and pipeline
    pairs. When any file to write exists already, nothing is written (SecurityError) unless ``force``.
    """
    out = Path(out)
    if clients_only and not clients:
        raise SecurityError("clients_only needs at least one client name")
    for name in clients:
        if not CLIENT_NAME.match(name) or name == PIPELINE:
            raise SecurityError(f"client name {name!r}: use letters, digits, '_', '.', '-' (and not {PIPELINE!r})")
    # (folder, name, authorized): every pair written, and whether its public key goes to authorized/.
    pairs: list[tuple[Path, str, bool]] = [] if clients_only else [(out, SERVER, False), (out, PIPELINE, True)]
    pairs += [(out / CLIENTS_DIR, name, True) for name in dict.fromkeys(clients)]
    if clients_only and not (out / (SERVER + PUBLIC_SUFFIX)).is_file():
        raise SecurityError(f"{out} holds no {SERVER}{PUBLIC_SUFFIX}: create the deployment's keys first")
    targets = []
    for folder, name, authorized in pairs:
        targets += [folder / (name + PUBLIC_SUFFIX), folder / (name + SECRET_SUFFIX)]
        if authorized:
            targets.append(out / AUTHORIZED_DIR / (name + PUBLIC_SUFFIX))
    existing = [path for path in targets if path.exists()]
    if existing and not force:
        raise SecurityError("refusing to overwrite " + ", ".join(str(p) for p in existing) + " (--force replaces them)")
    # Folders holding secrets are private to the owner; authorized/ holds public keys only.
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    (out / AUTHORIZED_DIR).mkdir(mode=0o755, exist_ok=True)
    if clients:
        (out / CLIENTS_DIR).mkdir(mode=0o700, exist_ok=True)
    written: list[Path] = []
    # Generated in a private (0700) temporary folder and moved into place: a secret key file is never
    # visible under its final name with the umask's permissions, even for an instant.
    staging = Path(tempfile.mkdtemp(prefix=".keys-", dir=out))
    try:
        for folder, name, authorized in pairs:
            public, secret = (Path(p) for p in create_certificates(staging, name))
            secret.chmod(0o600)
            if authorized:
                shutil.copyfile(public, staging / "authorized.key")
                os.replace(staging / "authorized.key", out / AUTHORIZED_DIR / public.name)
                written.append(out / AUTHORIZED_DIR / public.name)
            for path in (public, secret):
                os.replace(path, folder / path.name)
                written.append(folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written
