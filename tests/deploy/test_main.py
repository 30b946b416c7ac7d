"""``python -m deploy``'s own options, as a user types them."""

from __future__ import annotations

import subprocess

import pytest

from deploy.__main__ import positive_seconds
from support import PYTHON, REPO


@pytest.mark.parametrize("duration", ["-5", "0", "nan", "inf", "soon"])
def test_run_refuses_a_duration_that_is_not_above_zero_before_starting_anything(duration: str) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "deploy", "run", f"--duration={duration}"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"argument --duration: {duration!r} is not a number of seconds > 0" in result.stderr
    assert "started" not in result.stderr + result.stdout, "no stage may start"


def test_a_positive_duration_is_taken_as_seconds() -> None:
    assert positive_seconds("2.5") == 2.5
