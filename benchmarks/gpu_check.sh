#!/usr/bin/env bash
# The checks that need a GPU, as one command, in this order; each result lands in $OUT as soon as
# it exists (a run cut off by its time limit keeps what it finished):
#   1. packing.json: packed attention on CUDA (varlen_attn) against padded SDPA: log-probs,
#      gradients, no attention across sequences, the kernel that ran (benchmarks/gpu_packing.py)
#   2. step_mistral7b.json, step_llama3_8b.json: one LoRA step of a 7B/8B-shaped model (random bf16
#      weights built on the GPU) at UltraFeedback lengths, 16 pairs: padded, packed and TRL 1.16;
#      pairs/s, real tokens/s, MFU, peak memory (benchmarks/bench_packing.py)
#   3. step_mistral7b.json "largest": the most pairs one micro-batch holds, packed and TRL,
#      predicted from step 2's memory and checked once
#   4. headline.log: the bf16 value check (tests/integration/test_headline_regime.py, FSDP2, one process)
#   5. gpu.json: the tiny runs (benchmarks/gpu_check.py; multi-process ones with 2+ GPUs), unless SKIP_TINY=1
#   6. vllm.log: where vLLM is installed (not on the lent machine's image), generation through it
#   plus gpu.txt (nvidia-smi) and check.log (this script's output).
#
# On the lent machine (Python 3.12, its own CUDA torch, no network), with the pinned pure-Python
# packages carried as wheels built here first (bash benchmarks/gpu_wheels.sh -> .whl/):
#   bash benchmarks/gpu_check.sh OUT=$OUT            # carry .whl
# The wheels go to /tmp/site, before the machine's own packages on the path (never torch or numpy,
# which are the machine's); the repo is imported from the checkout, uninstalled.
# SMOKE=1 runs every step on a CPU at toy sizes (tests/integration/test_gpu_check.py, in an
# environment shaped like the lent machine's).
set -uo pipefail
for word in "$@"; do export "${word%%=*}=${word#*=}"; done
OUT=${OUT:-benchmarks/results/gpu}
SMOKE=${SMOKE:-}
mkdir -p "$OUT"
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec > >(tee -a "$OUT/check.log") 2>&1
WHEELS=${WHEELS:-.whl}  # the CPU test (packages already in place) sets none
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -c "import torch, numpy; assert torch.cuda.is_available() or '$SMOKE', 'no CUDA device'; print('torch', torch.__version__, torch.__file__, 'numpy', numpy.__version__)" || exit 1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
[ -n "$SMOKE" ] || export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
$PY -m aot.fixtures.tiny || exit 1
if [ -n "$SMOKE" ]; then MISTRAL=tiny LLAMA=tiny PAIRS=2; else MISTRAL=mistral7b LLAMA=llama3_8b PAIRS=16; fi
STEP="$PY benchmarks/bench_packing.py --pairs $PAIRS --steps 2"

echo "== 1. packed attention against padded SDPA"
timeout "${PACKING_TIMEOUT:-120}" $PY benchmarks/gpu_packing.py --pairs $(( PAIRS > 4 ? PAIRS / 2 : 2 )) --out "$OUT/packing.json"; echo "exit $?"

echo "== 2. 7B/8B-shaped LoRA steps at UltraFeedback lengths: padded, packed, TRL"
timeout "${STEP_TIMEOUT:-200}" $STEP --shape $MISTRAL --out "$OUT/step_mistral7b.json"; echo "exit $?"
timeout "${STEP_TIMEOUT:-200}" $STEP --shape $LLAMA --out "$OUT/step_llama3_8b.json"; echo "exit $?"

echo "== 3. the largest micro-batch, packed and TRL (predicted, checked once)"
[ -n "$SMOKE" ] || timeout "${LARGEST_TIMEOUT:-240}" $STEP --shape $MISTRAL --resume --largest --out "$OUT/step_mistral7b.json"
echo "exit $?"

echo "== 4. headline bf16 values (FSDP2, one process)"
AOT_TEST_PROCESSES=1 timeout "${HEADLINE_TIMEOUT:-240}" $PY -m pytest -q -p no:cacheprovider \
  tests/integration/test_headline_regime.py -k fsdp2 > "$OUT/headline.log" 2>&1
echo "exit $?" >> "$OUT/headline.log"; tail -n 3 "$OUT/headline.log"

echo "== 5. tiny runs"
[ -n "${SKIP_TINY:-}" ] || timeout "${TINY_TIMEOUT:-600}" $PY benchmarks/gpu_check.py --out "$OUT"

echo "== 6. vLLM generation (when vLLM is installed)"
if $PY -c "import vllm" 2>/dev/null; then
  VLLM_PYTHON=$PY timeout "${VLLM_TIMEOUT:-300}" $PY -c "
import json, tempfile
from pathlib import Path
from aot.config import compose
from aot.run import train
from evaluation.generation import generate, settings_for
out = Path(tempfile.mkdtemp()) / 'tiny-aot_unpaired-sample'
train(compose(f'output_dir={out}', 'train.max_steps=2', 'data.max_test_samples=8'))
records = [{'instruction': q, 'output': '-', 'generator': 'ref', 'dataset': 'gpu'} for q in ('What color is snow?', 'Name a fruit.')]
path = generate(out, records, settings_for('greedy', 'vllm', 16, instruction_set='gpu-check'))
print(path.read_text())
" > "$OUT/vllm.log" 2>&1; echo "exit $?" >> "$OUT/vllm.log"
else
  echo "vLLM not installed: skipped" | tee "$OUT/vllm.log"
fi
