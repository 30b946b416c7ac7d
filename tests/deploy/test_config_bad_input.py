"""Configs of the wrong shape or with non-finite numbers: the error names the offending key."""

from __future__ import annotations

import re

import pytest

from deploy.config import ConfigError, parse_config

# ------------------------------------------------------------------------------------------------
# configs the existing tests (test_config.py) do not cover
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ([{"cameras": []}], "the top level must be a mapping"),
        (None, "the top level must be a mapping"),
        ("cameras", "the top level must be a mapping"),
        ({"cameras": 5}, "cameras"),
        ({"cameras": [{"id": "a", "source": "demo", "fps": float("nan")}]}, "cameras[0].fps"),
        ({"cameras": [{"id": "a", "source": "demo"}], "detector": {"workers": float("inf")}}, "detector.workers"),
        ({"cameras": [{"id": "a", "source": ["demo"]}]}, "cameras[0].source"),
        ({"cameras": [{"id": "a", "source": "demo", "resize": [0, 0]}]}, "cameras[0].resize"),
        ({"cameras": [{"id": "a", "source": "demo", "resize": [100000, 10]}]}, "cameras[0].resize"),
    ],
    ids=["list", "empty-file", "scalar", "cameras-not-a-list", "nan-fps", "inf-workers", "source-a-list",
         "resize-zero", "resize-absurd"],
)  # fmt: skip
def test_a_config_of_the_wrong_shape_or_with_non_finite_numbers_names_the_problem(data: object, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "bad.yaml")
    assert f"bad.yaml: {key}" in str(info.value)


def test_an_infinite_camera_fps_is_refused_by_the_config() -> None:
    with pytest.raises(ConfigError, match=re.escape("bad.yaml: cameras[0].fps")):
        parse_config({"cameras": [{"id": "a", "source": "demo", "fps": float("inf")}]}, "bad.yaml")
