#!/usr/bin/env bash
# SLURM: tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args]
# GPUS (total, default: the job's tasks, else 8), GPUS_PER_NODE (default 8), CPUS_PER_TASK (default 5),
# SRUN_ARGS.
#
# Time limits and preemption: submit the script itself with sbatch, so that SLURM warns the job
# 120 s before its end (USR1 to this batch shell, which hands it to srun and so to every task) and
# may requeue it:
#   sbatch -p PARTITION -J JOB --nodes=2 --ntasks-per-node=8 --gres=gpu:8 --cpus-per-task=5 \
#          --time=24:00:00 --signal=B:USR1@120 --requeue --open-mode=append -o JOB.%j.out \
#          tools/slurm_train.sh PARTITION JOB CONFIG WORK_DIR --auto-resume
# On USR1 each rank finishes its iteration, rank 0 writes WORK_DIR/latest.pth and runs
# `scontrol requeue $SLURM_JOB_ID`; the requeued job starts again and --auto-resume continues it.
# The config key requeue_signal (default 'SIGUSR1') names the signal; SIGTERM (the time limit,
# scancel) also saves latest.pth, without a requeue.
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-${SLURM_NTASKS:-8}}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-}
DIR=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$DIR/..:${PYTHONPATH:-}"
TRAIN=(srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS"
       --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 $SRUN_ARGS
       python -u "$DIR/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher=slurm "${@:5}")
if [ -z "${SLURM_JOB_ID:-}" ]; then
    exec "${TRAIN[@]}"  # from a login node: srun in the foreground, Ctrl-C as usual
fi
# inside a batch job: srun in the background, so that this shell can hand the signals SLURM sends it
# (--signal=B:...) to srun, which passes them on to every task
"${TRAIN[@]}" &
SRUN_PID=$!
trap 'kill -USR1 "$SRUN_PID" 2>/dev/null || true' USR1
trap 'kill -TERM "$SRUN_PID" 2>/dev/null || true' TERM
while kill -0 "$SRUN_PID" 2>/dev/null; do
    wait "$SRUN_PID" || true  # returns early for each trapped signal
done
wait "$SRUN_PID"  # srun's exit status is the job's
