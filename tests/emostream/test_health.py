"""Liveness and readiness endpoints served beside /metrics."""

from __future__ import annotations

import os
import subprocess

from emostream.health import Health, serve_http
from support import PYTHON, REPO, free_port
from support import http_get as get


def test_readiness_follows_the_stage_and_liveness_follows_its_heartbeat():
    health = Health(stale_after_s=3600)
    port = free_port()
    server = serve_http(port, health=health)
    try:
        assert get(port, "/healthz")[0] == 200
        assert get(port, "/readyz") == (503, "starting\n")
        health.set_ready(reason="model loaded")
        assert get(port, "/readyz") == (200, "model loaded\n")
        status, body = get(port, "/metrics")
        assert status == 200 and "python_info" in body

        health.beat()  # the main loop runs: from now on its heartbeat is what counts
        health.stale_after_s = -1.0  # every heartbeat is now too old: a hung main loop
        status, body = get(port, "/healthz")
        assert status == 503 and "silent" in body
        assert get(port, "/readyz")[0] == 503, "a hung stage is not ready either"
        health.stale_after_s = 3600
        health.beat()
        assert get(port, "/healthz")[0] == 200
    finally:
        server.shutdown()


def test_a_stage_still_loading_is_live_until_its_start_timeout_though_its_main_loop_has_not_beaten():
    # A classifier times its runtimes before its main loop's first beat: on a busy host that takes longer
    # than stale_after_s, and the launcher's watchdog must not kill it for a hang.
    health = Health(stale_after_s=-1.0, start_timeout_s=3600)
    port = free_port()
    server = serve_http(port, health=health)
    try:
        assert get(port, "/healthz") == (200, "starting\n")
        assert get(port, "/readyz") == (503, "starting\n")
        health.start_timeout_s = -1.0  # a start that never ends is a hang too
        status, body = get(port, "/healthz")
        assert status == 503 and "still starting" in body
        health.start_timeout_s = 3600
        health.beat()
        status, body = get(port, "/healthz")
        assert status == 503 and "silent" in body, "once it beats, its main loop's heartbeat counts"
    finally:
        server.shutdown()


def test_stages_tune_malloc_unless_opted_out() -> None:
    # Each run in a fresh interpreter: mallopt settings are per process and cannot be read back.
    code = "from emostream.runtime import tune_malloc; print(tune_malloc())"
    tuned = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    opted_out = subprocess.run(
        [PYTHON, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        env={**os.environ, "EMOSTREAM_TUNE_MALLOC": "0"},
    )
    assert (tuned.stdout.strip(), opted_out.stdout.strip()) == ("True", "False")
