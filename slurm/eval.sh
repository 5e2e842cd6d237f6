#!/usr/bin/env bash
# Evaluate one run on one GPU: AlpacaEval generation + judging, then the Open LLM tasks.
#
#   sbatch slurm/eval.sh RUN=outputs/merlinite-aot_unpaired-ultrafeedback [JUDGE=llama3-70b] [JUDGE_URL=...]
#   DRY_RUN=1 bash slurm/eval.sh RUN=outputs/...            # print the commands, run nothing
#
#   sbatch --gpus=2 slurm/eval.sh RUN=outputs/... GEN=vllm TP=2   # TP=n needs n GPUs: ask sbatch for them
#
# KEY=VALUE words (or environment variables): RUN (required), JUDGE (default gpt4), JUDGE_URL,
# ALPACA_SET, GEN (hf|vllm), DECODING (greedy|leaderboard), TP, LEADERBOARD, TINY, CHAT=1, TASKS,
# BACKEND, SKIP_ALPACA=1, SKIP_OPEN_LLM=1, VENV, MODULES. (GEN=vllm, BACKEND=vllm: `make vllm`
# first; vLLM runs in .venv-vllm or $VLLM_PYTHON.) A run directory that does not exist, or a TP
# larger than the job's GPUs, stops before anything loads.
# Keys (OPENAI_API_KEY, JUDGE_API_KEY) come from the environment and are never written out.
#SBATCH --job-name=aot-eval
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus=1
#SBATCH --cpus-per-task=16
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
for word in "$@"; do
  case "$word" in
    *=*) export "${word%%=*}=${word#*=}" ;;
    *) echo "slurm/eval.sh: expected KEY=VALUE, got '$word'" >&2; exit 2 ;;
  esac
done
[ -n "${RUN:-}" ] || { echo "slurm/eval.sh: RUN=<run dir> is required" >&2; exit 2; }
JUDGE=${JUDGE:-gpt4} MODULES=${MODULES:-}
REPO=${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
VENV=${VENV:-$REPO/.venv}
RUN_DIR=$RUN; [[ $RUN_DIR = /* ]] || RUN_DIR=$REPO/$RUN
[ -f "$RUN_DIR/config.yaml" ] || {
  echo "slurm/eval.sh: RUN=$RUN is not a run directory (no $RUN_DIR/config.yaml; make train writes it)" >&2; exit 2; }
if [ -n "${TP:-}" ] && [ -n "${SLURM_JOB_ID:-}" ]; then  # this script asks Slurm for one GPU by default
  GPUS=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}
  [ "$TP" -le "${GPUS:-0}" ] || {
    echo "slurm/eval.sh: TP=$TP needs $TP GPUs, this job has ${GPUS:-0}: submit with sbatch --gpus=$TP slurm/eval.sh ..." >&2; exit 2; }
fi

ALPACA="python scripts/eval_alpaca.py --run $RUN --judge $JUDGE${JUDGE_URL:+ --judge-url $JUDGE_URL}${ALPACA_SET:+ --alpaca-set $ALPACA_SET}${GEN:+ --gen $GEN}${DECODING:+ --decoding $DECODING}${TP:+ --tp $TP}"
OPEN_LLM="python scripts/eval_open_llm.py --run $RUN${LEADERBOARD:+ --leaderboard}${TINY:+ --tiny}${CHAT:+ --chat}${TASKS:+ --tasks $TASKS}${BACKEND:+ --backend $BACKEND}"
COMMANDS=()
[ -n "${SKIP_ALPACA:-}" ] || COMMANDS+=("$ALPACA")
[ -n "${SKIP_OPEN_LLM:-}" ] || COMMANDS+=("$OPEN_LLM")

if [ -n "${DRY_RUN:-}" ]; then
  [ -n "$MODULES" ] && echo "module load $MODULES"
  echo "source $VENV/bin/activate"
  echo "cd $REPO"
  for c in "${COMMANDS[@]}"; do echo "$c"; done
  exit 0
fi
[ -n "$MODULES" ] && module load $MODULES
# shellcheck disable=SC1091
source "$VENV/bin/activate"
cd "$REPO"
for c in "${COMMANDS[@]}"; do $c; done
