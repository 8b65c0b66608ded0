#!/bin/bash
# Multi-node training with torchrun (no scheduler): run this same script on every node.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash scripts/train_multinode_torchrun.sh   # node 0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 bash scripts/train_multinode_torchrun.sh   # node 1
# torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; Lightning picks them up (TorchElasticEnvironment).
set -euo pipefail
NNODES=${NNODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to node 0 hostname}
MASTER_PORT=${MASTER_PORT:-29500}
export S3OD_DATA_DIR=${S3OD_DATA_DIR:?set S3OD_DATA_DIR}

torchrun --nnodes="$NNODES" --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id=s3od \
    -m synth_sod.model_training.train \
    dataset=synth model=dinob backend=8gpu \
    backend.devices="$GPUS_PER_NODE" backend.num_nodes="$NNODES" \
    train_stage.progress_bar=false \
    "$@"
