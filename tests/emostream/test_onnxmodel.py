"""emostream.onnxmodel: the serving options every onnxruntime session of the pipeline gets."""

from __future__ import annotations

import pytest

from emostream.onnxmodel import SPINNING_ENTRY, session_options


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_serving_sessions_sleep_when_idle_and_run_one_sequential_stream(threads: int) -> None:
    ort = pytest.importorskip("onnxruntime")
    options = session_options(threads)
    # A spinning pool would burn the CPU that the other stages on the same cores need.
    assert options.get_session_config_entry(SPINNING_ENTRY) == "0"
    assert options.intra_op_num_threads == threads and options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
