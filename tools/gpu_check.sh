#!/usr/bin/env bash
# One-GPU check of a dvr1 install (H100/H200, after building the image; < 8 minutes). Prints a table of:
# CUDA vs CPU policy forward/backward, fused vs naive log-probs at vocab 151,936, one RL step of a 2-layer
# Qwen2.5-VL-7B-shaped policy, and, where installed, TE FP8 vs BF16, DALI mixed vs CPU decoding and the colocated
# vLLM refit vs the native sampler (each skipped with its reason otherwise).
# Without a GPU every GPU row reports "no GPU" (CI runs it so). Needs only torch, transformers, megatron-core:
# it runs from this source tree (PYTHONPATH), no pip install.
#   tools/gpu_check.sh [--cpu-smoke] [--rows env,policy,logprobs,rl_step,te_fp8,dali,vllm] [--json OUT.json]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON:-python3}" "${repo}/tools/gpu_check.py" "$@"
