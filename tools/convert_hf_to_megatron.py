"""Hugging Face Qwen2.5-VL checkpoint -> megatron-core distributed checkpoint for a chosen TP/PP (one process).

Usage:
  python tools/convert_hf_to_megatron.py HF_DIR OUT_DIR [--tp 8 --pp 2 --dtype auto|bf16|fp32|fp16 --no-progress]
  python tools/convert_hf_to_megatron.py --param-table    # 3B/7B/32B/72B parameter counts, megatron-core vs HF

OUT_DIR gets config/tokenizer/processor files, visual.safetensors and ckpt/step_0/dist (see dvr1/models/convert.py);
train from it at any TP/PP with dvr1.models.convert.load_megatron_checkpoint (dist_checkpointing reshards).
Same as `dvr1 convert hf-to-megatron ...`.
"""

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from dvr1.models.convert import main, main_hf_to_megatron

    argv = sys.argv[1:]
    sys.exit(main(["param-table"]) if argv == ["--param-table"] else main_hf_to_megatron(argv))
