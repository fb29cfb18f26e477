"""Tokenizer and chat format for the Qwen2.5-VL-style policy.

The embedded tiny checkpoint uses a byte-level BPE trained locally with the `tokenizers` library on the dataset's
text (no hub access). Its special tokens are Qwen2.5-VL's, so the same prompt code serves real Qwen2.5-VL
checkpoints (whose tokenizer ships these tokens too).

Chat format (Qwen2.5-VL, one video per user turn)::

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<|vision_start|><|video_pad|>*N<|vision_end|>{text}<|im_end|>\\n<|im_start|>assistant\\n

N = prod(video_grid_thw) // spatial_merge_size**2 video tokens (filled by the vision tower's output).
The assistant's response ends with ``<|im_end|>``, the end-of-sequence token for generation.
"""

from __future__ import annotations

import os
from typing import Iterable

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Plain (non-special) added tokens: the reasoning/answer tags decode back to text and are single tokens, which
# helps a tiny model learn the format (ALGORITHMS §6).
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
SYSTEM_PROMPT = "You are a helpful assistant."

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | None = None):
    """Train a byte-level BPE on `texts` and return a `transformers.PreTrainedTokenizerFast`.

    Args:
        texts: training corpus (questions, options, SFT responses).
        vocab_size: target size including special and tag tokens.
        out_dir: if given, `save_pretrained` there (tokenizer.json, tokenizer_config.json).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    # non-special: they survive `decode(..., skip_special_tokens=True)` like any text
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAG_TOKENS])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:],
    )
    hf.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        hf.save_pretrained(out_dir)
    return hf


def chat_prompt(text: str, num_video_tokens: int, system: str = SYSTEM_PROMPT) -> str:
    """The Qwen2.5-VL chat string for one user turn with one video, ending at the assistant header.

    Args:
        text: the user's question (already formatted, see `dvr1.data.prompts.format_question`).
        num_video_tokens: how many `<|video_pad|>` placeholders (= prod(grid_thw) // merge_size**2); 0 = no video.
    """
    video = f"<|vision_start|>{'<|video_pad|>' * num_video_tokens}<|vision_end|>" if num_video_tokens else ""
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\n{video}{text}<|im_end|>\n<|im_start|>assistant\n"
    )


def decode_response(tokenizer, token_ids: list[int], stop_token_ids=()) -> str:
    """Response text: the ids without a trailing stop token, decoded WITHOUT dropping special tokens (a sampled
    `<|video_pad|>` stays visible, so the format reward sees exactly what the policy wrote)."""
    ids = list(token_ids)
    if ids and ids[-1] in stop_token_ids:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False)


def special_ids(tokenizer) -> dict[str, int]:
    """Ids of the tokens the model code needs: eos (<|im_end|>), pad, video, vision_start/end, image."""
    conv = tokenizer.convert_tokens_to_ids
    return {
        "eos": conv("<|im_end|>"),
        "pad": conv("<|endoftext|>"),
        "video": conv("<|video_pad|>"),
        "image": conv("<|image_pad|>"),
        "vision_start": conv("<|vision_start|>"),
        "vision_end": conv("<|vision_end|>"),
    }
