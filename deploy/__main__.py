"""``python -m deploy``: run the whole pipeline from one YAML config.

python -m deploy run [--config FILE] [--duration SECONDS]   # no --config: the demo; no --duration: until Ctrl-C
python -m deploy check --config FILE                         # validate and print the plan
python -m deploy bench [--quick] [--json FILE] [--plot FILE]  # baseline vs pipeline, side by side
python -m deploy bench --soak MINUTES [--json FILE] [--plot FILE]  # a long run: RSS, CPU, fds, restarts, drops
python -m deploy keys --out DIR [--client NAME ...] [--force]  # CurveZMQ key pairs (security.curve_keys)
python -m deploy model use FILE|previous [--config FILE]     # the running classifier serves FILE, or rolls back
python -m deploy model show [--config FILE]                  # which model file serves
python -m deploy cameras list|add|update|remove ...          # change a running pipeline's cameras
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from deploy import control
from deploy.bench import add_arguments as add_bench_arguments
from deploy.bench import cmd_bench
from deploy.config import ConfigError, PipelineConfig, load_config, parse_config, read_config_data
from deploy.model_control import add_arguments as add_model_arguments
from deploy.model_control import cmd_model, config_target
from deploy.model_control import routes as model_routes
from deploy.plan import endpoints, metrics_ports, plan_stages, port_layout, thread_split
from deploy.status import StatusPrinter
from deploy.supervisor import FatalStageError, Supervisor
from emostream.health import HEALTH
from emostream.metrics import serve_metrics
from emostream.security import SecurityError, create_keys, load_client_keys
from emostream.settings_cli import positive_number
from emostream.shm import remove_stale_rings

log = logging.getLogger("deploy")
EXIT_CONFIG = 2


#: ``--duration``: a finite number of seconds above 0 (omit the option to run until stopped).
positive_seconds = positive_number("a number of seconds", " (omit it to run until Ctrl-C)")


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if config.control.enabled:
        print(f"control API: {config.control.url}/ (GET /openapi.json)")
    threads = thread_split(config)
    print(threads.describe())
    if threads.warning():
        print(f"warning: {threads.warning()}")
    for spec in plan_stages(config, threads):
        pinned = f" [CPU {','.join(map(str, spec.cpus))}]" if spec.cpus else ""
        print(f"{spec.name}{pinned}: {' '.join(spec.argv[1:])}")
    print(f"events: {endpoints(config).events}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.persist and not args.config:
        raise ConfigError("--persist writes the changed cameras back to --config FILE: give one")
    data, origin = read_config_data(args.config)
    config = parse_config(data, origin)
    if args.persist and not config.control.enabled:
        raise ConfigError(f"{origin}: control.enabled: false, so nothing can change: --persist needs the control API")
    threads = thread_split(config)
    layout = port_layout(config)
    stages = plan_stages(config, threads, layout)
    sup = config.supervisor
    supervisor = Supervisor(
        stages,
        sup.restart_backoff_s,
        sup.restart_backoff_max_s,
        sup.stop_timeout_s,
        hang_timeout_s=sup.hang_timeout_s if config.metrics.enabled else 0.0,
        max_restarts=sup.max_restarts,
    )
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s, stopping all stages", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info("%s", threads.describe())
    if threads.warning():
        log.warning("%s", threads.warning())
    if config.metrics.enabled:
        ports = metrics_ports(config)
        serve_metrics(ports["launcher"], config.metrics.host)
        log.info("metrics: %s", ", ".join(f"{n}=:{p}" for n, p in ports.items()))
    events = endpoints(config).events
    curve = f" --curve-keys {config.security.curve_keys}" if config.security.curve_keys else ""
    log.info("events are published on %s (python -m sink.subscribe --endpoint %s%s)", events, events, curve)
    keys = load_client_keys(config.security.curve_keys) if config.security.curve_keys else None
    cameras = [camera.id for camera in config.cameras]
    status = StatusPrinter(events, 0 if args.quiet else sup.status_interval_s, keys, cameras=cameras)
    removed: list[str] = []  # cameras removed while running: their frame rings are cleaned up at the end

    def on_change(new: PipelineConfig, gone: list[str]) -> None:
        status.set_cameras([camera.id for camera in new.cameras])
        removed.extend(gone)
        for camera_id in gone:
            remove_stale_rings(camera_id)

    api = None
    if config.control.enabled:
        controller = control.CameraController(
            supervisor, data, origin, config, threads, layout,
            persist=Path(args.config) if args.persist else None, on_change=on_change,
        )  # fmt: skip
        try:
            api = control.ControlThread(
                control.ControlServer(controller.routes() + model_routes(*config_target(config)), config.control.token),
                config.control.host,
                config.control.port,
            )
        except OSError as exc:
            raise ConfigError(
                f"{origin}: control.port: cannot serve on {config.control.host}:{config.control.port}: "
                f"{exc.strerror or exc} (another launcher? set control.port, or control.enabled: false)"
            ) from None
    status.start()
    supervisor.start()
    if api is not None:
        api.start()
    HEALTH.set_ready(reason="stages started")
    deadline = time.monotonic() + args.duration if args.duration is not None else None
    code, reason = 0, ""
    try:
        while not stop.wait(0.2):
            HEALTH.beat()
            supervisor.poll()
            status.failed = supervisor.failed_cameras()
            if deadline is not None and time.monotonic() >= deadline:
                log.info("duration of %.0fs reached, stopping", args.duration)
                break
            if supervisor.sources_finished():
                failed = supervisor.failed_sources()
                if len(failed) == len(supervisor.sources()):
                    reason = f"every camera failed for good ({', '.join(failed)})"
                    log.error("%s; stopping", reason)
                    code = 1
                else:
                    log.info("every camera source has ended; draining and stopping")
                stop.wait(2.0)
                break
    except FatalStageError as exc:
        reason = str(exc)
        log.error("%s; stopping the pipeline", reason)
        code = 1
    finally:
        if api is not None:
            api.stop()  # no change starts while the stages stop
        supervisor.stop()
        # A capture killed because it outlived the stop timeout could not remove its frame ring.
        for camera_id in {*(s.labels["camera"] for s in supervisor.specs().values() if "camera" in s.labels), *removed}:
            remove_stale_rings(camera_id)
        status.stop_event.set()
        status.join(timeout=2)
    for line in status.summary():
        log.info("summary: %s", line)
    for line in status.never_up():
        log.warning("summary: %s", line)
    if code:
        log.error("stopped with status %d: %s", code, reason)
    else:
        log.info("stopped")
    return code


def cmd_keys(args: argparse.Namespace) -> int:
    try:
        written = create_keys(args.out, args.client, force=args.force, clients_only=args.clients_only)
    except SecurityError as exc:
        print(f"keys: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    if not args.clients_only:
        print(f"use it with `security: {{curve_keys: {args.out}}}` in the config or --curve-keys {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start and supervise every stage")
    run.add_argument("--config", default=None, help="pipeline YAML (default: the embedded demo)")
    run.add_argument(
        "--duration",
        type=positive_seconds,
        default=None,
        metavar="SECONDS",
        help="stop after this many seconds (> 0); omitted: run until Ctrl-C or SIGTERM",
    )
    run.add_argument("--quiet", action="store_true", help="no periodic status lines (the final summary stays)")
    run.add_argument(
        "--persist",
        action="store_true",
        help="write each camera change made through the control API back to --config (atomically; "
        "YAML comments are lost)",
    )
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate a config and print the stage commands")
    check.add_argument("--config", default=None, help="pipeline YAML (default: the embedded demo)")
    check.set_defaults(func=cmd_check)
    bench = sub.add_parser("bench", help="measure throughput and latency against the study's one-process baseline")
    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    keys = sub.add_parser(
        "keys",
        help="create CurveZMQ key pairs: the server pair, the pipeline's client pair, users' client pairs",
        description="Layout: see emostream/security.py. Secret key files are created with mode 0600.",
    )
    keys.add_argument("--out", required=True, metavar="DIR", help="folder to write the keys into")
    keys.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="NAME",
        help="also a client pair for a user or subscriber, authorized at once (repeatable)",
    )
    keys.add_argument("--clients-only", action="store_true", help="add --client pairs to an existing folder")
    keys.add_argument("--force", action="store_true", help="overwrite existing key files")
    keys.set_defaults(func=cmd_keys)
    model = sub.add_parser(
        "model",
        help="swap the running classifier's model live: use FILE, use previous (roll back), show",
        description="Talks to the classifier's control endpoint (classifier.control; under the launcher "
        "network.base_port+49). The classifier checks the file before it switches; a refused file changes nothing.",
    )
    add_model_arguments(model)
    model.set_defaults(func=cmd_model)
    cameras = sub.add_parser(
        "cameras",
        help="list, add, update or remove cameras of a running launcher (its control API)",
        description="Talks to the control API of `python -m deploy run` (docs/operations.md, Cameras at runtime). "
        "A server error is printed as one line and the exit status is 1.",
    )
    control.add_arguments(cameras)
    cameras.set_defaults(func=control.cmd_cameras)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
