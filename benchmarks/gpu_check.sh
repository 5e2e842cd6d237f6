#!/usr/bin/env bash
# The GPU paths on a machine with 1 to 8 CUDA GPUs, with no download (benchmarks/gpu_check.py):
# tiny bf16 runs on one GPU and under DDP, FSDP2 and DeepSpeed ZeRO-3 (AOT unpaired and paired,
# the two-pass step, the precomputed reference, full fine-tuning), the multi-process equality
# check, then bench-scale. Writes gpu.json, one log per run and scale.json under OUT.
#
#   python -m aot.tiny                       # build the tiny model first (any machine; .cache/ travels)
#   bash benchmarks/gpu_check.sh [OUT=dir]   # on the GPU machine; then, here:
#   python benchmarks/readme_tables.py       # the README's GPU table from benchmarks/results/gpu.json
#
# A machine without this repo's environment can take the pinned packages as wheels in .whl/
# (installed into /tmp/site, first on PYTHONPATH); PY= picks the interpreter.
set -uo pipefail
for word in "$@"; do export "${word%%=*}=${word#*=}"; done
OUT=${OUT:-benchmarks/results/gpu}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
$PY -c "from aot.tiny import build_tiny; print(build_tiny())"
$PY benchmarks/gpu_check.py --out "$OUT"
if [ -z "${SKIP_SCALE:-}" ]; then
  timeout "${SCALE_TIMEOUT:-600}" $PY benchmarks/bench_scale.py --out "$OUT/scale.json" | tail -12
fi
