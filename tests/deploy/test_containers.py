"""The container files (Dockerfile, deploy/compose.yaml, deploy/k8s/) checked against the real code.

No container engine runs here, so nothing is built: instead every command line in those files is
parsed by the real stage's ``build_parser()``, every endpoint a stage connects to must name a service
that binds that port, every probe must hit a path emostream.health serves on the stage's metrics
port, and the compose commands are finally run as local processes (hosts and ports substituted) to
prove they make a working pipeline.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import PYTHON, REPO, free_ports, http_get, wait_for

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "deploy" / "compose.yaml"
K8S = REPO / "deploy" / "k8s"
K8S_BASE = K8S / "base"
K8S_GPU = K8S / "overlays" / "gpu"

STAGES = ("capture", "detector", "classifier", "sink")
#: What emostream.health serves beside /metrics on every stage's metrics port.
HEALTH_PATHS = {"/healthz", "/readyz"}
#: The topology compose.yaml promises (its comments, the README and deploy/prometheus rely on it).
COMPOSE_SERVICES = {"capture-cam0", "detector", "classifier", "sink", "prometheus", "grafana"}
STAGES_IN_COMPOSE = {"capture-cam0": "capture", "detector": "detector", "classifier": "classifier", "sink": "sink"}
#: Folders other engineers own; a mount of them may precede their files.
OTHERS_FOLDERS = ("deploy/prometheus", "deploy/grafana")
#: Environment variables the code does not read but a standard component does: each with who reads it.
STANDARD_ENV = {
    "PYTHONUNBUFFERED": "CPython: log lines reach `docker logs` at once",
    "PYTHONDONTWRITEBYTECODE": "CPython: no .pyc files on a read-only root filesystem",
    "PIP_NO_CACHE_DIR": "pip, at build time",
    "PIP_DISABLE_PIP_VERSION_CHECK": "pip, at build time",
    "PIP_ROOT_USER_ACTION": "pip, at build time (it installs as root, before USER)",
    "OMP_NUM_THREADS": "OpenMP inside PyTorch: thread pool size",
    "MPLCONFIGDIR": "matplotlib: its config/cache directory",
}
ENDPOINT = re.compile(r"^tcp://(?P<host>[^:/]+):(?P<port>\d+)$")
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


# ---------------------------------------------------------------------------------------------
# Stage command lines, parsed by the stages' own parsers
# ---------------------------------------------------------------------------------------------


class BadArgs(Exception):
    """What argparse would have printed before exiting."""


@dataclass
class StageCommand:
    """A ``python -m <stage> ...`` command line as the stage itself understands it."""

    module: str
    args: argparse.Namespace
    binds: list[str] = field(default_factory=list)
    connects: list[str] = field(default_factory=list)

    @property
    def metrics_port(self) -> int:
        return self.args.metrics_port

    def bound_ports(self) -> set[int]:
        return {int(ENDPOINT.match(e)["port"]) for e in self.binds} | {self.metrics_port}


def stage_parser(module: str) -> argparse.ArgumentParser:
    parser = importlib.import_module(f"{module}.__main__").build_parser()

    def fail(message: str) -> None:
        raise BadArgs(message)

    parser.error = fail  # collect the message instead of exiting the test process
    return parser


def parse_stage(argv: list[str], where: str) -> StageCommand:
    """Parse ``python -m <stage> ARGS`` with the stage's real parser and say what it binds/connects."""
    assert len(argv) >= 3 and argv[0] in ("python", "python3") and argv[1] == "-m", (
        f"{where}: {argv[:3]} is not `python -m <stage>`"
    )
    module = argv[2]
    assert module in STAGES, f"{where}: `python -m {module}` is not a stage ({', '.join(STAGES)})"
    parser = stage_parser(module)
    # argparse accepts unambiguous prefixes (--work for --worker); a file must spell flags in full,
    # or a new flag sharing the prefix would silently change what it means.
    known = {option for action in parser._actions for option in action.option_strings}
    for token in map(str, argv[3:]):
        if token.startswith("--"):
            assert token.split("=", 1)[0] in known, f"{where}: `python -m {module}` has no flag {token}"
    try:
        args = parser.parse_args([str(a) for a in argv[3:]])
    except BadArgs as exc:
        pytest.fail(f"{where}: `python -m {module}` rejects its arguments: {exc}")
    cmd = StageCommand(module, args)
    # Who binds and who connects, as in deploy/plan.py and each stage's --help.
    if module == "capture":
        cmd.binds = [args.frames]
        cmd.connects = [args.events] if args.events else []
    elif module == "detector":
        cmd.connects = [*args.frames, args.push]
    elif module == "classifier":
        cmd.binds, cmd.connects = [args.pull], [args.push]
    else:
        cmd.binds = [args.pull, args.publish]
    for endpoint in cmd.binds + cmd.connects:
        assert ENDPOINT.match(endpoint), f"{where}: {endpoint!r} is not tcp://host:port"
    for endpoint in cmd.binds:
        # Inside a container or a pod 127.0.0.1 is the container itself: a bind there is unreachable.
        assert ENDPOINT.match(endpoint)["host"] in ("0.0.0.0", "*"), f"{where}: binds {endpoint}, not 0.0.0.0"
    assert args.metrics_port > 0, f"{where}: no --metrics-port, so no /metrics, /healthz or /readyz to probe"
    assert args.metrics_host == "0.0.0.0", f"{where}: --metrics-host {args.metrics_host} is unreachable for scrapers"
    return cmd


def project_packages() -> list[str]:
    """The top-level packages pyproject.toml installs (its setuptools ``include`` patterns, unstarred)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11+) or tomli")
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return [pattern.rstrip("*") for pattern in find["include"]]


def code_reads(name: str) -> bool:
    """True when some module of the project mentions the environment variable ``name``."""
    for package in project_packages():
        for path in (REPO / package).rglob("*.py"):
            if re.search(rf"['\"]{re.escape(name)}['\"]", path.read_text(encoding="utf-8")):
                return True
    return False


def check_env_names(names: list[str], where: str) -> None:
    for name in names:
        assert name in STANDARD_ENV or code_reads(name), (
            f"{where}: environment variable {name} is read by no module of the project and is not a standard one"
        )


def check_image(image: str, where: str, project: bool) -> None:
    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    assert tag, f"{where}: image {image!r} has no tag (it would mean `latest`)"
    assert tag != "latest", f"{where}: image {image!r} uses `latest`; pin a version"
    if project:
        assert name.rsplit("/", 1)[-1] == "emostream", f"{where}: {image!r} is not the project image"
    else:
        assert re.search(r"\d", tag), f"{where}: third-party image {image!r} is not pinned to a version"


def test_the_probed_paths_are_the_ones_emostream_health_answers():
    from emostream.health import Health, make_app

    health = Health()
    health.set_ready()
    app = make_app(health)
    for path in HEALTH_PATHS:
        status: list[str] = []
        body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, lambda s, _h, st=status: st.append(s)))
        assert status[0].startswith("200") and b"# HELP" not in body, f"{path} is not a health endpoint"


# ---------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) for every instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not buf and not stripped):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, rest = buf.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_args() -> dict[str, str]:
    return {name: default for kw, rest in dockerfile() if kw == "ARG" for name, _, default in [rest.partition("=")]}


def dockerfile_uid() -> int:
    users = [rest for kw, rest in dockerfile() if kw == "USER"]
    assert users, "the Dockerfile never leaves root (no USER)"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"USER {user}: use the numeric uid so Kubernetes' runAsNonRoot can verify it"
    return int(user)


def dockerfile_cmd() -> list[str]:
    cmds = [json.loads(rest) for kw, rest in dockerfile() if kw == "CMD"]
    assert cmds, "the Dockerfile has no CMD"
    return cmds[-1]


def test_dockerfile_builds_a_non_root_cpu_image_with_a_cuda_variant_by_build_argument():
    instructions = dockerfile()
    kinds = [kw for kw, _ in instructions]
    args = dockerfile_args()
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert froms, "no FROM"
    base = INTERPOLATION.sub(lambda m: args.get(m["name"], ""), froms[-1].replace("$BASE_IMAGE", "${BASE_IMAGE}"))
    assert base == "python:3.11-slim", f"default base image is {base!r}, not python:3.11-slim"
    assert args.get("VARIANT") == "cpu", "ARG VARIANT must default to cpu"

    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    install = next((r for kw, r in instructions if kw == "RUN" and "pip install" in r and "VARIANT" in r), None)
    assert install, "no pip install that depends on VARIANT"
    cpu_branch, _, cuda_branch = install.partition("else")
    # constraints.txt pins torch==...+cpu: the CPU build needs it and PyTorch's CPU index; the CUDA
    # build must not use it (it would demand the +cpu wheel) and takes the cu index instead.
    assert "-c constraints.txt" in cpu_branch and "https://download.pytorch.org/whl/cpu" in cpu_branch
    assert "constraints" not in cuda_branch and "https://download.pytorch.org/whl/${VARIANT}" in cuda_branch
    assert "torch==2.13.0+cpu" in (REPO / "constraints.txt").read_text(), "the CPU pin this image relies on moved"
    assert "pip install --no-deps ." in runs, "the project itself is not installed"

    assert dockerfile_uid() != 0, "USER is root"
    env = " ".join(rest for kw, rest in instructions if kw == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env), "PYTHONUNBUFFERED=1 missing: logs would arrive late"
    check_env_names(re.findall(r"\b([A-Z][A-Z0-9_]*)=", env), "Dockerfile ENV")
    assert "HEALTHCHECK" not in kinds, "compose and k8s probe each stage's own port; no HEALTHCHECK in the image"
    assert "ENTRYPOINT" not in kinds, "commands are full `python -m <stage>` lines; no ENTRYPOINT to prepend"


def test_dockerfile_copies_every_package_that_pip_installs_and_dockerignore_keeps_them():
    copies = [rest.split()[0] for kw, rest in dockerfile() if kw == "COPY" and not rest.startswith("--from")]
    for src in copies:
        assert (REPO / src).exists(), f"COPY {src}: no such file in the repository"
    for name in project_packages():
        assert name in copies, f"pyproject installs package {name!r} but the Dockerfile never copies it"
    assert (REPO / "classifier" / "models" / "emotion.pt2").exists(), "the shipped model the image serves"

    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    for required in (".venv", ".git", "runs", ".pytest_cache", ".ruff_cache", "**/__pycache__"):
        assert required in patterns, f".dockerignore does not exclude {required}"
    for src in copies:
        # A COPY source (or a file in a copied package the build needs) must survive .dockerignore.
        for path in [REPO / src, *((REPO / src).rglob("*.pt2") if (REPO / src).is_dir() else [])]:
            rel = path.relative_to(REPO).as_posix()
            parents = [rel] + ["/".join(rel.split("/")[:i]) for i in range(1, rel.count("/") + 1)]
            hit = [p for p in patterns if not p.startswith("!") and any(fnmatch.fnmatch(q, p) for q in parents)]
            assert not hit, f".dockerignore pattern {hit} drops {rel}, which the image needs"


def test_dockerfile_default_command_runs_a_real_module():
    cmd = dockerfile_cmd()
    assert cmd[:2] == ["python", "-m"], f"CMD {cmd} is not `python -m <module>`"
    out = subprocess.run(
        [PYTHON, "-m", cmd[2], *cmd[3:], "--help"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"CMD {cmd}: --help failed:\n{out.stderr}"


# ---------------------------------------------------------------------------------------------
# deploy/compose.yaml
# ---------------------------------------------------------------------------------------------


def interpolate(value: Any, seen: set[str]) -> Any:
    """Apply compose's ${VAR:-default} interpolation with every variable unset (the plain `up`)."""
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            seen.add(m["name"])
            assert m["default"] is not None, f"${{{m['name']}}} has no default: a plain `up` would fail"
            return m["default"]

        return INTERPOLATION.sub(sub, value)
    if isinstance(value, list):
        return [interpolate(v, seen) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, seen) for k, v in value.items()}
    return value


def compose() -> tuple[dict[str, Any], set[str]]:
    seen: set[str] = set()
    doc = interpolate(yaml.safe_load(COMPOSE.read_text()), seen)
    return doc, seen


def project_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in doc["services"].items() if "build" in svc}


def compose_commands(doc: dict[str, Any]) -> dict[str, StageCommand]:
    commands = {}
    for name, svc in project_services(doc).items():
        command = svc.get("command") or dockerfile_cmd()
        assert isinstance(command, list), f"compose {name}: write command as a list (no shell parsing)"
        commands[name] = parse_stage(command, f"compose service {name}")
    return commands


def healthcheck_url(test: list[str], where: str) -> tuple[int, str]:
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), f"{where}: healthcheck.test {test!r}"
    m = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[A-Za-z]*)", " ".join(test))
    assert m, f"{where}: healthcheck does not fetch http://127.0.0.1:<port>/<path>"
    return int(m[1]), m[2]


def test_compose_has_the_promised_services_and_the_project_image_builds_from_the_repository():
    doc, variables = compose()
    assert set(doc["services"]) == COMPOSE_SERVICES
    assert set(project_services(doc)) == set(STAGES_IN_COMPOSE)
    args = dockerfile_args()
    for name, svc in doc["services"].items():
        build = svc.get("build")
        check_image(svc.get("image", ""), f"compose {name}", project=build is not None)
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert context == REPO and (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
            for arg in build.get("args", {}):
                assert arg in args, f"compose {name}: build arg {arg} is no ARG of the Dockerfile"
            env = svc.get("environment", {})
            check_env_names(list(env) if isinstance(env, dict) else [e.split("=")[0] for e in env], f"compose {name}")
    assert variables <= {"EMOSTREAM_VARIANT"}, f"undocumented compose variables {variables}"
    detector = doc["services"]["detector"]
    assert detector["deploy"]["replicas"] == 2
    assert "container_name" not in detector and "ports" not in detector, "a fixed name or host port blocks --scale"


def test_compose_commands_parse_and_every_connect_reaches_a_service_that_binds_that_port():
    doc, _ = compose()
    commands = compose_commands(doc)
    for name, module in STAGES_IN_COMPOSE.items():
        assert commands[name].module == module, f"compose {name} runs {commands[name].module}"
    for name, cmd in commands.items():
        for endpoint in cmd.connects:
            host, port = ENDPOINT.match(endpoint)["host"], int(ENDPOINT.match(endpoint)["port"])
            assert host in commands, f"compose {name} connects to {endpoint}: no emostream service {host!r}"
            binds = {int(ENDPOINT.match(e)["port"]) for e in commands[host].binds}
            assert port in binds, f"compose {name} connects to {endpoint} but {host} binds {sorted(binds)}"
    # Every bound port is connected to by someone, except the public event stream.
    connected = {
        (ENDPOINT.match(e)["host"], int(ENDPOINT.match(e)["port"])) for c in commands.values() for e in c.connects
    }
    for name, cmd in commands.items():
        for endpoint in cmd.binds:
            port = int(ENDPOINT.match(endpoint)["port"])
            if (name, port) not in connected:
                assert name == "sink" and endpoint == cmd.args.publish, f"compose {name} binds {endpoint}, unused"
    exposed = {int(p) for kw, rest in dockerfile() if kw == "EXPOSE" for p in rest.split()}
    for name, cmd in commands.items():
        assert cmd.bound_ports() <= exposed, f"Dockerfile EXPOSE lacks {cmd.bound_ports() - exposed} of {name}"


def test_compose_healthchecks_probe_the_metrics_port_and_dependencies_wait_for_health():
    doc, _ = compose()
    commands = compose_commands(doc)
    for name, cmd in commands.items():
        svc = doc["services"][name]
        assert "healthcheck" in svc, f"compose {name} has no healthcheck"
        port, path = healthcheck_url(svc["healthcheck"]["test"], f"compose {name}")
        assert port == cmd.metrics_port, f"compose {name}: healthcheck on {port}, --metrics-port is {cmd.metrics_port}"
        assert path in HEALTH_PATHS, f"compose {name}: healthcheck path {path} is none of {sorted(HEALTH_PATHS)}"
    for name, svc in doc["services"].items():
        deps = svc.get("depends_on", {})
        for dep, spec in deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps):
            assert dep in doc["services"], f"compose {name} depends on unknown {dep}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in doc["services"][dep], f"compose {name} waits for {dep}'s missing healthcheck"
    # Start order as the local launcher: downstream first, capture last.
    for name, dep in (("classifier", "sink"), ("detector", "classifier"), ("capture-cam0", "detector")):
        assert doc["services"][name]["depends_on"][dep]["condition"] == "service_healthy"


def test_compose_publishes_ports_on_localhost_only_and_for_ports_something_listens_on():
    doc, _ = compose()
    commands = compose_commands(doc)
    third_party = {"prometheus": 9090, "grafana": 3000}
    for name, svc in doc["services"].items():
        for mapping in svc.get("ports", []):
            assert isinstance(mapping, str) and mapping.count(":") == 2, f"compose {name}: {mapping!r} binds all hosts"
            host_ip, _, container = mapping.split(":")
            assert host_ip == "127.0.0.1", f"compose {name}: {mapping} is reachable from other machines"
            listening = commands[name].bound_ports() if name in commands else {third_party[name]}
            assert int(container) in listening, f"compose {name}: publishes {container}, nothing listens there"
    assert "127.0.0.1:5560:5560" in doc["services"]["sink"]["ports"]


def test_compose_mounts_exist_in_the_repository_and_named_volumes_are_declared():
    doc, _ = compose()
    missing_others, missing = [], []
    for name, svc in doc["services"].items():
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                path = (COMPOSE.parent / source).resolve()
                rel = path.relative_to(REPO).as_posix()
                if not path.exists():
                    (missing_others if rel.startswith(OTHERS_FOLDERS) else missing).append(f"{name}: {rel}")
            else:
                assert source in (doc.get("volumes") or {}), f"compose {name}: volume {source} is not declared"
    assert not missing, f"compose mounts folders the repository lacks: {missing}"
    # The paths the Prometheus and Grafana configurations are written for.
    assert doc["services"]["prometheus"]["volumes"][0].startswith("./prometheus:/etc/prometheus")
    grafana = doc["services"]["grafana"]["volumes"]
    assert any(v.startswith("./grafana/provisioning:/etc/grafana/provisioning") for v in grafana)
    assert any(v.startswith("./grafana/dashboards:/var/lib/grafana/dashboards") for v in grafana)
    if missing_others:
        pytest.skip(f"not written yet by their owners, so not checked: {missing_others}")


def test_compose_captures_and_detectors_share_one_tmpfs_as_dev_shm():
    """Frames go through /dev/shm only between processes that see the same /dev/shm (emostream.shm.domain)."""
    doc, _ = compose()
    by_stage: dict[str, set[str]] = {"capture": set(), "detector": set()}
    for name, command in compose_commands(doc).items():
        if command.module in by_stage:
            mounts = dict(v.split(":")[1::-1] for v in doc["services"][name].get("volumes", []))
            assert "/dev/shm" in mounts, f"compose {name}: no shared /dev/shm, so its frames would go over TCP"
            by_stage[command.module].add(mounts["/dev/shm"])
    assert by_stage["capture"] == by_stage["detector"] and len(by_stage["capture"]) == 1
    volume = doc["volumes"][by_stage["capture"].pop()]
    options = dict(o.partition("=")[::2] for o in volume["driver_opts"]["o"].split(","))
    assert volume["driver_opts"]["type"] == "tmpfs"
    assert int(options["uid"]) == dockerfile_uid(), "the stages run as the Dockerfile's USER and create files there"


def test_prometheus_scrapes_the_metrics_ports_compose_serves():
    config_path = REPO / "deploy" / "prometheus" / "prometheus.yml"
    if not config_path.exists():
        pytest.skip(f"{config_path.relative_to(REPO)} not written yet; scrape targets not checked")
    doc, _ = compose()
    commands = compose_commands(doc)
    config = yaml.safe_load(config_path.read_text())
    scraped: set[str] = set()
    for job in config["scrape_configs"]:
        targets = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        targets += [f"{n}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
        for target in targets:
            host, _, port = target.rpartition(":")
            if host in commands:
                assert int(port) == commands[host].metrics_port, f"prometheus job {job['job_name']}: {target}"
                scraped.add(host)
    assert scraped == set(commands), f"stages Prometheus never scrapes: {set(commands) - scraped}"


# ---------------------------------------------------------------------------------------------
# deploy/k8s
# ---------------------------------------------------------------------------------------------


def kustomization(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def raw_documents(folder: Path) -> list[dict[str, Any]]:
    """The resources of a kustomization, read file by file (patches not applied)."""
    docs = []
    for resource in kustomization(folder).get("resources", []):
        path = (folder / resource).resolve()
        if path.is_dir():
            docs += raw_documents(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@functools.cache
def rendered_documents(folder: Path) -> list[dict[str, Any]] | None:
    """`kubectl kustomize` output when kubectl is installed (it is not required), else None."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return None
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {folder.relative_to(REPO)} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def k8s_variants() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    yield "base (files)", raw_documents(K8S_BASE)
    for folder in (K8S_BASE, K8S_GPU):
        docs = rendered_documents(folder)
        if docs is not None:
            yield f"{folder.relative_to(K8S)} (kubectl kustomize)", docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: one stage process per pod"
    return containers[0]


def container_port(container: dict[str, Any], port: int | str) -> int | None:
    """A probe's or Service's port (a number or a port name) as the container's port number."""
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def k8s_commands(docs: list[dict[str, Any]], label: str) -> dict[str, StageCommand]:
    commands = {}
    for name, dep in of_kind(docs, "Deployment").items():
        c = container_of(dep)
        argv = c.get("command") or dockerfile_cmd()
        argv = [*argv, *c.get("args", [])] if c.get("command") else (c.get("args") or dockerfile_cmd())
        commands[name] = parse_stage(argv, f"k8s {label} Deployment {name}")
    return commands


def resolve_service_host(host: str, namespace: str) -> str:
    for suffix in (f".{namespace}.svc.cluster.local", f".{namespace}.svc", f".{namespace}"):
        if host.endswith(suffix):
            return host[: -len(suffix)]
    return host


@pytest.mark.parametrize("folder", [K8S_BASE, K8S_GPU], ids=lambda p: p.relative_to(K8S).as_posix())
def test_kustomizations_reference_files_that_exist(folder: Path):
    kust = kustomization(folder)
    assert kust.get("resources"), f"{folder}: no resources"
    for resource in kust["resources"]:
        path = (folder / resource).resolve()
        assert path.is_file() or (path / "kustomization.yaml").is_file(), f"{folder}: resource {resource} missing"
    names = {(d["kind"], d["metadata"]["name"]) for d in raw_documents(folder)}
    for patch in kust.get("patches", []):
        if "path" in patch:
            path = folder / patch["path"]
            assert path.is_file(), f"{folder}: patch {patch['path']} missing"
            target = yaml.safe_load(path.read_text())
            key = (target["kind"], target["metadata"]["name"])
        else:
            key = (patch["target"]["kind"], patch["target"]["name"])
            assert isinstance(yaml.safe_load(patch["patch"]), list), "inline patches are JSON 6902 op lists"
        assert key in names, f"{folder}: patch targets {key}, which no resource defines"


def test_k8s_deployments_run_real_stage_commands_that_reach_services_binding_those_ports():
    for label, docs in k8s_variants():
        namespace = next(iter(of_kind(docs, "Namespace")), "emostream")
        deployments, services = of_kind(docs, "Deployment"), of_kind(docs, "Service")
        commands = k8s_commands(docs, label)
        assert {c.module for c in commands.values()} == set(STAGES), f"k8s {label}: stages missing"

        for name, service in services.items():
            selector = service["spec"]["selector"].items()
            targets = [
                n for n, d in deployments.items() if selector <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert targets, f"k8s {label}: Service {name} selects no Deployment"
            for port in service["spec"]["ports"]:
                for target in targets:
                    number = container_port(container_of(deployments[target]), port.get("targetPort", port["port"]))
                    assert number in commands[target].bound_ports(), (
                        f"k8s {label}: Service {name} port {port['port']} -> {target}:{number}, which does not listen"
                    )
                    assert number == port["port"], f"k8s {label}: Service {name} renumbers {number} as {port['port']}"

        for name, cmd in commands.items():
            for endpoint in cmd.connects:
                m = ENDPOINT.match(endpoint)
                host, port = resolve_service_host(m["host"], namespace), int(m["port"])
                assert host in services, f"k8s {label}: {name} connects to {endpoint}: no Service {host}"
                assert port in {p["port"] for p in services[host]["spec"]["ports"]}, (
                    f"k8s {label}: {name} connects to {endpoint}; Service {host} has no port {port}"
                )
            c = container_of(deployments[name])
            declared = {p["containerPort"] for p in c.get("ports", [])}
            assert cmd.bound_ports() <= declared, (
                f"k8s {label}: {name} listens on undeclared {cmd.bound_ports() - declared}"
            )


def test_k8s_probes_annotations_resources_security_and_env():
    uid = dockerfile_uid()
    for label, docs in k8s_variants():
        commands = k8s_commands(docs, label)
        for name, dep in of_kind(docs, "Deployment").items():
            where = f"k8s {label} Deployment {name}"
            pod = dep["spec"]["template"]
            c = container_of(dep)
            metrics = commands[name].metrics_port
            expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": None}
            for probe_kind, want in expected.items():
                probe = c.get(probe_kind)
                if probe is None:
                    assert want is None, f"{where}: no {probe_kind}"
                    continue
                get = probe["httpGet"]
                assert get["path"] in HEALTH_PATHS and get["path"] == (want or get["path"]), f"{where}: {probe_kind}"
                assert container_port(c, get["port"]) == metrics, f"{where}: {probe_kind} port is not {metrics}"

            notes = pod["metadata"].get("annotations", {})
            assert notes.get("prometheus.io/scrape") == "true", f"{where}: not annotated for scraping"
            assert notes.get("prometheus.io/port") == str(metrics), f"{where}: scrape port is not --metrics-port"
            assert notes.get("prometheus.io/path") == "/metrics", f"{where}: scrape path"

            res = c.get("resources", {})
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(section, {})), f"{where}: resources.{section} cpu/memory"

            pod_sc, c_sc = pod["spec"].get("securityContext", {}), c.get("securityContext", {})
            assert pod_sc.get("runAsNonRoot", c_sc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot"
            assert pod_sc.get("runAsUser", c_sc.get("runAsUser")) == uid, f"{where}: runAsUser is not the image's {uid}"
            assert c_sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"

            check_env_names([e["name"] for e in c.get("env", [])], where)
            check_image(c["image"], where, project=True)
            if c_sc.get("readOnlyRootFilesystem"):
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert "/tmp" in mounts, f"{where}: read-only root without a writable /tmp"
                if commands[name].module == "sink" and commands[name].args.jsonl:
                    folder = str(Path(commands[name].args.jsonl).parent)
                    assert folder in mounts, f"{where}: --jsonl {commands[name].args.jsonl} is on the read-only root"


def test_k8s_detectors_scale_and_only_the_gpu_overlay_asks_for_a_gpu():
    base = of_kind(raw_documents(K8S_BASE), "Deployment")
    assert base["detector"]["spec"]["replicas"] == 2
    for name, dep in base.items():
        limits = container_of(dep).get("resources", {}).get("limits", {})
        assert "nvidia.com/gpu" not in limits, f"k8s base {name} asks for a GPU; the base is CPU-only"
    rendered = rendered_documents(K8S_GPU)
    if rendered is None:
        # Without kubectl, check the patch itself.
        patch = yaml.safe_load((K8S_GPU / "classifier-gpu.yaml").read_text())
        container = patch["spec"]["template"]["spec"]["containers"][0]
        assert patch["metadata"]["name"] == "classifier" and container["name"] == "classifier"
        assert int(container["resources"]["limits"].get("nvidia.com/gpu", 0)) == 1, "no nvidia.com/gpu: 1 limit"
        return
    gpu = of_kind(rendered, "Deployment")
    for name, dep in gpu.items():
        c = container_of(dep)
        gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if name == "classifier":
            assert gpus is not None and int(gpus) == 1, "the GPU overlay's classifier lacks nvidia.com/gpu: 1"
            device = k8s_commands(rendered, "overlays/gpu")[name].args.device
            assert device == "cuda", f"the GPU classifier runs --device {device}: on a GPU-less node it would not fail"
            assert c["image"].endswith(":cu128"), "the GPU classifier must run the CUDA image"
        else:
            assert gpus is None, f"k8s overlays/gpu: {name} should stay on the CPU"


# ---------------------------------------------------------------------------------------------
# The compose commands, run for real as local processes
# ---------------------------------------------------------------------------------------------


def localise(argv: list[str], ports: dict[int, int], metrics_port: int, volumes: dict[str, Path]) -> list[str]:
    """A compose command line for this host: service names and 0.0.0.0 become 127.0.0.1, every
    port a free one (the same mapping for every service, so connects still meet binds), container
    volume paths a temporary folder."""
    out = [PYTHON if argv[0] in ("python", "python3") else argv[0]]
    for prev, arg in pairwise(argv):
        m = ENDPOINT.match(arg)
        if m:
            arg = f"tcp://127.0.0.1:{ports[int(m['port'])]}"
        elif prev == "--metrics-port":
            arg = str(metrics_port)
        elif prev == "--metrics-host":
            arg = "127.0.0.1"
        else:
            for inside, outside in volumes.items():
                if arg.startswith(inside.rstrip("/") + "/"):
                    arg = str(outside / arg[len(inside.rstrip("/")) + 1 :])
        out.append(arg)
    return out


def test_compose_commands_run_as_local_processes_deliver_events_and_answer_health(tmp_path):
    from emostream.wire import CameraEvent, EmotionEvent
    from sink.subscribe import events

    doc, _ = compose()
    commands = compose_commands(doc)
    start_order = ["sink", "classifier", "detector", "capture-cam0"]  # what depends_on orders
    zmq_ports = sorted({int(ENDPOINT.match(e)["port"]) for c in commands.values() for e in c.binds})
    replicas = {name: doc["services"][name].get("deploy", {}).get("replicas", 1) for name in start_order}
    free = free_ports(len(zmq_ports) + sum(replicas.values()))
    ports = dict(zip(zmq_ports, free[: len(zmq_ports)], strict=True))
    metrics_ports = iter(free[len(zmq_ports) :])

    procs: list[tuple[str, str, int, subprocess.Popen]] = []  # service, replica name, metrics port, process
    logs = tmp_path / "logs"
    logs.mkdir()
    log_files = []
    volumes: dict[str, dict[str, Path]] = {}  # service -> {path inside the container: folder here}
    try:
        for name in start_order:
            svc = doc["services"][name]
            volumes[name] = {}
            for volume in svc.get("volumes", []):
                source, target = volume.split(":")[:2]
                volumes[name][target] = tmp_path / source
                (tmp_path / source).mkdir(exist_ok=True)
            env = {**os.environ, "PYTHONPATH": str(REPO), **{k: str(v) for k, v in svc.get("environment", {}).items()}}
            for replica in range(replicas[name]):
                port = next(metrics_ports)
                argv = localise(svc["command"], ports, port, volumes[name])
                log_files.append((logs / f"{name}-{replica}.log").open("w"))
                # cwd outside the repository, like the image's WORKDIR: the code comes from PYTHONPATH.
                proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log_files[-1], stderr=subprocess.STDOUT)
                procs.append((name, f"{name}-{replica}", port, proc))

        def all_logs() -> str:
            return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.iterdir()))

        publish = f"tcp://127.0.0.1:{ports[int(ENDPOINT.match(commands['sink'].args.publish)['port'])]}"
        received = []
        statuses = []
        for event in events(publish, camera="cam0", timeout=90):
            if isinstance(event, CameraEvent):  # capture's up/down events reach the sink over --events
                statuses.append(event.status)
                continue
            received.append(event)
            if len(received) >= 10 and any(e.faces for e in received):
                break
        assert len(received) >= 10, f"only {len(received)} events reached {publish}\n{all_logs()}"
        assert any(e.faces for e in received), "the demo camera's face was never found"
        assert all(e.camera == "cam0" and isinstance(e, EmotionEvent) for e in received)
        assert set(statuses) <= {"up"}

        for service, name, port, proc in procs:
            assert proc.poll() is None, f"{name} exited with {proc.returncode}\n{all_logs()}"
            for path in ("/healthz", "/readyz"):
                wait_for(lambda p=port, q=path: http_get(p, q)[0] == 200, timeout=30, what=f"{name} {path} 200")
            # The compose healthcheck itself, pointed at this process's port, must succeed too.
            test = doc["services"][service]["healthcheck"]["test"]
            code = test[test.index("-c") + 1]
            compose_port, _ = healthcheck_url(test, name)
            check = subprocess.run([PYTHON, "-c", code.replace(f":{compose_port}/", f":{port}/")], timeout=30)
            assert check.returncode == 0, f"{name}: compose's healthcheck command fails against a healthy stage"

        jsonl = Path(localise(["python", "--jsonl", commands["sink"].args.jsonl], ports, 0, volumes["sink"])[2])
        assert jsonl.is_relative_to(tmp_path), f"--jsonl {commands['sink'].args.jsonl} is on no volume of the sink"
        assert jsonl.exists() and jsonl.stat().st_size > 0, "the sink wrote nothing to its events volume"
    finally:
        # What `docker compose stop` does: SIGTERM upstream first, then wait, then SIGKILL.
        for _, _, _, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for _, name, _, proc in reversed(procs):
            try:
                codes[name] = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        for log_file in log_files:
            log_file.close()
    assert all(code == 0 for code in codes.values()), f"stages did not stop cleanly on SIGTERM: {codes}"
