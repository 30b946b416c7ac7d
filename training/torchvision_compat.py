"""The one place that imports torchvision.

Why: the registry's torchvision 0.28 wheel is a CUDA build. Next to the CPU torch wheel its compiled
ops library (``torchvision/_C.so``) fails to load, torchvision then skips every op registration
except two that ``torchvision/_meta_registrations.py`` makes unconditionally
(``register_fake("torchvision::nms")`` and ``("torchvision::qnms")``), and ``import torchvision``
dies with ``RuntimeError: operator torchvision::nms does not exist``.

Fix: define the schemas of those two operators (schema only, no kernel), drop the half-imported
modules and import again. ``torchvision.models`` and ``torchvision.transforms.v2`` then work;
``torchvision.ops`` and ``torchvision.io`` do not (calling nms raises "no kernel"), and emostream
does not use them. Where the ops load (a matching wheel) the first import succeeds and nothing is
patched.
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch

# Operators that torchvision registers fake kernels for without first checking that _C loaded.
_MISSING_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_ERROR_MARK = "operator torchvision::"

# Kept alive for the life of the process: dropping a Library object unregisters its definitions.
_LIBRARY: torch.library.Library | None = None
patched = False  # True when import_torchvision() had to define the schemas (for diagnostics)


def _purge() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def _define_missing_schemas() -> None:
    global _LIBRARY
    if _LIBRARY is None:
        # FRAGMENT rather than DEF: adds to the namespace without claiming it, so it cannot clash with
        # another definition of "torchvision" (a DEF library may exist only once per namespace).
        _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _MISSING_SCHEMAS.items():
        if not _op_exists(name):
            _LIBRARY.define(schema)


def _op_exists(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):  # torch.ops raises AttributeError for an unknown op
        return False
    return True


def import_torchvision() -> ModuleType:
    """Import and return ``torchvision``, working around the CUDA-wheel op-loading failure."""
    global patched
    try:
        import torchvision
    except RuntimeError as exc:
        if _ERROR_MARK not in str(exc):
            raise
        _purge()
        _define_missing_schemas()
        import torchvision

        patched = True
    return torchvision
