#!/usr/bin/env bash
# Per-node launcher: runs one torchrun per node with the rendezvous taken from Slurm's environment.
# Started by the sbatch scripts through `srun --ntasks-per-node=1` (one task per node); each task execs
#
#   torchrun --nnodes=$SLURM_NNODES --nproc-per-node=$GPUS_PER_NODE --node-rank=$SLURM_NODEID \
#            --master-addr=<first host of $SLURM_JOB_NODELIST> --master-port=$MASTER_PORT \
#            -m dvr1.cli COMMAND -c CONFIG [--option VALUE ...] run_dir=$RUN_DIR [key=value ...]
#
# Usage: launch.sh [--dry-run] COMMAND CONFIG [--option VALUE ...] [key=value ...]   (COMMAND: main | train | ...)
#   e.g. launch.sh train examples/qwen2_5_vl_72b.yaml --init /shared/models/Qwen2.5-VL-72B-Instruct rl.steps=500
#   --dry-run  print the exact torchrun command of every node of the allocation (one line each, "# node I (HOST)"
#              above it) and exit; needs only the SLURM_* variables and `scontrol`, so it runs on a login node or
#              with a fake environment.
# Environment:
#   SLURM_JOB_NODELIST, SLURM_NNODES, SLURM_NODEID, SLURM_JOB_ID   set by Slurm (SLURM_NODEID unused by --dry-run)
#   GPUS_PER_NODE   processes per node (default: $SLURM_GPUS_ON_NODE, else 8)
#   MASTER_PORT     rendezvous port on the first node (default: 20000 + SLURM_JOB_ID % 10000)
#   RUN_DIR         run directory: checkpoints, metrics, logs; keep it fixed across resubmissions to resume
#   DVR1_EXTRA      extra key=value overrides appended after the command line ones (space-separated)
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
    dry_run=1
    shift
fi
if [[ $# -lt 2 ]]; then
    echo "usage: $0 [--dry-run] COMMAND CONFIG [key=value ...]" >&2
    exit 2
fi
command_name=$1
config=$2
shift 2

for var in SLURM_JOB_NODELIST SLURM_NNODES SLURM_JOB_ID; do
    if [[ -z "${!var:-}" ]]; then
        echo "$0: $var is not set (run inside a Slurm allocation, or export a fake one for --dry-run)" >&2
        exit 2
    fi
done
if [[ ! -f "$config" ]]; then
    echo "$0: config file not found: $config" >&2
    exit 2
fi

mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
if [[ ${#hosts[@]} -ne $SLURM_NNODES ]]; then
    echo "$0: SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST expands to ${#hosts[@]} hosts, SLURM_NNODES=$SLURM_NNODES" >&2
    exit 2
fi
# (pipefail off inside: `head` closing the pipe early must not fail the script)
master_addr=$(set +o pipefail; scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | head -n1)
master_port=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 10000))}
gpus_per_node=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
run_dir=${RUN_DIR:-runs/slurm-$SLURM_JOB_ID}

# Subcommand options (--init PATH, --init=PATH, --model PATH ...) go before the key=value overrides: dvr1's
# argparse does not accept an option after the first override.
options=()
overrides=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --*=*) options+=("$1"); shift ;;
        --*)
            if [[ $# -lt 2 ]]; then
                echo "$0: option $1 needs a value" >&2
                exit 2
            fi
            options+=("$1" "$2"); shift 2 ;;
        *) overrides+=("$1"); shift ;;
    esac
done
if [[ -n "${DVR1_EXTRA:-}" ]]; then
    read -r -a extra <<< "$DVR1_EXTRA"
    overrides+=("${extra[@]}")
fi

torchrun_cmd() {  # $1 = node rank
    local cmd=(torchrun
        "--nnodes=$SLURM_NNODES"
        "--nproc-per-node=$gpus_per_node"
        "--node-rank=$1"
        "--master-addr=$master_addr"
        "--master-port=$master_port"
        -m dvr1.cli "$command_name" -c "$config")
    if [[ ${#options[@]} -gt 0 ]]; then
        cmd+=("${options[@]}")
    fi
    cmd+=("run_dir=$run_dir")
    if [[ ${#overrides[@]} -gt 0 ]]; then
        cmd+=("${overrides[@]}")
    fi
    printf '%q ' "${cmd[@]}"
}

if [[ $dry_run -eq 1 ]]; then
    for ((i = 0; i < SLURM_NNODES; i++)); do
        echo "# node $i (${hosts[$i]})"
        line=$(torchrun_cmd "$i")
        echo "${line% }"
    done
    exit 0
fi

node_rank=${SLURM_NODEID:?SLURM_NODEID is not set (launch.sh runs as one srun task per node)}
mkdir -p "$run_dir/logs"
line=$(torchrun_cmd "$node_rank")
echo "[launch.sh] $(date -Is) node $node_rank/${SLURM_NNODES} ($(hostname)): ${line% }"
# One process per GPU; CUDA_DEVICE_MAX_CONNECTIONS=1 keeps megatron-core's TP/SP communication ordered with compute.
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export WANDB_MODE=${WANDB_MODE:-offline}
export WANDB_DIR=${WANDB_DIR:-$run_dir}
eval "exec ${line}"
