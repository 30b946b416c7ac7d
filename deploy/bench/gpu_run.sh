#!/usr/bin/env bash
# The one CUDA run, on the GPU machine, from the repository's root, after deploy/bench/gpu_prepare.sh here:
#   bash deploy/bench/gpu_run.sh OUTDIR      (the device tool: command "bash deploy/bench/gpu_run.sh $OUT",
#                                              carry [".gpu"], timeout_s 540)
# Leaves OUTDIR/gpu.json (written after each model), gpu.log and nvidia-smi.csv.
set -uo pipefail
out=${1:?usage: gpu_run.sh OUTDIR}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
  || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/nvidia-smi.csv"
timeout 500 python3 -m deploy.bench.gpu --crops .gpu/crops.npy --json "$out/gpu.json" 2>&1 | tee "$out/gpu.log"
