"""What an emotion model file says about itself: :class:`ModelInfo` (class names, input size,
normalisation, calibration temperatures, metrics), stored as ``emostream.json`` in a ``.pt2``
(:mod:`emostream.modelfile`) and in an ``.onnx`` file's metadata (:mod:`emostream.onnxmodel`), and the
test-time augmentation modes a file may be served under. Both file forms import it; it imports neither.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

MODEL_FORMAT = "emostream-model/1"
INFO_FILE = "emostream.json"
#: "none": one forward pass per face; "flip": the mean of the logits of the face and of its mirror image
#: (twice the compute); "multicrop": the mean over the face and four copies shifted by
#: :data:`emostream.modelfile.MULTICROP_SHIFT` of its side (edge pixels repeated), each also mirrored: ten views, ten
#: times the compute, in the spirit of the ten-crop test of the published FER2013 recipes.
TtaMode = Literal["none", "flip", "multicrop"]
TTA_MODES: tuple[str, ...] = get_args(TtaMode)


class ModelFileError(ValueError):
    """The file is not an emostream model (or is corrupt)."""


@dataclass
class ModelInfo:
    arch: str
    class_names: list[str]
    input_size: tuple[int, int] = (48, 48)
    mean: float = 0.5
    std: float = 0.25
    temperature: float = 1.0
    #: Temperature fitted on the logits a TTA mode other than "none" produces (averaged logits are
    #: less extreme than single-pass ones, so they need their own); see :meth:`temperature_for`.
    tta_temperatures: dict[str, float] = field(default_factory=dict)
    data_sha256: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = MODEL_FORMAT

    def temperature_for(self, tta: str = "none") -> float:
        """The calibration temperature for logits served under ``tta``.

        Files written before per-TTA temperatures existed (or never calibrated under ``tta``) fall
        back to the single-pass temperature.
        """
        if check_tta(tta) == "none":
            return self.temperature
        return float(self.tta_temperatures.get(tta, self.temperature))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ModelFileError(f"{INFO_FILE} is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelFileError(f"{INFO_FILE} is not a JSON object")
        if data.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"model format {data.get('format')!r}, expected {MODEL_FORMAT!r}")
        names, size = data.get("class_names"), data.get("input_size")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ModelFileError(f"{INFO_FILE}: class_names={names!r} is not a list of names")
        if not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
            raise ModelFileError(f"{INFO_FILE}: input_size={size!r} is not [height, width]")
        data["input_size"] = tuple(size)
        temps = data.get("tta_temperatures", {})
        if not isinstance(temps, dict) or not all(
            k in TTA_MODES and isinstance(v, (int, float)) and v > 0 for k, v in temps.items()
        ):
            raise ModelFileError(f"{INFO_FILE}: tta_temperatures={temps!r} is not {{mode: positive number}}")
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:  # a required field missing
            raise ModelFileError(f"{INFO_FILE}: {exc}") from exc


def check_tta(tta: str) -> str:
    """``tta`` if it names one of :data:`TTA_MODES`; ValueError otherwise."""
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; one of {', '.join(TTA_MODES)}")
    return tta
