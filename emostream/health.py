"""Liveness and readiness of a stage process, served beside its metrics.

Every stage's HTTP port answers ``/metrics`` (Prometheus), ``/healthz`` (liveness: 200 while the
stage's main loop has beaten within ``stale_after_s``, else 503 -- a hung process is restarted by
the launcher, Kubernetes or compose; before the main loop's first beat the stage is starting, and
loading a model may take longer than ``stale_after_s``: it is live for ``start_timeout_s``) and
``/readyz`` (readiness: 200 once the stage has bound or connected its sockets and loaded what it
needs, e.g. the classifier's model; 503 before).
"""

from __future__ import annotations

import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

STALE_AFTER_S = 10.0
#: Longer than any stage's start (the classifier times its runtimes on a loaded 2-core host), so
#: only a start that is stuck ends it.
START_TIMEOUT_S = 120.0


class Health:
    def __init__(self, stale_after_s: float = STALE_AFTER_S, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.stale_after_s = stale_after_s
        self.start_timeout_s = start_timeout_s
        self._last_beat = time.monotonic()
        self._started = False
        self._ready = False
        self._reason = "starting"

    def beat(self) -> None:
        """Called from the stage's main loop: proves the process is not hung."""
        self._last_beat = time.monotonic()
        self._started = True

    def set_ready(self, ready: bool = True, reason: str = "") -> None:
        self._ready = ready
        self._reason = reason or ("ready" if ready else "not ready")

    def live(self) -> tuple[bool, str]:
        age = time.monotonic() - self._last_beat
        if not self._started:
            if age > self.start_timeout_s:
                return False, f"still starting after {age:.1f}s"
            return True, "starting"
        if age > self.stale_after_s:
            return False, f"main loop silent for {age:.1f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        live, why = self.live()
        if not live:
            return False, why
        return self._ready, self._reason


#: The process-wide health state, like prometheus_client's default registry.
HEALTH = Health()


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


def make_app(health: Health = HEALTH):
    metrics_app = make_wsgi_app()

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path in ("/healthz", "/readyz"):
            ok, why = health.live() if path == "/healthz" else health.ready()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [why.encode() + b"\n"]
        return metrics_app(environ, start_response)

    return app


def serve_http(port: int, host: str = "127.0.0.1", health: Health = HEALTH) -> WSGIServer:
    """Serve /metrics, /healthz and /readyz on ``host:port`` from a daemon thread."""
    server = make_server(host, port, make_app(health), _ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
