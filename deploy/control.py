"""The launcher's HTTP control API: list, add, update and remove cameras while the pipeline runs.

    GET    /cameras            the cameras as in the config, and each capture's state
    GET    /cameras/{id}       one camera
    POST   /cameras            add one (body: one ``cameras`` entry, exactly as in the YAML)
    PUT    /cameras/{id}       replace one (its capture restarts with the new settings)
    DELETE /cameras/{id}       remove one (its capture stops)
    GET    /openapi.json       this API as an OpenAPI 3.1 document

A change builds the new camera list and runs the whole config through :func:`deploy.config.parse_config`,
as the config file is at start: an error names the key (``cameras[2].fps: ...``) and answers 4xx, and
nothing changes. An accepted change starts or stops that camera's capture process only. Every other
stage keeps running: detector workers, the recorder and the viewer follow the new camera set through
their stdin (emostream/follow.py), and running cameras keep their ports (deploy/plan.py, PortLayout).
With ``--persist`` the new config is written back to its file (atomically) before the change is applied.

Served on ``control.host:control.port`` (127.0.0.1:8070 by default); any address but loopback needs
``control.token``, which every request then carries (``Authorization: Bearer TOKEN`` or ``?token=``).

Routes live in one table, :data:`Route` objects given to :class:`ControlServer`; another part of the
launcher adds its own with :meth:`ControlServer.add_route` and they appear in /openapi.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import logging
import os
import re
import socket
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploy.config import CameraConfig, ConfigError, ControlConfig, PipelineConfig, parse_config
from deploy.plan import PortLayout, StageSpec, ThreadSplit, plan_stages, port_layout
from deploy.supervisor import Supervisor
from emostream.webrtc import HttpApp, HttpError

log = logging.getLogger("deploy.control")

JSON = "application/json"


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    #: The path's ``{name}`` parts, the query, and the body parsed as JSON (None when empty).
    params: dict[str, str]
    query: dict[str, list[str]]
    body: Any


#: A handler's answer: the status and a JSON-serialisable body.
Reply = tuple[int, Any]


@dataclass(frozen=True)
class Route:
    """One endpoint: method, path (``{name}`` matches one path segment), handler, and its OpenAPI text."""

    method: str
    path: str
    handler: Callable[[Request], Reply]
    summary: str
    #: JSON schema of the request body; None: no body.
    body: dict[str, Any] | None = None
    #: Status -> description, for /openapi.json (200 and the errors the handler raises).
    responses: dict[int, str] = field(default_factory=lambda: {200: "OK"})

    def match(self, path: str) -> dict[str, str] | None:
        pattern = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path)) + "$"
        found = re.match(pattern, path)
        return {k: urllib.parse.unquote(v) for k, v in found.groupdict().items()} if found else None


class ControlServer(HttpApp):
    """JSON over the project's small HTTP server (emostream/webrtc.py: one request per connection, the
    token rule); handlers run in a worker thread, so a change may wait for a process to stop."""

    def __init__(self, routes: list[Route], token: str | None = None, title: str = "emostream launcher") -> None:
        super().__init__(token)
        self.routes: list[Route] = []
        self.title = title
        self.add_route(Route("GET", "/openapi.json", lambda _: (200, self.openapi()), "this API (OpenAPI 3.1)"))
        for route in routes:
            self.add_route(route)

    def add_route(self, route: Route) -> None:
        if any(r.method == route.method and r.path == route.path for r in self.routes):
            raise ValueError(f"{route.method} {route.path} is routed already")
        self.routes.append(route)

    async def route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[int, str, bytes]:
        status, reply = await asyncio.to_thread(self.dispatch, method, path, query, body)
        return status, JSON, json.dumps(reply, indent=1).encode() + b"\n"

    def dispatch(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> Reply:
        """Route one request (no sockets: the tests call it directly). Errors come back as HttpError."""
        allowed = []
        for route in self.routes:
            params = route.match(path)
            if params is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            try:
                parsed = json.loads(body) if body.strip() else None
            except ValueError as exc:
                raise HttpError(400, f"the body is not JSON: {exc}") from None
            return route.handler(Request(params, query, parsed))
        if allowed:
            raise HttpError(405, f"{method} {path}: use {', '.join(sorted(allowed))}")
        raise HttpError(404, f"no such resource: {path} (GET /openapi.json lists them)")

    def openapi(self) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        for route in self.routes:
            op: dict[str, Any] = {
                "summary": route.summary,
                "responses": {
                    str(code): {"description": text, "content": {JSON: {"schema": _ERROR if code >= 400 else {}}}}
                    for code, text in sorted(route.responses.items())
                },
            }
            names = re.findall(r"\{(\w+)\}", route.path)
            if names:
                op["parameters"] = [
                    {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
                ]
            if route.body is not None:
                op["requestBody"] = {"required": True, "content": {JSON: {"schema": route.body}}}
            paths.setdefault(route.path, {})[route.method.lower()] = op
        doc: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": "1", "description": "See docs/operations.md, Cameras at runtime."},
            "paths": paths,
        }
        if self.token:
            doc["components"] = {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}}
            doc["security"] = [{"token": []}]
        return doc


_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def camera_schema() -> dict[str, Any]:
    """One ``cameras`` entry: the capture's settings model, as the config file takes it."""
    return CameraConfig.model_json_schema()


class ControlThread(threading.Thread):
    """Serves a :class:`ControlServer` from its own event loop; the port is bound in the constructor, so a
    port in use is an OSError for the launcher at start, not a line in a thread's log."""

    def __init__(self, app: ControlServer, host: str, port: int) -> None:
        super().__init__(name="control", daemon=True)
        self.app = app
        self.sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.port = self.sock.getsockname()[1]
        self.host = host
        self._loop = asyncio.new_event_loop()
        self._stopped = threading.Event()

    def run(self) -> None:
        async def main() -> None:
            server = await asyncio.start_server(self.app.handle, sock=self.sock)
            log.info(
                "control API on http://%s:%d/ (GET /openapi.json)%s",
                self.host,
                self.port,
                " (token required)" if self.app.token else "",
            )
            async with server:
                while not self._stopped.is_set():
                    await asyncio.sleep(0.1)

        self._loop.run_until_complete(main())
        self._loop.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------


class CameraController:
    """The running pipeline's camera set, changed through :meth:`routes`.

    ``data`` is the config as read (the YAML's mapping), kept so ``--persist`` writes back the file's own
    entries (relative paths stay relative). ``on_change(config, removed ids)`` tells the launcher of each
    accepted change (status lines, stale frame rings).
    """

    def __init__(
        self,
        supervisor: Supervisor,
        data: dict[str, Any],
        origin: str,
        config: PipelineConfig,
        threads: ThreadSplit,
        layout: PortLayout | None = None,
        persist: Path | None = None,
        on_change: Callable[[PipelineConfig, list[str]], None] | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.data = copy.deepcopy(data)
        self.origin = origin
        self.config = config
        self.threads = threads
        self.layout = layout or port_layout(config)
        self.persist = persist
        self.on_change = on_change
        self._lock = threading.Lock()  # one change at a time

    # -- the routes ----------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        entry = camera_schema()
        return [
            Route("GET", "/cameras", self.list_cameras, "the cameras as in the config, and each capture's state"),
            Route("POST", "/cameras", self.add, "add a camera and start its capture", entry, {
                201: "added; its capture started",
                400: "the body is not a JSON object",
                409: "a camera with this id exists",
                422: "the config with this camera does not validate (the error names the key)",
                500: "the config could not be written back (--persist); nothing changed",
            }),
            Route("GET", "/cameras/{id}", self.get, "one camera", None, {200: "OK", 404: "no such camera"}),
            Route("PUT", "/cameras/{id}", self.update, "replace a camera's entry; its capture restarts", entry, {
                200: "replaced; its capture restarted",
                400: "the body is not a JSON object",
                404: "no such camera",
                422: "the config with this entry does not validate (the error names the key)",
                500: "the config could not be written back (--persist); nothing changed",
            }),
            Route("DELETE", "/cameras/{id}", self.remove, "remove a camera and stop its capture", None, {
                200: "removed; its capture stopped",
                404: "no such camera",
                422: "the config without it does not validate (a pipeline keeps one camera at least)",
                500: "the config could not be written back (--persist); nothing changed",
            }),
        ]  # fmt: skip

    def list_cameras(self, _: Request) -> Reply:
        with self._lock:
            info = self.supervisor.stage_info()
            return 200, {
                "cameras": copy.deepcopy(self._entries()),
                "state": {c.id: _camera_state(info.get(f"capture-{c.id}")) for c in self.config.cameras},
            }

    def get(self, request: Request) -> Reply:
        with self._lock:
            index = self._index(request.params["id"])
            info = self.supervisor.stage_info().get(f"capture-{request.params['id']}")
            return 200, {"camera": copy.deepcopy(self._entries()[index]), "state": _camera_state(info)}

    def add(self, request: Request) -> Reply:
        entry = _entry(request.body)
        with self._lock:
            cameras = self._entries()
            camera_id = entry.get("id")
            if isinstance(camera_id, str) and any(isinstance(c, dict) and c.get("id") == camera_id for c in cameras):
                raise HttpError(
                    409, f"cameras: camera id {camera_id!r} exists already (PUT /cameras/{camera_id} changes it)"
                )
            self._change([*cameras, entry])
        log.info("control: added camera %s", camera_id)
        return 201, {"camera": entry}

    def update(self, request: Request) -> Reply:
        camera_id = request.params["id"]
        entry = _entry(request.body)
        entry.setdefault("id", camera_id)
        with self._lock:
            index = self._index(camera_id)
            if entry["id"] != camera_id:
                raise HttpError(
                    422, f"cameras[{index}].id: {entry['id']!r} differs from {camera_id!r} in the path (renaming "
                    "is removing and adding)",
                )  # fmt: skip
            cameras = self._entries()
            # Restarted even when nothing changed: that is how a camera that failed for good is retried.
            self._change([*cameras[:index], entry, *cameras[index + 1 :]], restart=f"capture-{camera_id}")
        log.info("control: updated camera %s", camera_id)
        return 200, {"camera": entry}

    def remove(self, request: Request) -> Reply:
        camera_id = request.params["id"]
        with self._lock:
            index = self._index(camera_id)
            cameras = self._entries()
            self._change([*cameras[:index], *cameras[index + 1 :]])
        log.info("control: removed camera %s", camera_id)
        return 200, {"removed": camera_id}

    # -- the change ----------------------------------------------------------------------------

    def _entries(self) -> list[Any]:
        cameras = self.data.get("cameras")
        return cameras if isinstance(cameras, list) else []

    def _index(self, camera_id: str) -> int:
        for i, camera in enumerate(self.config.cameras):
            if camera.id == camera_id:
                return i
        raise HttpError(404, f"no camera {camera_id!r} (GET /cameras lists them)")

    def validate(self, cameras: list[Any]) -> tuple[dict[str, Any], PipelineConfig, PortLayout]:
        """The new config with ``cameras``, validated exactly as the config file is; 422 naming the key."""
        data = {**self.data, "cameras": cameras}
        try:
            config = parse_config(data, self.origin)
            layout = port_layout(config, keep=self.layout)
        except ConfigError as exc:
            raise HttpError(422, str(exc)) from None
        return data, config, layout

    def _change(self, cameras: list[Any], restart: str | None = None) -> None:
        data, config, layout = self.validate(cameras)
        if self.persist is not None:
            try:
                write_config(self.persist, data)
            except OSError as exc:
                raise HttpError(500, f"cannot write {self.persist}: {exc.strerror or exc}; nothing changed") from None
        before = self.config
        specs = {spec.name: spec for spec in plan_stages(config, self.threads, layout)}
        running = self.supervisor.specs()
        stop = [
            name for name, spec in running.items() if name not in specs or (_is_capture(spec) and spec != specs[name])
        ]
        start = [spec for name, spec in specs.items() if name not in running or name in stop]
        # Followers first let go of the removed cameras, then their captures stop; new captures start
        # (they bind), then the followers connect. ZeroMQ would cope with any order; this one keeps logs calm.
        for name, spec in specs.items():
            if name in running and name not in stop:
                self.supervisor.update_spec(spec)
        for name in stop:
            self.supervisor.remove_stage(name)
        for spec in start:
            self.supervisor.add_stage(spec)
        self.data, self.config, self.layout = data, config, layout
        kept = {c.id for c in config.cameras}
        if self.on_change is not None:
            self.on_change(config, [c.id for c in before.cameras if c.id not in kept])


def _is_capture(spec: StageSpec) -> bool:
    return spec.module == "capture"


def _entry(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise HttpError(400, 'the body must be one camera entry, a JSON object such as {"id": "door", "source": 0}')
    return body


def _camera_state(info: dict[str, Any] | None) -> dict[str, Any]:
    if info is None:
        return {"running": False, "pid": None}
    return {"running": info["pid"] is not None, **info}


def write_config(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as YAML to ``path`` atomically (a temporary file beside it, then os.replace), keeping
    the file's permissions. YAML comments of the original are not kept."""
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# python -m deploy cameras
# ---------------------------------------------------------------------------------------------


class ControlClientError(RuntimeError):
    """One line for the user: the server's error, or why it could not be reached."""


def call(url: str, method: str, path: str, body: Any = None, token: str | None = None, timeout: float = 60.0) -> Any:
    """One request to the control API; the server's JSON reply, or ControlClientError with its error."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    request.add_header("Content-Type", JSON)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except (ValueError, AttributeError):
            message = exc.reason
        raise ControlClientError(f"{exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ControlClientError(
            f"cannot reach the control API at {url}: {reason} (is `deploy run` running?)"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = ControlConfig()
    parser.add_argument(
        "--url",
        default=default.url,
        help=f"the launcher's control API (default {default.url}: control.host and control.port defaults)",
    )
    parser.add_argument("--token", default=os.environ.get("EMOSTREAM_CONTROL_TOKEN"), help="control.token "
                        "(default: $EMOSTREAM_CONTROL_TOKEN)")  # fmt: skip
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the cameras and their captures' state")
    add = sub.add_parser("add", help="add a camera (its capture starts)")
    update = sub.add_parser("update", help="change a camera's settings (its capture restarts)")
    for p, required in ((add, True), (update, False)):
        p.add_argument("--source", required=required, help="demo, a camera index, a file, a URL")
        p.add_argument("--fps", type=float, default=None, help="send at most this many frames per second")
        p.add_argument("--loop", action=argparse.BooleanOptionalAction, default=None, help="restart a file at its end")
        p.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE",
            help="any other camera key, VALUE in YAML (e.g. --set resize=[640,360]); repeatable",
        )  # fmt: skip
    add.add_argument("--id", required=True, help="camera id")
    update.add_argument("id", help="camera id")
    remove = sub.add_parser("remove", help="remove a camera (its capture stops)")
    remove.add_argument("id", help="camera id")


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ControlClientError(f"--set {item!r}: expected KEY=VALUE")
        entry[key] = yaml.safe_load(value)
    if args.source is not None:
        entry["source"] = yaml.safe_load(args.source) if args.source.isdigit() else args.source
    if args.fps is not None:
        entry["fps"] = args.fps
    if args.loop is not None:
        entry["loop"] = args.loop
    return entry


def cmd_cameras(args: argparse.Namespace) -> int:
    def quote(camera_id: str) -> str:
        return urllib.parse.quote(camera_id, safe="")

    try:
        if args.action == "list":
            reply = call(args.url, "GET", "/cameras", token=args.token)
            for entry in reply["cameras"]:
                state = reply["state"].get(entry.get("id"), {})
                settings = ", ".join(f"{k}: {v}" for k, v in entry.items() if k != "id")
                how = (
                    f"running, pid {state['pid']}" if state.get("running")
                    else "failed for good" if state.get("failed")
                    else "finished" if state.get("finished") else "down"
                )  # fmt: skip
                print(f"{entry.get('id')}\t{how}\t{settings}")
        elif args.action == "add":
            entry = {"id": args.id, **_changes(args)}
            call(args.url, "POST", "/cameras", entry, token=args.token)
            print(f"added {args.id}")
        elif args.action == "update":
            current = call(args.url, "GET", f"/cameras/{quote(args.id)}", token=args.token)["camera"]
            changes = _changes(args)
            if not changes:
                raise ControlClientError("update: nothing to change (--source, --fps, --loop/--no-loop, --set)")
            call(args.url, "PUT", f"/cameras/{quote(args.id)}", {**current, **changes}, token=args.token)
            print(f"updated {args.id}")
        else:
            call(args.url, "DELETE", f"/cameras/{quote(args.id)}", token=args.token)
            print(f"removed {args.id}")
    except ControlClientError as exc:
        print(f"cameras {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
