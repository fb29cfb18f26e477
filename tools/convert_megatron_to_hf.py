"""megatron-core distributed checkpoint (converted, or saved by training at any TP/PP) -> Hugging Face Qwen2.5-VL.

Usage:
  python tools/convert_megatron_to_hf.py SRC OUT_DIR [--hf-dir HF_DIR --step N --max-shard-size 5GB --dtype auto]

SRC: a directory made by tools/convert_hf_to_megatron.py, a training stage directory (<run_dir>/rl, with
ckpt/latest; pass --hf-dir = the HF checkpoint the run started from, for config/tokenizer/vision tower), or a
dist directory. OUT_DIR: model-0000i-of-0000N.safetensors + model.safetensors.index.json + config, tokenizer and
processor files (transformers and vLLM load it). Same as `dvr1 convert megatron-to-hf ...`.
"""

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from dvr1.models.convert import main_megatron_to_hf

    sys.exit(main_megatron_to_hf(sys.argv[1:]))
