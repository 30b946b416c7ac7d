"""``python -m sink.subscribe``: print emotion events as JSON Lines, for a user's own scripts.

    python -m sink.subscribe --camera cam0 --count 10 --timeout 30 | jq .faces
    python -m sink.subscribe --curve-keys keys --curve-client alice   # a CurveZMQ-secured sink
    python -m sink.subscribe --endpoint 10.0.0.7:5560                 # HOST:PORT means tcp://HOST:PORT

Exit status: 0 when ``--count`` events arrived (or, without ``--count``, when at least one did),
1 when ``--timeout`` ran out first, 2 for bad arguments (an endpoint that is not one, say). From Python,
iterate :func:`events` instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import zmq

from emostream.endpoint import normalize_endpoint
from emostream.security import CurveKeys, SecurityError, load_client_keys, secure_client
from emostream.wire import EmotionEvent, Event, WireError, decode_event
from sink.settings import SinkSettings

#: Where the sink publishes unless told otherwise (sink/settings.py).
DEFAULT_ENDPOINT = SinkSettings().publish


@dataclass
class FrameGaps:
    """Which ``faces`` events a subscriber never saw, from the gaps in each camera's frame numbers.

    The sink's PUB socket keeps at most ``sink.service.PUB_HWM`` events for a subscriber that reads too
    slowly and drops the rest without telling anyone (ZeroMQ's PUB semantics), so only the subscriber
    can count them. A gap also includes frames dropped upstream, which the stages count by reason in
    ``emostream_frames_dropped_total``; the difference is what this subscriber lost by being slow.
    Frames that arrive out of order close their gap when they come.
    """

    first: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    banked: dict[str, int] = field(default_factory=dict)  # missed before the camera restarted

    #: A frame number this far below the highest seen means the camera restarted its count.
    RESTART_JUMP = 1000

    def add(self, event: Event) -> None:
        if not isinstance(event, EmotionEvent):
            return
        camera, frame = event.camera, event.frame
        if camera in self.seen and frame + self.RESTART_JUMP < self.last[camera]:
            self.banked[camera] = self.missed(camera)
            del self.seen[camera]
        if camera not in self.seen:
            self.first[camera] = self.last[camera] = frame
            self.seen[camera] = 0
        self.first[camera] = min(self.first[camera], frame)
        self.last[camera] = max(self.last[camera], frame)
        self.seen[camera] += 1

    def missed(self, camera: str | None = None) -> int:
        cameras = [camera] if camera else list(self.seen)
        return sum(
            self.banked.get(c, 0) + max(0, self.last[c] - self.first[c] + 1 - self.seen[c])
            for c in cameras
            if c in self.seen
        )


def events(
    endpoint: str = DEFAULT_ENDPOINT,
    camera: str | None = None,
    timeout: float | None = None,
    keys: CurveKeys | None = None,
    gaps: FrameGaps | None = None,
) -> Iterator[Event]:
    """Yield validated events (:class:`emostream.wire.EmotionEvent`, ``CameraEvent`` and, of types this
    build does not know, ``OtherEvent``; ``to_dict()`` gives the JSON object) from the sink's PUB socket
    until ``timeout`` seconds have passed.

    ``keys``: for a sink secured with CurveZMQ, an authorized client key pair, e.g.
    ``emostream.security.load_client_keys("keys", client="alice")``. Without authorized keys a secured
    sink sends nothing: the generator then just times out. ``gaps``: updated with every event, it counts
    the events this subscriber missed (see :class:`FrameGaps`). ``endpoint``: ``HOST:PORT`` means
    ``tcp://HOST:PORT``; one that ZeroMQ cannot connect to raises ValueError saying why.
    """
    endpoint = normalize_endpoint(endpoint)
    sub: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
    secure_client(sub, keys)  # plain without keys
    sub.setsockopt(zmq.LINGER, 0)
    # The topic is the camera id; ZeroMQ matches prefixes, so "cam1" also lets "cam10" through and
    # the exact comparison below drops it.
    sub.setsockopt(zmq.SUBSCRIBE, camera.encode() if camera else b"")
    try:
        sub.connect(endpoint)
    except zmq.ZMQError as exc:
        sub.close()
        raise ValueError(f"cannot connect to {endpoint!r}: {exc}") from None
    return _receive(sub, camera, timeout, gaps)


def _receive(sub: zmq.Socket, camera: str | None, timeout: float | None, gaps: FrameGaps | None) -> Iterator[Event]:
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not sub.poll(wait_ms):
                return
            parts = sub.recv_multipart()
            try:
                event = decode_event(parts)
            except WireError as err:
                print(f"subscribe: skipped malformed event: {err}", file=sys.stderr)
                continue
            if camera is None or event.camera == camera:
                if gaps is not None:
                    gaps.add(event)
                yield event
    finally:
        sub.close()


def _endpoint_argument(text: str) -> str:
    try:
        return normalize_endpoint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sink.subscribe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--endpoint",
        default=DEFAULT_ENDPOINT,
        type=_endpoint_argument,
        help="the sink's publish endpoint (HOST:PORT means tcp://HOST:PORT)",
    )
    parser.add_argument("--camera", default=None, help="only this camera's events")
    parser.add_argument("--count", type=int, default=None, help="exit after this many events")
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    parser.add_argument(
        "--curve-keys",
        metavar="DIR",
        default=None,
        help="the sink uses CurveZMQ: DIR holds server.key and the client key pair (see --curve-client)",
    )
    parser.add_argument(
        "--curve-client",
        metavar="NAME",
        default=None,
        help="use DIR/clients/NAME.key_secret (python -m deploy keys --client NAME); default DIR/pipeline.key_secret",
    )
    args = parser.parse_args(argv)
    keys = None
    if args.curve_keys:
        try:
            keys = load_client_keys(args.curve_keys, args.curve_client)
        except SecurityError as exc:
            parser.error(f"--curve-keys: {exc}")
    elif args.curve_client:
        parser.error("--curve-client needs --curve-keys")
    received = 0
    gaps = FrameGaps()
    try:
        stream = events(args.endpoint, args.camera, args.timeout, keys=keys, gaps=gaps)
    except ValueError as exc:  # the endpoint passed the syntax check, but ZeroMQ refuses it
        parser.error(f"--endpoint: {exc}")
    try:
        for event in stream:
            sys.stdout.write(json.dumps(event.to_dict()) + "\n")
            sys.stdout.flush()
            received += 1
            if args.count is not None and received >= args.count:
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if gaps.missed():
            print(f"subscribe: missed {gaps.missed()} event(s) (gaps in frame numbers)", file=sys.stderr)
    if args.count is not None or received == 0:
        print(f"subscribe: timed out after {received} event(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
