"""dvr1: Megatron-style RL post-training of video LLMs (DeepVideo-R1 Reg-GRPO + DA-Aug, VidChain M-DPO)."""

__version__ = "0.1.0"
