"""The container files (Dockerfile, deploy/compose.yaml, deploy/k8s/) checked against the real code.

No container engine runs here, so nothing is built: instead every command line in those files is
parsed by the real stage's ``build_parser()``, every endpoint a stage connects to must name a service
that binds that port, and every probe must hit a path emostream.health serves on the stage's metrics
port. The compose commands run as local processes are tests/system/test_compose_processes.py.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import PYTHON, REPO
from support.containers import (
    COMPOSE,
    DOCKERFILE,
    DOCKERIGNORE,
    ENDPOINT,
    HEALTH_PATHS,
    INTERPOLATION,
    STAGES,
    StageCommand,
    compose,
    compose_commands,
    dockerfile,
    dockerfile_cmd,
    healthcheck_url,
    parse_stage,
    project_services,
)

K8S = REPO / "deploy" / "k8s"
K8S_BASE = K8S / "base"
K8S_GPU = K8S / "overlays" / "gpu"


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


def dockerfile_args() -> dict[str, str]:
    return {name: default for kw, rest in dockerfile() if kw == "ARG" for name, _, default in [rest.partition("=")]}


def dockerfile_uid() -> int:
    users = [rest for kw, rest in dockerfile() if kw == "USER"]
    assert users, "the Dockerfile never leaves root (no USER)"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"USER {user}: use the numeric uid so Kubernetes' runAsNonRoot can verify it"
    return int(user)


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
