"""What the CPU this process runs on can do: its model name and the instruction sets that decide
which number format and runtime serve fastest (bf16 needs AMX or AVX-512 bf16 to beat float32)."""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

#: /proc/cpuinfo flags that matter for serving, in the order reports list them.
SERVING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def native_bf16(self) -> bool:
        """bf16 in hardware (AMX or AVX-512 bf16); elsewhere torch emulates it, slower than float32."""
        return "amx_bf16" in self.flags or "avx512_bf16" in self.flags

    def serving_flags(self) -> dict[str, bool]:
        return {flag: flag in self.flags for flag in SERVING_FLAGS}


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's model name and flags from /proc/cpuinfo text."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model=model or platform.processor() or platform.machine(), flags=flags)


@functools.cache
def cpu_info() -> CpuInfo:
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux
        return CpuInfo(model=platform.processor() or platform.machine(), flags=frozenset())
