"""Fixtures shared by the test suite (a tiny model file, small synthetic training data, started processes,
a ZeroMQ context) and the ``system`` marker on every test under tests/system/. Helpers live in tests/support/."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from support import make_keys

SYSTEM = Path(__file__).resolve().parent / "system"


@pytest.hookimpl(tryfirst=True)  # before -m "not system" deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SYSTEM in item.path.parents:
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="module")
def synthetic_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Small FER2013-shaped splits a tiny model learns in seconds (support.training.synthetic_splits)."""
    from support.training import synthetic_splits

    return synthetic_splits()


@pytest.fixture(scope="module")
def synthetic_csv(synthetic_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``synthetic_data`` as a gzipped FER2013 CSV."""
    from support.training import write_splits_csv

    return write_splits_csv(synthetic_data, tmp_path_factory.mktemp("csv") / "fer2013.csv.gz")


@pytest.fixture(scope="module")
def synthetic_image_folder(synthetic_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``synthetic_data`` as image folders, one per split and class."""
    from support.training import write_folder

    return write_folder(tmp_path_factory.mktemp("folder"), synthetic_data)


@pytest.fixture(scope="module")
def synthetic_flat_folder(synthetic_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PrivateTest split of ``synthetic_data`` as class folders with no split level."""
    from support.training import write_folder

    return write_folder(
        tmp_path_factory.mktemp("flat"), {"PrivateTest": synthetic_data["PrivateTest"]}, with_splits=False
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained small CNN in the real model-file format: for plumbing tests, not accuracy."""
    from emostream.modelfile import save_model
    from emostream.modelinfo import ModelInfo
    from emostream.wire import EMOTIONS
    from support.models import tiny_bn_net

    path = tmp_path_factory.mktemp("model") / "tiny.pt2"
    save_model(tiny_bn_net(seed=0, width=8), ModelInfo(arch="tiny-test-cnn", class_names=list(EMOTIONS)), path)
    return path


@pytest.fixture(scope="session")
def validator():
    """A validator of the committed event schema, docs/event.schema.json (itself checked first)."""
    import jsonschema

    from support import REPO

    schema = json.loads((REPO / "docs" / "event.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture
def keys_dir(tmp_path) -> Path:
    """The deployment's keys plus an authorized user 'alice'."""
    directory = tmp_path / "keys"
    result = make_keys(directory, "--client", "alice")
    assert result.returncode == 0, result.stderr
    return directory


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; killed (if still running) and reaped at teardown."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)
