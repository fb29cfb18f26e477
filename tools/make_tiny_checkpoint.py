#!/usr/bin/env python
"""Make the tiny random-init Qwen2.5-VL checkpoint (HF directory) with a byte-level BPE trained on a dataset's text.

    python tools/make_tiny_checkpoint.py --data data/videoqa --out runs/tiny/tiny_init [--vocab 2048] [--seed 0]

The same as `dvr1 make-tiny -c CONFIG` (which also builds the dataset first); see dvr1/models/tiny.py.
"""

import argparse
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset root with train.jsonl / val.jsonl (dvr1 data)")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab", type=int, default=2048, help="tokenizer vocabulary size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--untied", action="store_true", help="separate output layer (as 7B+), default tied (as 3B)")
    a = p.parse_args(argv)
    from dvr1.data.prompts import format_question, sft_response
    from dvr1.data.schema import read_records
    from dvr1.models.tiny import make_tiny_checkpoint

    texts = []
    for split in ("train", "val"):
        path = os.path.join(a.data, f"{split}.jsonl")
        if os.path.exists(path):
            for r in read_records(path):
                texts += [format_question(r), sft_response(r)]
    if not texts:
        print(f"{a.data}: no train.jsonl/val.jsonl records to train the tokenizer on", file=sys.stderr)
        return 2
    print(make_tiny_checkpoint(a.out, texts, seed=a.seed, vocab_size=a.vocab, tie_word_embeddings=not a.untied))
    return 0


if __name__ == "__main__":
    sys.exit(main())
