#!/usr/bin/env bash
# Prepares the one CUDA run (deploy/bench/gpu.py) here, before a GPU machine is asked for: .gpu/ (git-ignored)
# gets the real face crops the CPU bench classifies (the GPU machine has no ../shared) and wheels, for that
# machine's Python 3.12, of the packages its image lacks, at the versions installed here.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .gpu/whl
"$PY" -m deploy.bench.gpu --save-crops .gpu/crops.npy
pins=$("$PY" -c 'import importlib.metadata as m
print(" ".join(f"{n}=={m.version(n)}" for n in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "pyzmq")))')
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/whl $pins
ls -la .gpu .gpu/whl
