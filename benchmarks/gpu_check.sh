#!/usr/bin/env bash
# The GPU paths on one CUDA GPU, with no download: bf16 training of the tiny recipe for AOT
# unpaired and paired, the two-pass step and the precomputed reference, then bench-scale.
#
#   python -m aot.tiny                       # build the tiny model first (on any machine; .cache/ travels)
#   bash benchmarks/gpu_check.sh [OUT=dir]   # on the GPU machine
#
# Writes one log per run, their metrics.json files and scale.json under OUT (default
# benchmarks/results/gpu) plus gpu.txt (nvidia-smi), for the README's GPU table.
set -euo pipefail
for word in "$@"; do export "${word%%=*}=${word#*=}"; done
OUT=${OUT:-benchmarks/results/gpu}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

run() {
  local name=$1; shift
  local start=$SECONDS
  $PY scripts/train.py model.dtype=bfloat16 train.bf16=true output_dir="$OUT/run-$name" "$@" > "$OUT/$name.log" 2>&1
  cp "$OUT/run-$name/metrics.json" "$OUT/$name.metrics.json"
  echo "$name: $((SECONDS - start)) s; $(grep -E 'eval reward accuracy' "$OUT/$name.log")"
}
run aot_unpaired loss=aot_unpaired train.max_steps=100
run aot_paired loss=aot_paired train.max_steps=100
run two_pass loss=aot_unpaired loss.ot_batch_size=256 train.per_device_train_batch_size=16 train.max_steps=20
run precompute loss=aot_unpaired train.precompute_ref=true train.max_steps=100
$PY benchmarks/bench_scale.py --out "$OUT/scale.json" | tail -12
