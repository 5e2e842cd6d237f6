#!/usr/bin/env bash
# Serve Llama-3-70B-Instruct as an AlpacaEval judge: vLLM's OpenAI-compatible server on 8 GPUs.
#
#   sbatch slurm/serve_judge.sh                 # prints the URL to use, e.g. JUDGE_URL=http://gpu-node-3:8000/v1
#   DRY_RUN=1 bash slurm/serve_judge.sh         # print the command, run nothing
#   make eval-alpaca RUN=outputs/... JUDGE=llama3-70b JUDGE_URL=<printed URL>
#
# KEY=VALUE words (or environment variables): JUDGE_MODEL (hub id or local path, default
# meta-llama/Meta-Llama-3-70B-Instruct), GPUS (default 8), PORT (default 8000), MAX_LEN (default
# 8192), VENV (a venv with vLLM; default .venv-vllm), MODULES. The server reports the model it
# loads under its own name (vLLM's default); make eval-alpaca asks it (/v1/models) and labels the
# AlpacaEval column with that model, so verdicts of another model never pass for Llama-3-70B's.
#SBATCH --job-name=aot-judge
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
for word in "$@"; do
  case "$word" in
    *=*) export "${word%%=*}=${word#*=}" ;;
    *) echo "slurm/serve_judge.sh: expected KEY=VALUE, got '$word'" >&2; exit 2 ;;
  esac
done
REPO=${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
CONFIGURED=$(grep -m1 'model_name:' "$REPO/evaluation/judges/llama3-70b/configs.yaml" | awk '{print $2}')
JUDGE_MODEL=${JUDGE_MODEL:-$CONFIGURED} GPUS=${GPUS:-8} PORT=${PORT:-8000} MAX_LEN=${MAX_LEN:-8192}
VENV=${VENV:-$REPO/.venv-vllm} MODULES=${MODULES:-}
HOST=$(hostname)
SERVE="vllm serve $JUDGE_MODEL --tensor-parallel-size $GPUS --port $PORT --max-model-len $MAX_LEN --dtype bfloat16"
echo "judge URL: JUDGE_URL=http://$HOST:$PORT/v1 (serving $JUDGE_MODEL)"
if [ -n "${DRY_RUN:-}" ]; then
  [ -n "$MODULES" ] && echo "module load $MODULES"
  echo "source $VENV/bin/activate"
  echo "$SERVE"
  exit 0
fi
[ -n "$MODULES" ] && module load $MODULES
# shellcheck disable=SC1091
source "$VENV/bin/activate"
exec $SERVE
