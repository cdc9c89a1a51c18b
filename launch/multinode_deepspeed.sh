#!/bin/bash
# Multi-node training without SLURM through DeepSpeed's launcher and a hostfile (see launch/hostfile.example), from
# the repository root. Two ways:
#
#   ssh mode (default): run once, on the first host of the hostfile; DeepSpeed starts every node's ranks over ssh:
#     HOSTFILE=launch/hostfile launch/multinode_deepspeed.sh --config my.yaml --output_dir /shared/run1
#   no-ssh mode: run the same command on every node (by hand or from any scheduler), each with its NODE_RANK (the
#   line number of its host in the hostfile, from 0):
#     HOSTFILE=launch/hostfile NODE_RANK=1 launch/multinode_deepspeed.sh --config my.yaml --output_dir /shared/run1
#
# Requirements, checked by nothing but your cluster:
#   - ssh mode: passwordless ssh from this node to every host (itself included; DeepSpeed checks it even for one
#     host), and `pdsh` on this node (or LAUNCHER=openmpi with OpenMPI's mpirun);
#   - the same repository path and virtualenv on every node (a shared filesystem, or identical copies);
#   - --output_dir on a filesystem every node sees: each rank writes its own optimizer partition into the
#     checkpoint, and a checkpoint only counts once rank 0 has marked it complete;
#   - nodes x slots = 1, 2, 4 or 8 (xlsr_dist refuses other rank counts before any work starts).
# Environment: DeepSpeed forwards variables starting with MLFLOW_, PYTHON and (on GPUs) NCCL_ to the other nodes;
# the names in DS_FORWARD_ENV are forwarded too (through a temporary DS_ENV_FILE, DeepSpeed's NAME=value list).
# In ssh mode it forwards them as `export NAME=value;` on the pdsh/mpirun command line, which every node's `ps` and
# this launcher's log show, so this script refuses to start while a forwarded variable holds a secret
# (MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN, a user:password@ URI, any *TOKEN*/*PASSWORD*/*SECRET* name).
# Credentials for multi-node runs go where MLflow reads them without the environment, on every node (chmod 600):
#   ~/.mlflow/credentials:   [mlflow]
#                            mlflow_tracking_username = alice
#                            mlflow_tracking_password = ...
# MLflow has no file for a token: with MLFLOW_TRACKING_TOKEN use no-ssh mode or launch/multinode_torchrun.sh, whose
# ranks inherit this shell's environment and put nothing on a command line.
#
# Failure handling: when any rank exits non-zero, the launcher on its node terminates that node's other ranks, the
# remaining nodes' ranks see their peers' sockets close and exit within seconds (xlsr_dist logs "a collective failed,
# a peer rank probably died"), and pdsh returns non-zero. SIGTERM/SIGINT to this launcher reach every rank (SIGTERM,
# SIGKILL 30 s later): ranks that finish their step and the checkpoint within those 30 s save it; then rerun this
# same command, it resumes from the newest complete checkpoint (--resume_from_checkpoint latest is passed below).
# Unlike slurm/train.sbatch nothing requeues automatically: the launcher's exit status is 1, not the ranks' 75.
set -euo pipefail

HOSTFILE="${HOSTFILE:-launch/hostfile}"
LAUNCHER="${LAUNCHER:-pdsh}"
MASTER_PORT="${MASTER_PORT:-29500}"
[ -f "$HOSTFILE" ] || { echo "error: HOSTFILE=$HOSTFILE not found (copy launch/hostfile.example)" >&2; exit 2; }
# Rank 0 runs on the first host listed; all nodes must reach it by this name.
MASTER_ADDR="${MASTER_ADDR:-$(awk '!/^[[:space:]]*(#|$)/ {print $1; exit}' "$HOSTFILE")}"

# The ranks are counted here too, so a wrong hostfile fails in a second with a message instead of after ssh.
WORLD_SIZE=$(awk '!/^[[:space:]]*(#|$)/ { for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { split($i, a, "="); n += a[2] } }
                  END { print n + 0 }' "$HOSTFILE")
case "$WORLD_SIZE" in
    1|2|4|8) ;;
    *) echo "error: $HOSTFILE has $WORLD_SIZE slots in all; the global batch of 8 needs 1, 2, 4 or 8 ranks" >&2
       exit 2;;
esac

DS_FORWARD_ENV="${DS_FORWARD_ENV:-OMP_NUM_THREADS TORCH_NCCL_ASYNC_ERROR_HANDLING HF_HOME HF_HUB_OFFLINE}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
# A dead peer must raise on every rank instead of leaving NCCL waiting.
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
DS_ENV_FILE="$(mktemp "${TMPDIR:-/tmp}/xlsr_deepspeed_env.XXXXXX")"
export DS_ENV_FILE   # an absolute path: DeepSpeed joins it to its search dirs, which keeps it as it is
trap 'rm -f "$DS_ENV_FILE"' EXIT
for name in $DS_FORWARD_ENV; do
    if [ -n "${!name:-}" ]; then echo "$name=${!name}" >> "$DS_ENV_FILE"; fi
done

MODE=(--launcher "$LAUNCHER")
[ -n "${NODE_RANK:-}" ] && MODE=(--no_ssh --node_rank "$NODE_RANK")

# What DeepSpeed's runner forwards in ssh mode (deepspeed/launcher/runner.py: EXPORT_ENVS, the accelerator's
# export_envs, the DS_ENV_FILE list): none of it may hold a secret. Names only in messages, never values.
refuse_forwarded_secret() {
    local name="$1" why="$2"
    echo "error: $name $why, and in ssh mode DeepSpeed puts every forwarded variable on the pdsh/mpirun command" \
         "line (\`ps\` on every node) and into this launcher's log. Unset it and give the ranks credentials without" \
         "the environment: ~/.mlflow/credentials on every node (chmod 600; a [mlflow] section with" \
         "mlflow_tracking_username = ... and mlflow_tracking_password = ..., which MLflow reads when" \
         "MLFLOW_TRACKING_USERNAME/PASSWORD are unset), and MLFLOW_TRACKING_URI without user:password@. A token" \
         "(MLFLOW_TRACKING_TOKEN) has no file form in MLflow: run without ssh (NODE_RANK=i on every node) or with" \
         "launch/multinode_torchrun.sh, where the ranks inherit the environment instead." >&2
    exit 2
}
if [ -z "${NODE_RANK:-}" ]; then
    for name in $(compgen -e | grep -E '^(MLFLOW|PYTHON|MV2|UCX|NCCL)') $DS_FORWARD_ENV; do
        value="${!name:-}"
        [ -n "$value" ] || continue
        # TOKENIZERS_PARALLELISM (Hugging Face tokenizers) names no token; any other *TOKEN* name may hold one.
        upper="${name^^}"
        if [[ ${upper//TOKENIZER/} =~ PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY ]]; then
            refuse_forwarded_secret "$name" "is set"
        elif [[ $value =~ ://[^/@:]+:[^/@]+@ ]]; then
            refuse_forwarded_secret "$name" "holds a URL with a password (user:password@)"
        fi
    done
fi

set -x
deepspeed --hostfile "$HOSTFILE" "${MODE[@]}" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    --module xlsr_dist.train --resume_from_checkpoint latest "$@"
