#!/bin/bash
# Multi-node training on a Slurm cluster: one task per node, each running torchrun over the node's GPUs with a c10d
# rendezvous on the head node.
#   bash cookbook/training_template.sh CONFIG.yaml    submits itself: creates logs/, asks for $NNODES nodes (default 4,
#                                                     the published run), $ACCOUNT if set; runs `multimeditron train`
#   bash cookbook/training_template.sh COMMAND ARGS...  any other subcommand on the engine, e.g.
#                                                     finetune --config cookbook/experts/....yaml --set ...
#   sbatch --nodes $NNODES cookbook/training_template.sh CONFIG.yaml   also works once logs/ exists
# Use it as it is: it reads $STORAGE_ROOT, $MODEL_ROOT, $NNODES, ... itself. `envsubst` (the published README's
# step) would blank its Slurm variables, so a copy that went through envsubst refuses to run.
#SBATCH --job-name=multimeditron
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=288
#SBATCH --time=11:59:59
#SBATCH --output=logs/%x-%j.out
#SBATCH --account=YOUR_ACCOUNT

# envsubst replaces the quoted probe (with the empty string when the variable is unset); the literal it is compared
# with is split after the `$`, which envsubst does not touch. Checked first, before any line envsubst may have broken.
ENVSUBST_PROBE='${MULTIMEDITRON_ENVSUBST_PROBE}'
if [ "$ENVSUBST_PROBE" != '$''{MULTIMEDITRON_ENVSUBST_PROBE}' ]; then
  echo "error: this copy of training_template.sh went through envsubst, which blanks its Slurm and shell variables" \
       "(SLURM_NNODES, SLURM_PROCID, ...). Use cookbook/training_template.sh as it is:" \
       "bash cookbook/training_template.sh CONFIG.yaml" >&2
  exit 2
fi
set -euo pipefail

: "${1:?usage: bash training_template.sh CONFIG.yaml | COMMAND ARGS... (submits itself with sbatch)}"
# A YAML file alone is a `train` config (the published usage); otherwise the arguments are a subcommand's.
if [[ "$1" == *.yaml || "$1" == *.yml ]] && [ "$#" -eq 1 ]; then
  COMMAND=(train --config "$1")
else
  COMMAND=("$@")
fi
# .env as in the published cookbook: WORKING_DIR, STORAGE_ROOT, MODEL_ROOT, HF_TOKEN, HF_HOME, WANDB_*, NNODES, ...
if [ -f "${WORKING_DIR:-.}/.env" ]; then set -a; source "${WORKING_DIR:-.}/.env"; set +a; fi
LOG_DIR=${LOG_DIR:-logs}

if [ -z "${SLURM_JOB_ID:-}" ]; then
  # Not inside a job yet: Slurm opens --output before the script starts, so the log folder is made here, and
  # `#SBATCH` lines cannot read variables, so the node count goes on the command line.
  mkdir -p "$LOG_DIR"
  sbatch --nodes "${NNODES:-4}" --output "$LOG_DIR/%x-%j.out" ${ACCOUNT:+--account "$ACCOUNT"} "$0" "$@"
  exit
fi

if [ -n "${NNODES:-}" ] && [ "$NNODES" != "$SLURM_NNODES" ]; then
  echo "error: NNODES=$NNODES but the job has $SLURM_NNODES nodes; submit with" \
       "'bash training_template.sh CONFIG' or 'sbatch --nodes \$NNODES ...'" >&2
  exit 2
fi
if [ "${COMMAND[0]}" = train ]; then  # the cookbook's VLM recipes name their data and checkpoints through these
  : "${STORAGE_ROOT:?set STORAGE_ROOT (Arrow datasets) in the environment or .env}"
  : "${MODEL_ROOT:?set MODEL_ROOT (checkpoints) in the environment or .env}"
fi
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
RDZV_PORT=${RDZV_PORT:-29500}
EDF=${EDF:-$HOME/.edf/multimeditron.toml}   # container environment file (cookbook/assets/edf.toml)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
mkdir -p "$LOG_DIR"
# sed reads the whole list: `head -n 1` would close the pipe early and, under pipefail, SIGPIPE kills the job.
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)

# The command travels into `bash -c` quoted word by word, so arguments with spaces or braces survive.
QUOTED_COMMAND=$(printf '%q ' "${COMMAND[@]}")
echo "nodes: $SLURM_NNODES, head: $HEAD_NODE:$RDZV_PORT, gpus per node: $GPUS_PER_NODE, command: ${COMMAND[*]}"
srun --environment "$EDF" bash -c "torchrun \
  --nproc-per-node $GPUS_PER_NODE \
  --nnodes $SLURM_NNODES \
  --node-rank \$SLURM_PROCID \
  --rdzv-backend c10d \
  --rdzv-endpoint $HEAD_NODE:$RDZV_PORT \
  --rdzv-id $SLURM_JOB_ID \
  --max-restarts 0 \
  --tee 3 \
  -m multimeditron $QUOTED_COMMAND"
