"""The docs stay true: every config key and metric is documented, with the defaults the code has; the README
keeps the two commands CI reads and a quick-start config that loads; every relative link resolves."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

import emostream.metrics
from deploy.config import PipelineConfig, parse_config
from support import REPO

# Found by walking up, so the file keeps working wherever the test layout puts it.
DOCS = REPO / "docs"
MARKDOWN = [REPO / "README.md", REPO / "training" / "README.md", REPO / "deploy" / "METRICS.md", *DOCS.glob("*.md")]


def _section_model(annotation: object) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``X``, ``X | None``, ``list[X]``), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) in (typing.Union, list):
        for arg in typing.get_args(annotation):
            found = _section_model(arg)
            if found:
                return found
    return None


def _documented_sections() -> dict[str, dict[str, str]]:
    """``{section: {key: default cell}}`` from the tables under each "## `section`" heading."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in (DOCS / "configuration.md").read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^## `(\w+)`", line)
        if heading:
            current = sections.setdefault(heading.group(1), {})
        elif line.startswith("## "):
            current = None
        elif current is not None:
            row = re.match(r"^\| `(\w+)` \| ([^|]*) \|", line)
            if row:
                current[row.group(1)] = row.group(2)
    return sections


def _spellings(value: object) -> set[str]:
    if isinstance(value, bool):
        return {"true" if value else "false"}
    if isinstance(value, float):
        return {f"{value:g}", repr(value)}
    return {str(value)}


def test_configuration_md_documents_every_config_key_with_its_default():
    documented = _documented_sections()
    sections = {
        name: model
        for name, field in PipelineConfig.model_fields.items()
        if (model := _section_model(field.annotation)) is not None
    }
    assert set(documented) == set(sections), "docs/configuration.md: one '## `section`' table per config section"
    for name, model in sections.items():
        keys = documented[name]
        assert set(keys) == set(model.model_fields), f"docs/configuration.md, section {name}: keys differ from the code"
        for key, field in model.model_fields.items():
            cell = keys[key]
            if field.default is PydanticUndefined:
                assert "required" in cell, f"{name}.{key} has no default: its row should say 'required', not {cell!r}"
            elif field.default is not None and not isinstance(field.default, tuple | list):
                wanted = {f"`{s}`" for s in _spellings(field.default)}
                assert any(w in cell for w in wanted), f"{name}.{key}: default {field.default!r}, documented {cell!r}"


def test_configuration_md_documents_every_sink_output_key():
    from sink.settings import OUTPUT_TYPES, OutputSettings

    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    section = text.split("## Sink outputs", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    for model in typing.get_args(typing.get_args(OutputSettings)[0]):
        missing = set(model.model_fields) - documented
        assert not missing, f"docs/configuration.md, Sink outputs: {model.__name__} keys {missing} not documented"
    assert all(f"`type: {t}`" in section for t in OUTPUT_TYPES)


def test_metrics_md_lists_every_metric_as_prometheus_names_it():
    catalogue = (DOCS / "metrics.md").read_text(encoding="utf-8")
    metrics = [m for m in vars(emostream.metrics).values() if isinstance(m, MetricWrapperBase)]
    assert len(metrics) >= 10
    suffix = {"counter": "_total", "info": "_info"}
    for metric in metrics:
        name = metric._name + suffix.get(metric._type, "")
        assert f"`{name}`" in catalogue, f"docs/metrics.md does not list {name}"


def test_readme_keeps_the_two_commands_that_ci_reads():
    # The same patterns as .ci/run's grep -m1 -E.
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    demo = re.search(r"^python3 -m venv \.venv .*-m deploy run.*$", readme, re.M)
    tests = re.search(r"^python3 -m venv \.venv .*-m pytest.*$", readme, re.M)
    assert demo and demo.group(0).endswith(".venv/bin/python -m deploy run")
    assert tests and tests.group(0).endswith(".venv/bin/python -m pytest")


def test_readme_quick_start_config_loads():
    if not (REPO.parent / "shared" / "media" / "faces.mp4").is_file():
        pytest.skip("../shared/media/faces.mp4 is missing (the quick start replays it)")
    import yaml

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n# pipeline\.yaml\n(.*?)```", readme, re.S)
    assert block, "README.md: the quick start's '# pipeline.yaml' block is gone"
    config = parse_config(yaml.safe_load(block.group(1)), str(REPO / "pipeline.yaml"))
    assert config.cameras[0].is_file and Path(str(config.cameras[0].source)).name == "faces.mp4"
    assert config.detector.backend == "yunet"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _without_code(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(page: Path):
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", _without_code(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", link):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no such file)")
        elif anchor:
            headings = re.findall(r"^#+ (.*)$", _without_code(target.read_text(encoding="utf-8")), re.M)
            if anchor not in {_slug(h) for h in headings}:
                broken.append(f"{link} (no such heading)")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"
