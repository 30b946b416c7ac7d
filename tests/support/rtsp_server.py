"""A real RTSP server for tests: GStreamer's RTSP server (Debian's gir1.2-gst-rtsp-server-1.0) serving a
video file, looped, at ``rtsp://127.0.0.1:PORT/live``, run as a child process of the test.

Two halves in one file:

* :class:`RtspServer` (imported by tests, in the project's venv): starts the child, waits until it
  accepts connections, ``stop()`` kills it (a camera outage), ``start()`` again serves on the same port.
* ``__main__`` (run by the SYSTEM ``/usr/bin/python3``, the only Python that imports ``gi`` here): the
  server itself. It must import nothing but the standard library and ``gi``.

Why the server feeds the stream from memory: a ``filesrc ! qtdemux`` launch line ends with the file
(9.6 s of faces.mp4) and reports its length, so FFmpeg then takes the stream for a finite VOD. The
server reads the file's H.264 access units once and an ``appsrc`` plays them over and over with
running timestamps, like a camera that never ends. Each client gets its own media (not shared), so
it starts on a key frame.

``ffmpeg`` cannot do this: it serves RTSP only to a client that publishes (see ../shared/TESTING-NOTES.md).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
MOUNT = "/live"
#: Debian packages the server needs (the apt line in .ci/run installs them).
PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
)
_CHECK = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
    "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
    "import sys; sys.exit(0 if all(Gst.ElementFactory.find(e) for e in "
    "('appsrc', 'appsink', 'qtdemux', 'h264parse', 'rtph264pay')) else 3)"
)


@functools.cache
def missing_reason() -> str | None:
    """Why the server cannot run on this machine, or None when it can."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing (GStreamer's RTSP server runs with the system Python)"
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", _CHECK], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {SYSTEM_PYTHON}: {exc}"
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["a GStreamer element is missing"])[-1]
        return f"GStreamer's RTSP server is not usable ({last}); install: apt-get install {PACKAGES}"
    return None


def started_or_skip(media: str | Path, log_path: str | Path | None = None) -> RtspServer:
    """A started server on a free port serving ``media``, or the test skipped saying what is missing."""
    import pytest

    from support import free_port

    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    return RtspServer(media, free_port(), log_path).start()


class RtspServer:
    """GStreamer's RTSP server in a child process, serving ``media`` looped at :attr:`url`."""

    def __init__(self, media: str | Path, port: int, log_path: str | Path | None = None) -> None:
        self.media = Path(media)
        self.port = port
        self.url = f"rtsp://127.0.0.1:{port}{MOUNT}"
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self._lines: list[str] = []

    def start(self, timeout: float = 30.0) -> RtspServer:
        """Start the server and return once it accepts TCP connections on its port."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the RTSP server is already running")
        self._lines = []
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, __file__, str(self.port), str(self.media)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # The venv's PYTHONPATH and PYTHONHOME must not leak into the system Python.
            env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
        )
        threading.Thread(target=self._relay, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the RTSP server exited with {self.proc.returncode}: {self.output()}")
            if "ready" in self._lines and _accepts(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the RTSP server did not accept connections within {timeout:.0f} s: {self.output()}")

    def _relay(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        log = self.log_path.open("a") if self.log_path else None
        with proc.stdout, log if log else contextlib.nullcontext():
            for line in proc.stdout:
                self._lines.append(line.strip())
                if log:
                    log.write(line)
                    log.flush()

    def transports(self) -> list[str]:
        """The Transport header of every SETUP request the server has answered since it (re)started."""
        return [line.partition("=")[2] for line in self._lines if line.startswith("setup transport=")]

    def output(self) -> str:
        return " | ".join(self._lines[-20:])

    def stop(self) -> None:
        """Kill the server (clients see their connection drop) and wait for it to end."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# -- the server, run by the system Python ------------------------------------------------------------


def _read_access_units(Gst, path: str):  # noqa: ANN001, ANN202, N803 - gi's module, untyped
    """The file's H.264 access units as (data, pts, dts, duration, key frame) in ns, and their caps."""
    reader = Gst.parse_launch(
        f'filesrc location="{path}" ! qtdemux ! h264parse ! video/x-h264,stream-format=avc,alignment=au '
        "! appsink name=out sync=false"
    )
    sink = reader.get_by_name("out")
    reader.set_state(Gst.State.PLAYING)
    units, caps = [], None
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:  # end of stream
            break
        caps = caps or sample.get_caps().to_string()
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        data = bytes(info.data)
        buf.unmap(info)
        key = not buf.has_flags(Gst.BufferFlags.DELTA_UNIT)
        units.append((data, buf.pts, buf.dts, buf.duration, key))
    reader.set_state(Gst.State.NULL)
    if not units:
        raise SystemExit(f"no H.264 frames in {path}")
    return units, caps


def serve(port: int, media: str) -> None:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtsp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer

    Gst.init(None)
    units, caps = _read_access_units(Gst, media)
    origin = min(u[2] if u[2] != Gst.CLOCK_TIME_NONE else u[1] for u in units)
    frame_ns = units[0][3] if units[0][3] != Gst.CLOCK_TIME_NONE else 40_000_000
    period = len(units) * frame_ns  # one pass of the file

    def feed(appsrc, _length, state) -> None:  # noqa: ANN001 - called by GStreamer's need-data
        index = state["next"]
        data, pts, dts, duration, key = units[index % len(units)]
        shift = (index // len(units)) * period - origin
        buf = Gst.Buffer.new_wrapped(data)
        buf.pts = pts + shift
        buf.dts = (dts if dts != Gst.CLOCK_TIME_NONE else pts) + shift
        buf.duration = duration
        if not key:
            buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
        state["next"] = index + 1
        appsrc.emit("push-buffer", buf)

    def configure(_factory, media) -> None:  # noqa: ANN001 - called by media-configure
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", Gst.Caps.from_string(caps))
        appsrc.connect("need-data", feed, {"next": 0})

    def on_setup(_client, context) -> None:  # noqa: ANN001 - called by setup-request
        # One line per SETUP with the client's Transport header: how tests see TCP or UDP was asked for.
        result, transport = context.request.get_header(GstRtsp.RTSPHeaderField.TRANSPORT, 0)
        print(f"setup transport={transport if result == GstRtsp.RTSPResult.OK else '?'}", flush=True)

    def on_client(_server, client) -> None:  # noqa: ANN001 - called by client-connected
        client.connect("setup-request", on_setup)

    server = GstRtspServer.RTSPServer()
    server.connect("client-connected", on_client)
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    # format=time: the buffers carry timestamps, and the server's sinks play them at that pace.
    factory.set_launch("( appsrc name=src format=time ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )")
    factory.set_shared(False)
    factory.connect("media-configure", configure)
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    print(f"serving {media} ({len(units)} frames, looped) at rtsp://127.0.0.1:{port}{MOUNT}", flush=True)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2])


@contextlib.contextmanager
def faces_rtsp_server(log_dir: Path) -> Iterator[RtspServer]:
    """``../shared/media/faces.mp4`` served on rtsp://127.0.0.1:PORT/live for the ``with`` block (the test
    skips when the server or the video is missing); its log in ``log_dir``."""
    from support import shared_path

    server = started_or_skip(shared_path("media", "faces.mp4"), Path(log_dir) / "rtsp-server.log")
    try:
        yield server
    finally:
        server.stop()
