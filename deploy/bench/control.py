"""``python -m deploy.bench.control``: how soon a camera added at runtime delivers events, and how soon a
removed one is gone.

A launcher with one live camera of the bench video (realtime, at 10 fps so that the cameras added stay
within what two cores serve: a frame-number gap then means a disturbance, not an overload) and its
control API on a free port. When its events flow, ``--add`` more cameras are added one after the other
with the CLI a user would type (``python -m deploy cameras add``, a subprocess); for each the seconds from
starting that command to the camera's first event on the PUB socket. Then each added camera is removed
with ``python -m deploy cameras remove``: the seconds until its capture process has exited. Meanwhile the
first camera's frame numbers are checked for gaps (a gap would mean the change disturbed a running camera).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from deploy.bench.endtoend import events_socket, start_launcher, stop_launcher, waiting_face_events
from deploy.bench.procstats import stage_pids
from deploy.bench.settings import REPO, BenchSettings, pipeline_config
from deploy.plan import endpoints
from emostream.runtime import pid_alive

#: Every camera's rate (see the module docstring).
FPS = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Frames:
    """Frame numbers seen per camera on the pipeline's PUB socket."""

    def __init__(self, endpoint: str) -> None:
        self.socket = events_socket(endpoint)
        self.frames: dict[str, list[int]] = {}

    def receive(self, wait_ms: int) -> None:
        if self.socket.poll(wait_ms):
            for event in waiting_face_events(self.socket):
                self.frames.setdefault(event["camera"], []).append(int(event["frame"]))

    def wait_for(self, camera: str, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while camera not in self.frames:
            if time.monotonic() > end:
                return False
            self.receive(20)
        return True

    def close(self) -> None:
        self.socket.close()


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy", "cameras", "--url", url, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def gaps(frames: list[int]) -> int:
    """Frames missing between the lowest and highest frame number seen (events arrive in order per camera)."""
    ordered = sorted(set(frames))
    return (ordered[-1] - ordered[0] + 1 - len(ordered)) if ordered else 0


def run_control_bench(settings: BenchSettings, add: int, timeout_s: float = 60.0) -> dict[str, Any]:
    spec = settings.spec(1, "realtime", settings.realtime_drop_policy)
    config, parsed = pipeline_config(settings.video, settings.yunet, spec)
    config["control"] = {"enabled": True, "port": _free_port()}
    config["cameras"][0]["fps"] = FPS
    url = f"http://127.0.0.1:{config['control']['port']}"
    first = config["cameras"][0]["id"]
    added: list[dict[str, Any]] = []
    removed: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="emostream-control-") as workdir:
        config_path = Path(workdir) / "pipeline.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        log_path = Path(workdir) / "launcher.log"
        frames = _Frames(endpoints(parsed).events)
        proc = start_launcher(config_path, settings.startup_timeout_s + 60.0 + add * 2 * timeout_s, log_path)
        try:
            if not frames.wait_for(first, settings.startup_timeout_s):
                raise RuntimeError(f"no event of {first} within {settings.startup_timeout_s:.0f} s")
            for i in range(add):
                camera = f"added{i}"
                start = time.monotonic()
                result = _cli(
                    url, "add", "--id", camera, "--source", str(settings.video), "--fps", f"{FPS:g}", "--loop"
                )
                returned = time.monotonic() - start
                if result.returncode != 0:
                    raise RuntimeError(f"cameras add {camera}: {result.stderr.strip() or result.stdout.strip()}")
                seen = frames.wait_for(camera, timeout_s)
                added.append(
                    {
                        "camera": camera,
                        "cli_returned_s": returned,
                        "first_event_s": time.monotonic() - start if seen else None,
                    }
                )
                print(
                    f"add {camera}: command returned after {returned:.2f} s, first event "
                    + (f"{added[-1]['first_event_s']:.2f} s" if seen else f"not within {timeout_s:g} s"),
                    file=sys.stderr,
                    flush=True,
                )
            for entry in added:
                camera = entry["camera"]
                pid = stage_pids(log_path.read_text()).get(f"capture-{camera}")
                start = time.monotonic()
                result = _cli(url, "remove", camera)
                returned = time.monotonic() - start
                if result.returncode != 0:
                    raise RuntimeError(f"cameras remove {camera}: {result.stderr.strip() or result.stdout.strip()}")
                while pid is not None and pid_alive(pid) and time.monotonic() - start < timeout_s:
                    frames.receive(20)
                removed.append(
                    {
                        "camera": camera,
                        "cli_returned_s": returned,
                        "process_gone_s": time.monotonic() - start if pid is not None and not pid_alive(pid) else None,
                    }
                )
                print(
                    f"remove {camera}: command returned after {returned:.2f} s, capture process gone after "
                    f"{removed[-1]['process_gone_s']}",
                    file=sys.stderr,
                    flush=True,
                )
            for _ in range(50):
                frames.receive(20)
        finally:
            frames.close()
            code = stop_launcher(proc)
    return {
        "command": " ".join([sys.executable, "-m", "deploy.bench.control", *sys.argv[1:]]),
        "video": str(settings.video),
        "added": added,
        "removed": removed,
        "first_camera": first,
        "first_camera_events": len(frames.frames.get(first, [])),
        "first_camera_frame_gaps": gaps(frames.frames.get(first, [])),
        "launcher_exit_code": code,
    }


def format_control(result: dict[str, Any]) -> str:
    lines = ["camera    command returned   first event / process gone"]
    for entry in result["added"]:
        first = entry["first_event_s"]
        lines.append(
            f"+ {entry['camera']:<8} {entry['cli_returned_s']:>8.2f} s   "
            + (f"{first:>8.2f} s" if first is not None else "   never")
        )
    for entry in result["removed"]:
        gone = entry["process_gone_s"]
        lines.append(
            f"- {entry['camera']:<8} {entry['cli_returned_s']:>8.2f} s   "
            + (f"{gone:>8.2f} s" if gone is not None else "   still running")
        )
    lines.append(
        f"{result['first_camera']}: {result['first_camera_events']} events meanwhile, "
        f"{result['first_camera_frame_gaps']} frame-number gaps"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.bench.control", description=__doc__.split("\n\n")[0])
    parser.add_argument("--add", type=int, default=3, help="cameras to add, then remove (default 3)")
    parser.add_argument("--video", help="the video every camera plays (default: the bench's)")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    if args.add < 1:
        parser.error(f"--add {args.add}: add at least one camera")
    settings = BenchSettings() if args.video is None else BenchSettings(video=Path(args.video))
    result = run_control_bench(settings, args.add)
    print(format_control(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    late = [e for e in result["added"] if e["first_event_s"] is None] + [
        e for e in result["removed"] if e["process_gone_s"] is None
    ]
    return 1 if late or result["first_camera_frame_gaps"] else 0


if __name__ == "__main__":
    sys.exit(main())
