#!/bin/bash
# Multi-node training without SLURM or ssh: run this same command on every node (by hand, or from any scheduler),
# each with its own NODE_RANK; torchrun starts GPUS_PER_NODE ranks per node and they meet at MASTER_ADDR:MASTER_PORT.
#
#   node 0:  NNODES=2 NODE_RANK=0 GPUS_PER_NODE=4 MASTER_ADDR=node0.example launch/multinode_torchrun.sh --config my.yaml
#   node 1:  NNODES=2 NODE_RANK=1 GPUS_PER_NODE=4 MASTER_ADDR=node0.example launch/multinode_torchrun.sh --config my.yaml
#
# Requirements: the repository and virtualenv on every node, --output_dir on a filesystem every node sees,
# MASTER_ADDR (node 0) reachable from all nodes on MASTER_PORT, NNODES x GPUS_PER_NODE = 1, 2, 4 or 8.
#
# Static rendezvous (--node_rank, --master_addr): node 0 hosts the store, rank numbering is fixed, no restarts.
# torchrun's elastic restarts (--max_restarts) would restart a failed group from scratch in the same process tree;
# here a failure ends the run and you rerun the command, which resumes from the newest complete checkpoint.
#
# Failure handling: a rank that exits non-zero makes its torchrun stop the node's other ranks (SIGTERM, then SIGKILL)
# and exit non-zero naming the failed rank ("Root Cause ... rank: R ... exitcode: ..."); ranks on the other nodes see
# their peers' sockets close and exit within seconds. SIGTERM to a torchrun is forwarded to its ranks, which finish
# the current step, save a checkpoint together with every other rank and exit 75 (torchrun itself then exits 1).
set -euo pipefail

: "${NNODES:?set NNODES (number of nodes)}"
: "${NODE_RANK:?set NODE_RANK (0 on the node at MASTER_ADDR, then 1, 2, ...)}"
: "${MASTER_ADDR:?set MASTER_ADDR (hostname or IP of node 0, reachable from every node)}"
GPUS_PER_NODE="${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}"
MASTER_PORT="${MASTER_PORT:-29500}"

WORLD_SIZE=$((NNODES * GPUS_PER_NODE))
case "$WORLD_SIZE" in
    1|2|4|8) ;;
    *) echo "error: $NNODES node(s) x $GPUS_PER_NODE GPU(s) = $WORLD_SIZE ranks; the global batch of 8 needs 1, 2," \
            "4 or 8 ranks in all (set NNODES/GPUS_PER_NODE)" >&2
       exit 2;;
esac

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
# A dead peer must raise on every rank instead of leaving NCCL waiting.
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"

set -x
exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --max_restarts 0 \
    -m xlsr_dist.train --resume_from_checkpoint latest "$@"
