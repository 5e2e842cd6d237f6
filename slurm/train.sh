#!/usr/bin/env bash
# One training run on Slurm: 1 node x 8 GPUs by default, N nodes with `sbatch --nodes=N`.
#
#   sbatch slurm/train.sh MODEL=merlinite LOSS=aot_unpaired [DATA=ultrafeedback] [ARGS="loss.ot_batch_size=64"]
#   DRY_RUN=1 bash slurm/train.sh MODEL=merlinite LOSS=aot_unpaired    # print the commands, run nothing
#
# KEY=VALUE words (or environment variables of the same names):
#   MODEL LOSS DATA ARGS   as for `make train`
#   ACCEL                  configs/accelerate/<ACCEL>.yaml (default fsdp)
#   GPUS_PER_NODE          default 8
#   VENV                   virtual environment to activate (default .venv in the repo)
#   MODULES                `module load` list, space separated (default none)
#   PORT                   rendezvous port on the main node (default 29500)
# Partition, account, time etc. are sbatch options: `sbatch -p gpu -A myacct -t 24:00:00 slurm/train.sh ...`.
#
# Preemption and time limits: Slurm sends USR1 to this script two minutes before the limit
# (--signal) and SIGTERM on preemption. Either way the trainers get SIGTERM, checkpoint after the
# current step and exit (torch elastic allows them 30 s before SIGKILL: ample for a LoRA adapter);
# the job is requeued (--requeue) and the same command resumes from the newest checkpoint
# (train.resume=auto, the default), saying so in its log.
#SBATCH --job-name=aot-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

for word in "$@"; do
  case "$word" in
    *=*) export "${word%%=*}=${word#*=}" ;;
    *) echo "slurm/train.sh: expected KEY=VALUE, got '$word'" >&2; exit 2 ;;
  esac
done
MODEL=${MODEL:-tiny} LOSS=${LOSS:-aot_unpaired} DATA=${DATA:-sample} ARGS=${ARGS:-}
ACCEL=${ACCEL:-fsdp} GPUS_PER_NODE=${GPUS_PER_NODE:-8} PORT=${PORT:-29500} MODULES=${MODULES:-}
REPO=${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
VENV=${VENV:-$REPO/.venv}
NNODES=${SLURM_NNODES:-${SLURM_JOB_NUM_NODES:-1}}
NPROC=$((NNODES * GPUS_PER_NODE))
if [ -n "${SLURM_JOB_NODELIST:-}" ] && command -v scontrol >/dev/null; then
  MAIN_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
else
  MAIN_ADDR=$(hostname)
fi
[ -f "$REPO/configs/accelerate/$ACCEL.yaml" ] || { echo "slurm/train.sh: no configs/accelerate/$ACCEL.yaml" >&2; exit 2; }

# One launcher per node; \$SLURM_NODEID is expanded on each node by the task's shell.
LAUNCH="accelerate launch --config_file configs/accelerate/$ACCEL.yaml --num_machines $NNODES \
--num_processes $NPROC --machine_rank \$SLURM_NODEID --main_process_ip $MAIN_ADDR --main_process_port $PORT \
scripts/train.py model=$MODEL loss=$LOSS data=$DATA $ARGS"
SRUN="srun --nodes=$NNODES --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c"

if [ -n "${DRY_RUN:-}" ]; then
  echo "# $NNODES node(s) x $GPUS_PER_NODE GPUs = $NPROC processes; main node $MAIN_ADDR:$PORT"
  [ -n "$MODULES" ] && echo "module load $MODULES"
  echo "source $VENV/bin/activate"
  echo "cd $REPO"
  echo "$SRUN '$LAUNCH'"
  exit 0
fi

[ -n "$MODULES" ] && module load $MODULES
# shellcheck disable=SC1091
source "$VENV/bin/activate"
cd "$REPO"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

requeue() {
  echo "slurm/train.sh: $1 received: asking the trainer to checkpoint, then requeueing job $SLURM_JOB_ID"
  # SIGTERM: srun forwards it to the tasks, accelerate's launcher (torch elastic) to its workers.
  kill -TERM "$SRUN_PID" 2>/dev/null || true
  wait "$SRUN_PID" || true
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
}
trap 'requeue USR1' USR1
trap 'requeue TERM' TERM

$SRUN "$LAUNCH" &
SRUN_PID=$!
wait "$SRUN_PID"
