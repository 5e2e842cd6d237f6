#!/usr/bin/env bash
# The checks that need a GPU, as one command, most important first; each result lands in $OUT as
# soon as it exists (a run cut off by its time limit keeps what it finished):
#   1. headline.log: the bf16 value check (tests/integration/test_headline_regime.py, FSDP2 with one process):
#      per-row log-probs of 200-token answers against a float32-accumulated oracle, step-1 loss
#   2. memory7b.json: a Mistral-7B-shaped model with random weights built on the GPU, one LoRA step
#      at 1,024 tokens with gradient checkpointing (chunked log-probs, full logits, TRL 1.16), peak
#      CUDA memory, and the largest OT batch that fits (benchmarks/gpu_memory.py)
#   3. gpu.json: the tiny runs (benchmarks/gpu_check.py; multi-process ones with 2+ GPUs)
#   4. vllm.log: where vLLM is installed (not on the lent machine's image), AlpacaEval generation
#      of a tiny LoRA run through vLLM (tests/integration/test_generation.py checks up to the engine)
#   plus gpu.txt (nvidia-smi) and check.log (this script's output).
#
# On the lent machine (Python 3.12, its own CUDA torch, no network), with the pinned pure-Python
# packages carried as wheels built here first (bash benchmarks/gpu_wheels.sh -> .whl/):
#   bash benchmarks/gpu_check.sh OUT=$OUT            # carry .whl and .cache (the tiny model)
# The wheels go to /tmp/site, after the machine's own packages on the path for torch and numpy
# (never carried), before them for the rest; the repo is imported from the checkout, uninstalled.
set -uo pipefail
for word in "$@"; do export "${word%%=*}=${word#*=}"; done
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec > >(tee -a "$OUT/check.log") 2>&1
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
$PY -c "import torch, numpy; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.__file__, 'numpy', numpy.__version__)" || exit 1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
$PY -m aot.fixtures.tiny || exit 1

echo "== 1. headline bf16 values (FSDP2, one process)"
AOT_TEST_PROCESSES=1 timeout "${HEADLINE_TIMEOUT:-240}" $PY -m pytest -q -p no:cacheprovider \
  tests/integration/test_headline_regime.py -k fsdp2 > "$OUT/headline.log" 2>&1
echo "exit $?" >> "$OUT/headline.log"; tail -n 3 "$OUT/headline.log"

echo "== 2. Mistral-7B-shaped LoRA step at 1,024 tokens"
timeout "${MEMORY_TIMEOUT:-300}" $PY benchmarks/gpu_memory.py --out "$OUT/memory7b.json"

echo "== 3. tiny runs"
[ -n "${SKIP_TINY:-}" ] || timeout "${TINY_TIMEOUT:-600}" $PY benchmarks/gpu_check.py --out "$OUT"

echo "== 4. vLLM generation (when vLLM is installed)"
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
