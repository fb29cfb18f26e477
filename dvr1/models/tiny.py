"""A tiny Qwen2.5-VL checkpoint made locally (random init + a locally trained tokenizer); no hub access.

It is a real Hugging Face `Qwen2_5_VLForConditionalGeneration` directory (config.json, model.safetensors,
tokenizer files), so every loader in dvr1 reads it exactly as it reads Qwen2.5-VL-3B..72B.
Text head_dim is 32 (vLLM's CPU attention accepts it); mrope_section sums to head_dim/2 as transformers requires.
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterable

from dvr1.data.schema import LETTERS
from dvr1.models.tokenizer import special_ids, train_tokenizer

TINY_TEXT = dict(
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    max_position_embeddings=4096,
    rope_theta=1_000_000.0,
    mrope_section=[4, 6, 6],
)
# the vision warm-up's count head: 1..MAX_COUNT objects of a token's class in its frame (more are MAX_COUNT)
MAX_COUNT = 8

TINY_VISION = dict(
    depth=2,
    hidden_size=64,
    intermediate_size=128,
    num_heads=2,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=56,
    fullatt_block_indexes=[1],
    tokens_per_second=2,
)


def reading_text(options: list[str], order: list[int]) -> tuple[str, str]:
    """One reading-warm-up sample: (prompt, target) = (``"A. {options[0]}\nB. {options[1]}\n...\n"``,
    ``"{options[i]} is option {letter}. ..."`` for ``i`` in ``order``). The option list is written as
    `dvr1.data.prompts.format_question` writes it; the target maps each stated value back to its letter."""
    prompt = "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(options))
    return prompt, " ".join(f"{options[i]} is option {LETTERS[i]}." for i in order)


def _clipped_step(opt, params, loss) -> float:
    """One optimizer step of the warm-ups: backward, grad-norm clip 1.0, step; returns the loss."""
    import torch

    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.detach().item()


def _lm_params(model) -> list:
    """The language model's parameters: all of the model's but the vision tower's + merger's, in model order."""
    visual = {id(p) for p in model.model.visual.parameters()}
    return [p for p in model.parameters() if id(p) not in visual]


def _lm_optimizer(model, lr: float):
    """The text warm-ups' optimizer: AdamW (betas 0.9/0.95, no weight decay) on the language model's parameters
    only (the vision tower's are left out); returns ``(params, optimizer)``."""
    import torch

    params = _lm_params(model)
    return params, torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)


def _linear_warmup(opt, lr: float, step: int, warmup: int) -> None:
    """Set every param group's LR for 0-based `step`: linear from ``lr / warmup`` to `lr` over `warmup` steps, then
    constant (the text warm-ups' schedule)."""
    for g in opt.param_groups:
        g["lr"] = lr * min(1.0, (step + 1) / max(1, warmup))


def _warmup_cosine(step: int, steps: int, warmup: int) -> tuple[float, float]:
    """The tower warm-up's and caption drill's LR factors for 0-based `step` of `steps`: (linear warmup over
    `warmup` steps, then 1; cosine from 1 to 0.05 over the run)."""
    import math

    return min(1.0, (step + 1) / max(1, warmup)), 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps))


def copy_warmup(model, tokenizer, steps: int, batch_size: int = 32, lr: float = 1e-3, warmup: int = 30,
                seed: int = 0, progress: bool = True, on_step=None) -> dict:
    """Text-only induction warm-up of the tiny checkpoint's language model, before :func:`reading_warmup`: each
    sample is ``prefix + x + filler + x`` with ``x`` 6-39 random ordinary tokens and random prefix (0-19) and filler
    (0-29) lengths, and the loss is next-token NLL on the repeat of ``x`` after its first token. The repeat sits at a
    different distance in every batch, so only copying by content (an induction head: find the earlier occurrence of
    the current token, emit the one after it) lowers it; a fixed distance would be learned by position alone in
    ~150 steps and teach nothing about lookups. The tiny LM shows the usual phase change: near chance (ln of the
    token pool) for ~1,400 steps, then > 0.9 copy accuracy within ~100 more (lr 1e-3; docs/SEEING_POLICY.md; on
    samples of half this length, at ~1,700, and the head does not reach the answer drill's distances). Without
    it no drill or SFT recipe tried taught the option lookup (a value's letter in the option list): an induction
    head is what a real checkpoint brings from its language pretraining.

    Plain AdamW (betas 0.9/0.95, grad-norm clip 1.0, linear warmup over `warmup` steps, then constant `lr`) on the
    language model's parameters only; the vision tower is not touched. Uses no record, no answer and no video.

    Args:
        model: a `Qwen2_5_VLForConditionalGeneration` (fp32, CPU). tokenizer: its tokenizer (the token pool is
            its ordinary, non-special tokens). steps: optimizer steps (0: nothing is done). batch_size: samples.
        on_step: called with no argument before every step (:func:`make_tiny_checkpoint` changes the thread count
            from it), or None.

    Returns:
        ``{"steps", "first_loss", "loss" (mean over the last 50 steps), "copy_accuracy"}``: the loss is the mean NLL
        per copied token; the accuracy is teacher-forced argmax accuracy on 8 held-out batches after training
        (chance = 1 / the pool size).
    """
    import torch

    if steps <= 0:
        return {"steps": 0}
    special = set(tokenizer.all_special_ids) | {i for t, i in tokenizer.get_vocab().items() if t.startswith("<|")}
    pool = torch.tensor(sorted(i for i in tokenizer.get_vocab().values() if i not in special))
    params, opt = _lm_optimizer(model, lr)

    def batch(g):
        n, pre, gap = (int(torch.randint(a, b, (1,), generator=g)) for a, b in ((6, 40), (0, 20), (0, 30)))
        x = pool[torch.randint(len(pool), (batch_size, n + pre + gap), generator=g)]
        ids = torch.cat([x, x[:, pre:pre + n]], 1)  # prefix, x, filler, x
        return ids, n

    def forward(ids, n):
        logits = model(input_ids=ids).logits[:, -n:-1]  # predicts the repeat's tokens 2..n
        return logits, ids[:, -n + 1:]

    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for step in tqdm(range(steps), desc="copy warm-up", disable=not progress, unit="step"):
        if on_step is not None:
            on_step()
        _linear_warmup(opt, lr, step, warmup)
        logits, target = forward(*batch(gen))
        losses.append(_clipped_step(opt, params, torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                                                                    target.flatten())))
    model.eval()
    g, hits, total = torch.Generator().manual_seed(seed + 1), 0, 0
    with torch.no_grad():
        for _ in range(8):
            logits, target = forward(*batch(g))
            hits, total = hits + int((logits.argmax(-1) == target).sum()), total + target.numel()
    tail = losses[-50:]
    return {"steps": steps, "first_loss": losses[0], "loss": sum(tail) / len(tail), "copy_accuracy": hits / total}


def reading_warmup(model, tokenizer, option_lists: list[list[str]], steps: int, batch_size: int = 32,
                   lr: float = 3e-3, warmup: int = 30, seed: int = 0, progress: bool = True, on_step=None) -> dict:
    """Text-only warm-up of the tiny checkpoint's language model: next-token training on :func:`reading_text`
    samples (each option list with its options stated twice in random order), to teach the LM to find a stated
    value in an option list and copy its letter -- the skill multiple-choice answers need, which every real
    checkpoint brings from its language pretraining. From the random LM it teaches only elimination (each round's
    last letter); the lookup itself is learned only after :func:`copy_warmup` has given the LM an induction head
    (`lookup_accuracy` 0.99 after 1,200 steps at lr 1e-3; about chance without; docs/SEEING_POLICY.md).

    Plain AdamW (betas 0.9/0.95, grad-norm clip 1.0, linear warmup over `warmup` steps, then constant `lr`) on the
    language model's parameters only; the vision tower is not touched. Uses no answers and no video.

    Args:
        model: a `Qwen2_5_VLForConditionalGeneration` (fp32, CPU).
        tokenizer: its tokenizer. option_lists: the training split's option lists (2-26 options each).
        steps: optimizer steps (0: nothing is done). batch_size: samples per step. on_step: as in
            :func:`copy_warmup`.

    Returns:
        ``{"steps", "first_loss" (the first step's mean NLL per target token), "loss" (the same, mean over the last
        50 steps), "letter_accuracy", "lookup_accuracy", "lookup_chance"}``: teacher-forced argmax accuracy of the
        letter tokens on 64 fixed samples drawn from `option_lists` after training -- of all of them, and of the
        first round's statements before its last, with the accuracy elimination alone gives those (statement ``k``
        of ``n``: ``1 / (n - k)``). Each round's last letter is decided by elimination (the option not yet stated),
        so `letter_accuracy` overstates the lookup; `lookup_accuracy` near `lookup_chance` means no lookup was
        learned (docs/SEEING_POLICY.md).

    Raises:
        ValueError: ``steps > 0`` with no option list.
    """
    import torch

    if steps <= 0:
        return {"steps": 0}
    if not option_lists:
        raise ValueError("reading_warmup: no multiple-choice record to build the warm-up from")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    gen = torch.Generator().manual_seed(seed)
    params, opt = _lm_optimizer(model, lr)

    def batch(lists, g):
        rows = []
        for opts in lists:
            order = torch.randperm(len(opts), generator=g).tolist() + torch.randperm(len(opts), generator=g).tolist()
            prompt, target = reading_text(opts, order)
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            enc = tokenizer(target, add_special_tokens=False, return_offsets_mapping=True)
            spans = [m.span(1) for m in re.finditer(r" is option ([A-Z])\.", target)]
            letter = [any(a < e and b > s for s, e in spans) for a, b in enc["offset_mapping"]]
            rows.append((p, enc["input_ids"], letter))
        n = max(len(p) + len(t) for p, t, _ in rows)
        ids = torch.full((len(rows), n), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        scored = torch.zeros(len(rows), n, dtype=torch.bool)
        letters = torch.zeros(len(rows), n, dtype=torch.bool)
        for i, (p, t, letter) in enumerate(rows):
            ids[i, :len(p) + len(t)] = torch.tensor(p + t)
            mask[i, :len(p) + len(t)] = 1
            scored[i, len(p):len(p) + len(t)] = True
            letters[i, len(p):len(p) + len(t)] = torch.tensor(letter)
        return ids, mask, scored[:, 1:], letters[:, 1:]

    from tqdm import tqdm

    losses = []
    model.train()
    for step in tqdm(range(steps), desc="reading warm-up", disable=not progress, unit="step"):
        if on_step is not None:
            on_step()
        _linear_warmup(opt, lr, step, warmup)
        idx = torch.randint(len(option_lists), (batch_size,), generator=gen).tolist()
        ids, mask, scored, _ = batch([option_lists[i] for i in idx], gen)
        logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].log_softmax(-1)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
        losses.append(_clipped_step(opt, params, nll[scored].mean()))
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(len(option_lists), (64,), generator=g).tolist()
    ids, mask, _, letters = batch([option_lists[i] for i in idx], g)
    with torch.no_grad():
        hit = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1) == ids[:, 1:]
    # the first round's statements before its last: elimination narrows them (chance 1/(n-k) for statement k) but
    # does not decide them, as it decides each round's last letter; only these measure the lookup itself
    looked, chance = [], []
    for i, j in enumerate(idx):
        n = len(option_lists[j])
        looked += hit[i][letters[i]][:n - 1].tolist()
        chance += [1.0 / (n - k) for k in range(n - 1)]
    tail = losses[-50:]
    return {"steps": steps, "first_loss": losses[0], "loss": sum(tail) / len(tail),
            "letter_accuracy": float(hit[letters].float().mean()),
            "lookup_accuracy": sum(looked) / len(looked), "lookup_chance": sum(chance) / len(chance)}


def answer_drill(model, tokenizer, samples: list[tuple[str, str, str]], steps: int, batch_size: int = 16,
                 lr: float = 1e-3, warmup: int = 30, seed: int = 0, progress: bool = True, on_step=None) -> dict:
    """Text-only option lookup in the SFT answer's own form, after :func:`copy_warmup` and :func:`reading_warmup`:
    each sample (`dvr1.data.prompts.lookup_drill_texts`) is the chat prompt of a question (no video), an SFT
    response whose reasoning states one of its options, and ``<answer>``; the loss is the NLL of that option's
    letter only. The drill's lookup ("up is option B.") does not survive SFT by itself (docs/SEEING_POLICY.md: the
    letters followed the stated value on 31 of 82 answers); drilled in the answer's form they followed on 72 of 86.

    Plain AdamW (betas 0.9/0.95, grad-norm clip 1.0, linear warmup over `warmup` steps, then constant `lr`) on the
    language model's parameters only; the vision tower is not touched.

    Args:
        model: a `Qwen2_5_VLForConditionalGeneration` (fp32, CPU). tokenizer: its tokenizer.
        samples: ``(question, response_prefix, letter)`` triples. steps: optimizer steps (0: nothing is done).
        on_step: as in :func:`copy_warmup`.

    Returns:
        ``{"steps", "first_loss", "loss" (mean of the last 50 steps), "letter_accuracy" (argmax accuracy of the
        letter over the last 50 steps' batches, chance = 1 / number of options)}``.

    Raises:
        ValueError: ``steps > 0`` with no sample.
    """
    import torch

    from dvr1.models.tokenizer import chat_prompt

    if steps <= 0:
        return {"steps": 0}
    if not samples:
        raise ValueError("answer_drill: no multiple-choice record whose SFT reasoning states its answer's value")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    gen = torch.Generator().manual_seed(seed)
    params, opt = _lm_optimizer(model, lr)

    def encode(question, prefix, letter):
        ids = tokenizer(chat_prompt(question, 0) + prefix, add_special_tokens=False)["input_ids"]
        return ids, tokenizer(letter, add_special_tokens=False)["input_ids"][0]

    encoded = [encode(*x) for x in samples]

    from tqdm import tqdm

    losses, hits = [], []
    model.train()
    for step in tqdm(range(steps), desc="answer drill", disable=not progress, unit="step"):
        if on_step is not None:
            on_step()
        _linear_warmup(opt, lr, step, warmup)
        rows = [encoded[i] for i in torch.randint(len(encoded), (batch_size,), generator=gen).tolist()]
        n = max(len(x) for x, _ in rows)
        ids = torch.full((len(rows), n), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for i, (x, _) in enumerate(rows):
            ids[i, :len(x)], mask[i, :len(x)] = torch.tensor(x), 1
        last = torch.tensor([len(x) - 1 for x, _ in rows])
        logits = model(input_ids=ids, attention_mask=mask).logits[torch.arange(len(rows)), last]
        target = torch.tensor([t for _, t in rows])
        hits.append(float((logits.argmax(-1) == target).float().mean()))
        losses.append(_clipped_step(opt, params, torch.nn.functional.cross_entropy(logits, target)))
    model.eval()
    tail = slice(-50, None)
    return {"steps": steps, "first_loss": losses[0], "loss": sum(losses[tail]) / len(losses[tail]),
            "letter_accuracy": sum(hits[tail]) / len(hits[tail])}


def vision_warmup(model, sample, steps: int, batch_size: int = 8, lr: float = 2e-3, warmup: int = 30,
                  seed: int = 0, progress: bool = True, position: int = 0) -> dict:
    """Perception warm-up of the tiny checkpoint's vision tower + merger: per-token supervision on rendered clips
    (`sample`, e.g. :func:`dvr1.data.perception.perception_sample`), through a linear head on the merged video
    tokens (the embeddings the language model reads) that is thrown away afterwards. Each token learns which
    (colour, shape) objects sit in it (binary cross-entropy per class) and, where it holds one object, which way that
    object moves (cross-entropy over 4 directions) -- the stand-in for a real checkpoint's pretrained tower, as
    :func:`reading_warmup` is for its language model (docs/SEEING_POLICY.md). The language model is not touched.

    Plain AdamW (betas 0.9/0.95, grad-norm clip 1.0, linear warmup over `warmup` steps, then cosine to 5 % of `lr`).

    Args:
        model: a `Qwen2_5_VLForConditionalGeneration` (fp32, CPU).
        sample: ``rng -> (pixel_values_videos [N, 1176], video_grid_thw [3], presence float [n_tokens, C],
            direction int64 [n_tokens], -1 = no label)`` with ``rng`` a `numpy.random.Generator`; a fifth item,
            ``count`` int64 ``[n_tokens]`` (-1 = no label; :func:`dvr1.data.perception.token_labels` with
            ``counts``), adds a count head: cross-entropy over 1..:data:`MAX_COUNT` objects of the token's class in
            its frame, on the tokens with a direction label.
        steps: optimizer steps (0: nothing is done). batch_size: clips per step. position: the progress bar's line
            (1 when it runs beside the language model's warm-ups, :func:`make_tiny_checkpoint`).

    Returns:
        ``{"steps", "first_loss", "loss" (mean of the last 50 steps), "presence_accuracy", "direction_accuracy",
        ["count_accuracy",] "video_embedding_norm"}``: the accuracies on 32 held-out clips after training -- the
        predicted set of classes equals the true one on tokens that hold an object, the argmax direction (chance
        0.25) and count on tokens with a direction label -- and the mean L2 norm of their merged tokens.
    """
    import math

    import numpy as np
    import torch

    if steps <= 0:
        return {"steps": 0}
    visual = model.model.visual
    rng = np.random.default_rng(seed)

    def batch(r, n):
        clips = [sample(r) for _ in range(n)]
        return tuple(torch.cat(x) if i != 1 else torch.stack(x) for i, x in enumerate(zip(*clips)))

    held_out = batch(np.random.default_rng(seed + 1), 32)  # scored after training; its labels give the class count
    n_classes = int(held_out[2].shape[-1])
    widths = [n_classes, 4, MAX_COUNT if len(held_out) > 4 else 0]  # presence, direction, count logits
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(model.config.text_config.hidden_size, sum(widths))
    with torch.no_grad():
        bound = 1.0 / math.sqrt(head.in_features)
        head.weight.uniform_(-bound, bound, generator=gen)
        head.bias.zero_()
    params = list(visual.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)

    def forward(b):
        pv, thw, presence, direction = b[:4]
        tokens = visual(pv, grid_thw=thw)
        tokens = getattr(tokens, "pooler_output", tokens)
        out = head(tokens).split(widths, dim=-1)
        has = direction >= 0
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out[0], presence)
        if has.any():
            loss = loss + torch.nn.functional.cross_entropy(out[1][has], direction[has])
            if widths[2]:
                loss = loss + torch.nn.functional.cross_entropy(out[2][has], b[4][has].clamp(max=MAX_COUNT) - 1)
        return loss, out, tokens

    from tqdm import tqdm

    losses = []
    visual.train()
    for step in tqdm(range(steps), desc="vision warm-up", disable=not progress, unit="step", position=position):
        warm, decay = _warmup_cosine(step, steps, warmup)
        for g in opt.param_groups:
            g["lr"] = lr * warm * decay
        losses.append(_clipped_step(opt, params, forward(batch(rng, batch_size))[0]))
    visual.eval()
    with torch.no_grad():
        _, out, tokens = forward(held_out)
    presence, direction = held_out[2], held_out[3]
    occupied, has = presence.sum(-1) > 0, direction >= 0
    same_set = ((out[0] > 0).float() == presence).all(-1)
    tail = losses[-50:]
    return {"steps": steps, "first_loss": losses[0], "loss": sum(tail) / len(tail),
            "presence_accuracy": float(same_set[occupied].float().mean()),
            "direction_accuracy": float((out[1][has].argmax(-1) == direction[has]).float().mean()),
            **({"count_accuracy": float((out[2][has].argmax(-1) + 1
                                         == held_out[4][has].clamp(max=MAX_COUNT)).float().mean())}
               if widths[2] else {}),
            "video_embedding_norm": float(tokens.norm(dim=-1).mean())}


def caption_drill(model, tokenizer, sample, steps: int, batch_size: int = 8, lr: float = 1e-3,
                  vision_lr: float = 5e-4, warmup: int = 30, seed: int = 0, mrope_rule: str = "qwen",
                  progress: bool = True, on_step=None) -> dict:
    """Video-to-words drill of the tiny checkpoint, after :func:`copy_warmup` and :func:`vision_warmup`: next-token
    training of the whole model (language model at `lr`, vision tower + merger at `vision_lr`) on the answers of
    rendered clips from `sample` (`dvr1.vidchain.drill.drill_sample`: how many events, their numbered captions, one
    event's segment), the loss on the answer and its ``<|im_end|>``. The stand-in for the dense captioning and
    grounding a real Qwen2.5-VL learns in pretraining. Measured at tiny size (docs/VIDCHAIN.md, "The caption drill in
    the tiny checkpoint"): 2,000 steps teach the answer forms; CoTasks SFT after 3,500 in one schedule gives
    captions whose colour word follows the clip (val 0.50, chance 0.25) but not the event count.

    AdamW (betas 0.9/0.95, no weight decay, grad-norm clip 1.0), linear warmup over `warmup` steps, then cosine to
    5 % of each LR. Positions are Qwen2.5-VL's 3-D mrope (`dvr1.models.rope.get_rope_index` with `mrope_rule` and
    the sample's seconds per grid step), as the policy computes them in SFT and RL.

    Args:
        model: a `Qwen2_5_VLForConditionalGeneration` (fp32, CPU). tokenizer: its tokenizer.
        sample: ``rng -> {"pixel_values_videos" [N, 1176], "video_grid_thw" [3], "second_per_grid" (s), "prompt"
            (chat prompt with its video tokens), "answer", "kind"}`` with ``rng`` a `numpy.random.Generator`.
        steps: optimizer steps (0: nothing is done). batch_size: clips per step. on_step: as in :func:`copy_warmup`.

    Returns:
        ``{"steps", "first_loss", "loss" (mean NLL per answer token, the last 50 steps), "loss_per_100_steps" (the
        training curve: the mean loss of each block of 100 steps), "token_accuracy": {kind:
        teacher-forced argmax accuracy of the answer tokens (with <|im_end|>)}, "answer_accuracy": {kind: fraction
        whose answer tokens are all right}}`` on 48 held-out clips after training.
    """
    import numpy as np
    import torch

    from dvr1.models.rope import get_rope_index

    if steps <= 0:
        return {"steps": 0}
    cfg = model.config
    vcfg = cfg.vision_config
    pad, eos = tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")

    def batch(r, n):
        clips = [sample(r) for _ in range(n)]
        rows = []
        for c in clips:
            p = tokenizer(c["prompt"], add_special_tokens=False)["input_ids"]
            rows.append((p, tokenizer(c["answer"], add_special_tokens=False)["input_ids"] + [eos]))
        n_tok = max(len(p) + len(a) for p, a in rows)
        ids = torch.full((n, n_tok), pad, dtype=torch.long)
        mask = torch.zeros(n, n_tok, dtype=torch.long)
        target = torch.full((n, n_tok), -100, dtype=torch.long)
        pos = torch.zeros(3, n, n_tok, dtype=torch.long)
        for i, ((p, a), c) in enumerate(zip(rows, clips)):
            x = torch.tensor(p + a)
            ids[i, :len(x)], mask[i, :len(x)], target[i, len(p):len(x)] = x, 1, torch.tensor(a)
            pos[:, i, :len(x)] = get_rope_index(x.view(1, -1), cfg.video_token_id, c["video_grid_thw"].view(1, 3),
                                                [c["second_per_grid"]], vcfg.spatial_merge_size,
                                                vcfg.tokens_per_second, mrope_rule)[:, 0]
        return (torch.cat([c["pixel_values_videos"] for c in clips]),
                torch.stack([c["video_grid_thw"] for c in clips]), ids, mask, pos, target[:, 1:],
                [c["kind"] for c in clips])

    def forward(b):
        pixels, thw, ids, mask, pos, target, _ = b
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values_videos=pixels,
                       video_grid_thw=thw).logits[:, :-1]
        return logits, target

    lm, tower = _lm_params(model), list(model.model.visual.parameters())
    opt = torch.optim.AdamW([{"params": lm, "lr": lr}, {"params": tower, "lr": vision_lr}], betas=(0.9, 0.95),
                            weight_decay=0.0)
    rng = np.random.default_rng(seed)
    held_out = batch(np.random.default_rng(seed + 1), 48)

    from tqdm import tqdm

    losses = []
    model.train()
    for step in tqdm(range(steps), desc="caption drill", disable=not progress, unit="step"):
        if on_step is not None:
            on_step()
        warm, decay = _warmup_cosine(step, steps, warmup)
        for g, base in zip(opt.param_groups, (lr, vision_lr)):
            g["lr"] = base * (warm * decay)
        logits, target = forward(batch(rng, batch_size))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)
        losses.append(_clipped_step(opt, lm + tower, loss))
    model.eval()
    with torch.no_grad():
        logits, target = forward(held_out)
    scored = target != -100
    hit = (logits.argmax(-1) == target) & scored
    tokens = {}
    for i, kind in enumerate(held_out[-1]):
        tokens.setdefault(kind, []).append((int(hit[i].sum()), int(scored[i].sum())))
    token_acc = {k: sum(h for h, _ in v) / sum(n for _, n in v) for k, v in sorted(tokens.items())}
    answers = {k: sum(h == n for h, n in v) / len(v) for k, v in sorted(tokens.items())}
    tail = losses[-50:]
    curve = [sum(losses[i:i + 100]) / len(losses[i:i + 100]) for i in range(0, steps, 100)]
    return {"steps": steps, "first_loss": losses[0], "loss": sum(tail) / len(tail), "loss_per_100_steps": curve,
            "token_accuracy": token_acc, "answer_accuracy": answers}


def _vision_warmup_worker(cfg, visual_state: dict, sample, steps: int, seed: int, threads: int,
                          progress: bool = True):
    """:func:`vision_warmup` in a spawned process, on a model with the parent's (still random) tower and merger:
    returns (the trained tower + merger state dict, the warm-up's result). The warm-up reads and writes nothing but
    the tower, merger and its own head and RNGs, so this equals running it in the parent, bit for bit."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.set_num_threads(threads)
    model = Qwen2_5_VLForConditionalGeneration(cfg).float()
    model.model.visual.load_state_dict(visual_state)
    result = vision_warmup(model, sample, steps, seed=seed, progress=progress, position=1)
    return model.model.visual.state_dict(), result


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def tiny_config(ids: dict[str, int], vocab_size: int, tie_word_embeddings: bool = True, text=None, vision=None):
    """A `Qwen2_5_VLConfig` of the tiny policy. `ids` from `dvr1.models.tokenizer.special_ids`."""
    from transformers import Qwen2_5_VLConfig

    t = dict(TINY_TEXT, **(text or {}))
    v = dict(TINY_VISION, **(vision or {}))
    mrope = t.pop("mrope_section")
    theta = t.pop("rope_theta")
    v["out_hidden_size"] = t["hidden_size"]
    text_config = dict(
        t,
        vocab_size=vocab_size,
        rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": mrope},
        bos_token_id=ids["pad"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        tie_word_embeddings=tie_word_embeddings,
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=v,
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=tie_word_embeddings,
    )


def write_processor_config(out_dir: str, vision_config=None, min_pixels: int = 3136, max_pixels: int = 12845056) -> str:
    """Write `preprocessor_config.json` as released Qwen2.5-VL checkpoints have it (patch 14, temporal patch 2,
    merge 2, CLIP mean/std, pixel bounds in pixels), so `AutoProcessor` -- and vLLM, which builds its multi-modal
    processor from it -- load the checkpoint. Plain JSON: no image-processor class (and no torchvision) is needed
    to write it. `vision_config` defaults to the one in `out_dir/config.json`. Returns the file's path."""
    if vision_config is None:
        from transformers import AutoConfig

        vision_config = AutoConfig.from_pretrained(out_dir).vision_config
    from dvr1.data.processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    path = os.path.join(out_dir, "preprocessor_config.json")
    with open(path, "w") as f:
        json.dump({"image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
                   "patch_size": vision_config.patch_size, "temporal_patch_size": vision_config.temporal_patch_size,
                   "merge_size": vision_config.spatial_merge_size, "min_pixels": min_pixels,
                   "max_pixels": max_pixels, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD),
                   "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                   "do_convert_rgb": True}, f, indent=1)
    return path


def text_overrides(model_cfg) -> dict:
    """The :data:`TINY_TEXT` entries a run's ``model:`` config section sets (``tiny_rope_theta``,
    ``tiny_mrope_section``), as :func:`make_tiny_checkpoint`'s `text` argument."""
    return {"rope_theta": float(model_cfg.tiny_rope_theta),
            "mrope_section": [int(x) for x in model_cfg.tiny_mrope_section]}


def make_tiny_checkpoint(
    out_dir: str,
    texts: Iterable[str],
    seed: int = 0,
    vocab_size: int = 2048,
    tie_word_embeddings: bool = True,
    text=None,
    vision=None,
    model_vocab: int | None = None,
    reading_options: list[list[str]] | None = None,
    reading_steps: int = 0,
    reading_lr: float = 3e-3,
    copy_steps: int = 0,
    answer_samples: list[tuple[str, str, str]] | None = None,
    answer_steps: int = 0,
    vision_sample=None,
    vision_steps: int = 0,
    vision_in_parallel: bool | None = None,
    caption_sample=None,
    caption_steps: int = 0,
    caption_lr: float = 1e-3,
    caption_vision_lr: float = 5e-4,
    mrope_rule: str = "qwen",
    progress: bool = True,
) -> str:
    """Train the tokenizer on `texts`, build a random-init tiny Qwen2.5-VL and `save_pretrained` both to `out_dir`.

    The model's vocabulary is the tokenizer's rounded up to a multiple of 128 (divisible by any TP size we use), or
    `model_vocab` (>= the tokenizer's; e.g. 152,064 for a 7B-shaped benchmark policy). `text` / `vision` override
    :data:`TINY_TEXT` / :data:`TINY_VISION` entries. `copy_steps` > 0: the random LM first gets :func:`copy_warmup`
    (recorded in ``dvr1_tiny.json`` under ``"copy"``). `reading_steps` > 0: then :func:`reading_warmup` at
    `reading_lr` on `reading_options` (the training split's option lists) before it is saved; its result is recorded
    in ``dvr1_tiny.json`` under ``"reading"``. `answer_steps` > 0: then :func:`answer_drill` on `answer_samples`
    (under ``"answer"``). `vision_steps` > 0: the random tower + merger get :func:`vision_warmup` on
    clips from `vision_sample`, recorded under ``"vision"``. `caption_steps` > 0: last, with the tower warmed,
    :func:`caption_drill` of the whole model on `caption_sample` at `caption_lr` (LM) / `caption_vision_lr` (tower)
    with positions by `mrope_rule` (under ``"caption"``). The tower's warm-up and the language model's touch
    disjoint parameters and draw from their own RNGs, so with both to run and `vision_in_parallel` (None: when a
    second core is free, `dvr1.parallel.setup.cpu_cores`) the tower's runs in a spawned process beside the others
    (the tiny main job's ~3 minutes of it off the critical path), with the same weights, bit for bit, as one after
    the other (tests/unit/test_perception.py). That process gets one intra-op thread, and this one
    ``torch.get_num_threads() - 1`` (at least 1) until it has returned, then all again (the LM warm-ups' results do
    not depend on the thread count: the same weights at 1 and 2 threads). `vision_sample` must then pickle (a
    module-level function or a `functools.partial` of one). `progress`: the warm-ups' tqdm bars (the jobs pass
    ``log.progress``). Returns `out_dir`.

    Raises:
        ValueError: `vision_steps` > 0 without `vision_sample`, `caption_steps` > 0 without `caption_sample`; see
            also :func:`reading_warmup`.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    tok = train_tokenizer(texts, vocab_size, out_dir)
    vocab = _round_up(len(tok), 128)
    if model_vocab is not None:
        if model_vocab < len(tok):
            raise ValueError(f"make_tiny_checkpoint: model_vocab={model_vocab} < the tokenizer's {len(tok)} tokens")
        vocab = model_vocab
    cfg = tiny_config(special_ids(tok), vocab, tie_word_embeddings, text, vision)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).float()
    if vision_steps > 0 and vision_sample is None:
        raise ValueError("make_tiny_checkpoint: vision_steps > 0 needs a vision_sample to draw warm-up clips from")
    if caption_steps > 0 and caption_sample is None:
        raise ValueError("make_tiny_checkpoint: caption_steps > 0 needs a caption_sample to draw drill clips from")
    lm_warmups = copy_steps > 0 or reading_steps > 0 or answer_steps > 0
    if vision_in_parallel is None:
        from dvr1.parallel.setup import cpu_cores

        vision_in_parallel = cpu_cores() > 1
    threads = torch.get_num_threads()
    pool = pending = on_step = None
    if vision_steps > 0 and lm_warmups and vision_in_parallel:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(1)
        pending = pool.apply_async(_vision_warmup_worker, (cfg, model.model.visual.state_dict(), vision_sample,
                                                           vision_steps, seed, 1, progress))
        torch.set_num_threads(max(1, threads - 1))  # the worker's thread takes one of this process's

        def on_step():  # and gives it back as soon as the worker has returned (a step of the LM's warm-ups)
            if pending.ready() and torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
    try:
        copied = copy_warmup(model, tok, copy_steps, seed=seed, progress=progress, on_step=on_step)
        reading = reading_warmup(model, tok, list(reading_options or []), reading_steps, lr=reading_lr, seed=seed,
                                 progress=progress, on_step=on_step)
        answer = answer_drill(model, tok, list(answer_samples or []), answer_steps, seed=seed, progress=progress,
                              on_step=on_step)
        if pending is not None:
            visual_state, vision = pending.get()
            model.model.visual.load_state_dict(visual_state)
            pool.close()
            torch.set_num_threads(threads)  # the worker's thread is free again (the LM's warm-ups may have ended first)
        else:
            vision = (vision_warmup(model, vision_sample, vision_steps, seed=seed, progress=progress)
                      if vision_steps > 0 else None)
        caption = caption_drill(model, tok, caption_sample, caption_steps, lr=caption_lr,
                                vision_lr=caption_vision_lr, seed=seed, mrope_rule=mrope_rule, progress=progress)
    finally:
        torch.set_num_threads(threads)
        if pool is not None:
            pool.terminate()  # after close(): the worker has returned; on an error here: do not wait for it
            pool.join()
    model.save_pretrained(out_dir)
    write_processor_config(out_dir, cfg.vision_config)
    with open(os.path.join(out_dir, "dvr1_tiny.json"), "w") as f:
        json.dump({"seed": seed, "tokenizer_vocab": len(tok), "model_vocab": cfg.text_config.vocab_size,
                   **({"copy": copied} if copy_steps > 0 else {}),
                   **({"reading": reading} if reading_steps > 0 else {}),
                   **({"answer": answer} if answer_steps > 0 else {}),
                   **({"vision": vision} if vision is not None else {}),
                   **({"caption": caption} if caption_steps > 0 else {})}, f)
    return out_dir
