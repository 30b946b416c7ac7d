"""``python -m deploy model``: ask the running classifier to serve another model file, to roll back, or
to say what serves, through its control endpoint (classifier/swap.py has the protocol).

:func:`request` is the one call, for the CLI here and for anything else that swaps models (an HTTP API).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import zmq

from deploy.config import ConfigError, PipelineConfig, load_config
from deploy.control import Reply, Request, Route
from deploy.plan import endpoints
from emostream.endpoint import normalize_endpoint
from emostream.security import CurveKeys, SecurityError, load_client_keys, secure_client
from emostream.webrtc import HttpError

PREVIOUS = "previous"
#: Loading, checking and timing a model on a busy machine takes seconds; the reply comes after the switch.
DEFAULT_TIMEOUT_S = 120.0
OPS = ("use", "show")


class ModelControlError(RuntimeError):
    """No usable reply: nothing answers on the endpoint in time, or the reply is not the protocol's."""


def request(
    endpoint: str,
    op: str,
    file: str | None = None,
    keys: CurveKeys | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Send one request (``op`` "use" with ``file`` a path or "previous", or "show") to the classifier's
    control endpoint and return its reply: ``{"ok": true, "serving": {...}, "previous": {...}}`` or
    ``{"ok": false, "reason": ..., "error": ...}``. A relative ``file`` is made absolute here.
    :class:`ModelControlError` when no reply comes within ``timeout_s``."""
    if op not in OPS:
        raise ValueError(f"op {op!r} is not one of {', '.join(OPS)}")
    message: dict[str, Any] = {"op": op}
    if op == "use":
        if not file:
            raise ValueError("op 'use' needs a model file or 'previous'")
        message["file"] = file if file == PREVIOUS else str(Path(file).expanduser().resolve())
    socket: zmq.Socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        secure_client(socket, keys)  # plain without keys
        socket.connect(endpoint)
        socket.send(json.dumps(message).encode())
        if not socket.poll(int(timeout_s * 1000)):
            raise ModelControlError(
                f"no answer from the classifier's control endpoint {endpoint} in {timeout_s:g} s "
                "(is the pipeline running, with the same config and keys?)"
            )
        raw = socket.recv()
    finally:
        socket.close(linger=0)
    try:
        reply = json.loads(raw)
    except ValueError:
        raise ModelControlError(f"{endpoint} answered something that is not JSON") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ModelControlError(f"{endpoint} answered {str(reply)[:80]!r}, not a model control reply")
    return reply


def connectable(endpoint: str) -> str:
    """``endpoint`` as a client on this machine connects to it: a bind-all host (``0.0.0.0``, ``*``) becomes
    127.0.0.1."""
    parts = urlsplit(endpoint)
    if parts.scheme == "tcp" and parts.hostname in ("0.0.0.0", "*", "::"):
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{parts.port}"))
    return endpoint


def config_target(config: PipelineConfig) -> tuple[str, CurveKeys | None]:
    """The control endpoint of ``config``'s classifier and the client keys to reach it with (the pipeline's)."""
    keys = load_client_keys(config.security.curve_keys) if config.security.curve_keys else None
    return connectable(endpoints(config).control), keys


def describe(model: dict[str, Any] | None) -> str:
    if not model:
        return "none"
    return f"{model.get('file')} (version {model.get('version')}, runtime {model.get('runtime')})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("op", choices=OPS, help="use: serve FILE (or roll back with 'previous'); show: what serves")
    parser.add_argument("file", nargs="?", help="with use: a model file (.pt2, .onnx), or 'previous'")
    parser.add_argument("--config", default=None, help="pipeline YAML the launcher runs (default: the embedded demo)")
    parser.add_argument(
        "--endpoint",
        default=None,
        help="the classifier's control endpoint instead of the config's (HOST:PORT or tcp://)",
    )
    parser.add_argument(
        "--curve-keys", default=None, metavar="DIR", help="with --endpoint: the deployment's key folder"
    )
    parser.add_argument("--client", default=None, metavar="NAME", help="with --curve-keys: use clients/NAME's key pair")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS", help="wait this long")
    parser.add_argument("--json", action="store_true", help="print the classifier's reply as JSON")


def cmd_model(args: argparse.Namespace) -> int:
    """0: the classifier serves the file asked for (or answered ``show``); 1: refused or no answer; 2: bad usage."""
    if args.op == "use" and not args.file:
        print("model: use needs a model file or 'previous'", file=sys.stderr)
        return 2
    if args.op == "show" and args.file:
        print(f"model: show takes no file (got {args.file!r})", file=sys.stderr)
        return 2
    try:
        if args.endpoint:
            endpoint = normalize_endpoint(args.endpoint)
            keys = load_client_keys(args.curve_keys, args.client) if args.curve_keys else None
        else:
            endpoint, keys = config_target(load_config(args.config))
    except (ValueError, SecurityError) as exc:  # ConfigError is a ValueError
        prefix = "config error" if isinstance(exc, ConfigError) else "model"
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 2
    try:
        reply = request(endpoint, args.op, args.file, keys, args.timeout)
    except ModelControlError as exc:
        print(f"model: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply, indent=1))
    if not reply["ok"]:
        print(f"model: refused ({reply.get('reason')}): {reply.get('error')}", file=sys.stderr)
        return 1
    if not args.json:
        print(f"serving {describe(reply.get('serving'))}")
        print(f"previous {describe(reply.get('previous'))}")
    return 0


def routes(endpoint: str, keys: CurveKeys | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Route]:
    """The launcher's control API routes for the model: ``GET /model`` (what serves) and ``POST /model``
    with ``{"file": F}`` (F a path on the classifier's host, or "previous"), each one :func:`request`."""

    def ask(op: str, file: str | None = None) -> Reply:
        try:
            reply = request(endpoint, op, file, keys, timeout_s)
        except ModelControlError as exc:
            raise HttpError(503, str(exc)) from None
        if not reply["ok"]:
            raise HttpError(422, f"refused ({reply.get('reason')}): {reply.get('error')}")
        return 200, reply

    def use(req: Request) -> Reply:
        body = req.body
        if not isinstance(body, dict) or not isinstance(body.get("file"), str) or not body["file"]:
            raise HttpError(
                400,
                'the body must be {"file": "PATH"} (a model file on the classifier\'s host) or {"file": "previous"}',
            )
        return ask("use", body["file"])

    return [
        Route("GET", "/model", lambda _: ask("show"), "the model file the classifier serves, and the previous one",
              responses={200: "OK", 503: "the classifier does not answer"}),
        Route("POST", "/model", use, "check a model file and serve it, or roll back with {\"file\": \"previous\"}",
              body={"type": "object", "required": ["file"], "properties": {"file": {"type": "string"}}},
              responses={200: "serving it", 400: "bad body", 422: "refused: the old model keeps serving",
                         503: "the classifier does not answer"}),
    ]  # fmt: skip
