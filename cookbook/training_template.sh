#!/bin/bash
# Multi-node training on a Slurm cluster: one task per node, each running torchrun over the node's GPUs with a c10d
# rendezvous on the head node. Usage: sbatch cookbook/training_template.sh cookbook/sft/.../stage1_alignment.yaml
#SBATCH --job-name=multimeditron
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=288
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --account=YOUR_ACCOUNT
set -euo pipefail

CONFIG=${1:?usage: sbatch training_template.sh CONFIG.yaml}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
RDZV_PORT=${RDZV_PORT:-29500}
EDF=${EDF:-$HOME/.edf/multimeditron.toml}   # container environment file (see edf.toml)
# sed reads the whole list: `head -n 1` would close the pipe early and, under pipefail, SIGPIPE kills the job.
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)

# Configs use $STORAGE_ROOT, $MODEL_ROOT (and optionally $WORKING_DIR); the config loader substitutes them itself.
if [ -f "${WORKING_DIR:-.}/.env" ]; then set -a; source "${WORKING_DIR:-.}/.env"; set +a; fi
: "${STORAGE_ROOT:?set STORAGE_ROOT (Arrow datasets) in the environment or .env}"
: "${MODEL_ROOT:?set MODEL_ROOT (checkpoints) in the environment or .env}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

echo "nodes: $SLURM_NNODES, head: $HEAD_NODE:$RDZV_PORT, gpus per node: $GPUS_PER_NODE, config: $CONFIG"
srun --environment "$EDF" bash -c "torchrun \
  --nproc-per-node $GPUS_PER_NODE \
  --nnodes $SLURM_NNODES \
  --node-rank \$SLURM_PROCID \
  --rdzv-backend c10d \
  --rdzv-endpoint $HEAD_NODE:$RDZV_PORT \
  --rdzv-id $SLURM_JOB_ID \
  --max-restarts 0 \
  --tee 3 \
  -m multimeditron train --config $CONFIG"
