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
# Preemption and time limits: Slurm sends USR1 to this script STOP_LEAD seconds (120) before the
# limit (--signal; keep STOP_LEAD in step when you change it) and SIGTERM on preemption. The script
# then creates the run's stop file ($AOT_STOP_FILE): the trainer checks it after every step,
# finishes the step, writes a checkpoint and exits 0, with the whole lead time to do so (a signal
# through torch elastic would allow 30 s before SIGKILL). The job is requeued (--requeue) and the
# same command resumes from the newest checkpoint (train.resume=auto), saying which in its log.
# The trainer measures its step and checkpoint times and warns when a step plus a checkpoint
# would not fit in STOP_LEAD; on preemption (Slurm's KillWait, often 30 s) the periodic
# checkpoints (train.save_steps) are what survives.
#
# The script finds the repo from the path it was submitted with, so sbatch works from any
# directory (AOT_REPO=... overrides).
#
# Disks: the nodes need not share one. The repo and its .venv must be at the same path on every
# node (a shared disk, or a copy on each); output_dir may be node-local. At start rank 0 writes a
# token under output_dir and every rank looks for it: on a shared disk rank 0 writes the files all
# ranks read; on node-local disks the first process of each node writes its own copy of them, and
# every rank writes its own shard of each checkpoint to its own disk. Which checkpoint to resume is
# agreed by all ranks (the newest complete on every node), and everything else rank 0 decides and
# broadcasts. Metrics, plots and the final model are written on node 0 (docs/scale-out.md).
#SBATCH --job-name=aot-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

for word in "$@"; do
  case "$word" in
    *=*) export "${word%%=*}=${word#*=}" ;;
    *) echo "slurm/train.sh: expected KEY=VALUE, got '$word'" >&2; exit 2 ;;
  esac
done
MODEL=${MODEL:-tiny} LOSS=${LOSS:-aot_unpaired} DATA=${DATA:-} ARGS=${ARGS:-}
ACCEL=${ACCEL:-fsdp} GPUS_PER_NODE=${GPUS_PER_NODE:-8} PORT=${PORT:-29500} MODULES=${MODULES:-}
STOP_LEAD=${STOP_LEAD:-120}
if [ -z "$DATA" ]; then
  # The bundled sample set is for the tiny model only: a 7B job needs its data named.
  [ "$MODEL" = tiny ] || { echo "slurm/train.sh: DATA=<ultrafeedback|helpsteer|pku|local|...> is required for MODEL=$MODEL" >&2; exit 2; }
  DATA=sample
fi
# sbatch runs a copy of this script from Slurm's spool directory: take the path it was submitted with.
SCRIPT=$0
if [ -n "${SLURM_JOB_ID:-}" ] && command -v scontrol >/dev/null; then
  SUBMITTED=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -n 1)
  case "$SUBMITTED" in /*) ;; ?*) SUBMITTED=${SLURM_SUBMIT_DIR:-.}/$SUBMITTED ;; esac
  [ -f "$SUBMITTED" ] && SCRIPT=$SUBMITTED
fi
REPO=${AOT_REPO:-$(cd "$(dirname "$SCRIPT")/.." && pwd)}
[ -f "$REPO/scripts/train.py" ] || { echo "slurm/train.sh: no scripts/train.py under $REPO; set AOT_REPO=<repo root>" >&2; exit 2; }
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
# srun no longer inherits sbatch's --cpus-per-task (Slurm >= 22.05): pass it on.
SRUN="srun --nodes=$NNODES --ntasks-per-node=1${SLURM_CPUS_PER_TASK:+ --cpus-per-task=$SLURM_CPUS_PER_TASK} --kill-on-bad-exit=1 bash -c"
# Global rank 0, on this node (node 0 of the allocation), polls this file after each step and
# tells every rank to stop: no other node needs to see it.
export AOT_STOP_FILE=${AOT_STOP_FILE:-$REPO/outputs/.stop/job-${SLURM_JOB_ID:-local}} AOT_STOP_LEAD_S=$STOP_LEAD
# Built fixtures and cached reference log-probs in the checkout, as make does.
export AOT_CACHE_DIR=${AOT_CACHE_DIR:-$REPO/.cache}

if [ -n "${DRY_RUN:-}" ]; then
  echo "# $NNODES node(s) x $GPUS_PER_NODE GPUs = $NPROC processes; main node $MAIN_ADDR:$PORT"
  [ -n "$MODULES" ] && echo "module load $MODULES"
  echo "source $VENV/bin/activate"
  echo "cd $REPO"
  echo "export AOT_STOP_FILE=$AOT_STOP_FILE AOT_STOP_LEAD_S=$AOT_STOP_LEAD_S AOT_CACHE_DIR=$AOT_CACHE_DIR"
  echo "$SRUN '$LAUNCH'"
  exit 0
fi

[ -n "$MODULES" ] && module load $MODULES
# shellcheck disable=SC1091
source "$VENV/bin/activate"
cd "$REPO"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

mkdir -p "$(dirname "$AOT_STOP_FILE")"
rm -f "$AOT_STOP_FILE"
echo "slurm/train.sh: job ${SLURM_JOB_ID:-local}, start ${SLURM_RESTART_COUNT:-0} (0 = first); a requeued start resumes from the newest checkpoint of the run directory (see 'resuming from' below)"

requeue() {
  echo "slurm/train.sh: $1 received: asking the trainer to checkpoint and stop ($AOT_STOP_FILE), then requeueing job ${SLURM_JOB_ID:-local}"
  touch "$AOT_STOP_FILE"
  wait "$SRUN_PID" || true
  rm -f "$AOT_STOP_FILE"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
}
trap 'requeue USR1' USR1
trap 'requeue TERM' TERM

$SRUN "$LAUNCH" &
SRUN_PID=$!
wait "$SRUN_PID"
