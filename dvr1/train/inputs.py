"""From records to model inputs: video -> normalised frames -> vision embeddings; prompt -> token ids + mrope
positions; (prompt, response) pairs -> right-padded training sequences and per-token log-probs.

Data flow (one direction): `InputBuilder.prepare(record, hint=..., video=...)` -> `Prepared` (a `RolloutRequest` plus
what the trainer needs) -> rollout -> `build_batch(prepared, responses)` -> `token_logprobs(model, batch)`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

import torch

from dvr1.data.noise import FrameNoise
from dvr1.data.processing import num_video_tokens, patchify
from dvr1.data.prompts import format_question
from dvr1.data.schema import VideoQARecord
from dvr1.data.video import NormalizedClip, Sampling, VideoError, load_clip
from dvr1.models.rope import continue_positions, get_rope_index
from dvr1.models.tokenizer import chat_prompt
from dvr1.rollout.base import RolloutRequest

log = logging.getLogger(__name__)


@dataclass
class VideoInput:
    """A decoded, resized, normalised clip. video: float32 `[T, 3, H, W]` (Qwen2.5-VL normalisation);
    second_per_grid: seconds per temporal patch (temporal_patch_size / sampled fps)."""

    video: torch.Tensor
    second_per_grid: float


@dataclass
class Prepared:
    """One prompt ready for rollout and training."""

    record: VideoQARecord
    prompt_text: str
    request: RolloutRequest
    video_grid_thw: torch.Tensor  # [1, 3]
    second_per_grid: float
    video_token_id: int


class InputBuilder:
    """Turns records into `Prepared` prompts for one policy and tokenizer.

    Decoded videos and (unaugmented) vision embeddings are cached per record id (`cache_size` records, LRU): the
    vision tower is frozen, so the embeddings of a clip never change during training.

    Raises (from `prepare`): `dvr1.data.video.VideoError` for a missing/corrupt video (callers report and skip).
    """

    def __init__(self, policy, tokenizer, video_cfg, cache_size: int = 4096, strict: bool = False):
        """`strict` (`data.strict`): a truncated video file is a `VideoError` (the record is skipped) instead of a
        warning."""
        from megatron.core.utils import unwrap_model  # the policy inside megatron's DDP / Float16Module wrappers

        self.strict = strict
        self.policy = unwrap_model(policy)
        self.tokenizer = tokenizer
        self.vcfg = video_cfg
        self.info = self.policy.info
        self._videos: OrderedDict[str, NormalizedClip] = OrderedDict()
        self._embeds: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.cache_size = cache_size

    def _cache(self, store: OrderedDict, key, value):
        store[key] = value
        store.move_to_end(key)
        while len(store) > self.cache_size:
            store.popitem(last=False)

    def _clip(self, record: VideoQARecord) -> NormalizedClip:
        """The record's clean clip, on the CPU (cached)."""
        if record.id in self._videos:
            self._videos.move_to_end(record.id)
            return self._videos[record.id]
        clip = load_clip(record.video, self.vcfg.backend, Sampling.from_config(self.vcfg), strict=self.strict)
        clip = dataclasses.replace(clip, video=clip.video.cpu())
        self._cache(self._videos, record.id, clip)
        return clip

    def video(self, record: VideoQARecord) -> VideoInput:
        """The record's clip, decoded, sampled, resized and normalised (cached), by `dvr1.data.video.load_clip`:
        `video.backend=dali` runs all of it in one DALI pipeline; `pyav` decodes with PyAV and normalises in torch."""
        clip = self._clip(record)
        span = clip.duration if clip.duration > 0 else len(clip.indices) / clip.video_fps
        sampled_fps = len(clip.indices) / span
        return VideoInput(clip.video, self.info.temporal_patch_size / sampled_fps)

    def noisy_video(self, record: VideoQARecord, sigma0: float, level: float, mask_fraction: float,
                    generator: torch.Generator) -> torch.Tensor:
        """DA-Aug difficulty increase (ALGORITHMS §4): v + sigma0·level·N(0, I), then frame masking
        (`dvr1.data.video.load_clip` with a `FrameNoise`).

        PyAV backend: torch noise from `generator` on the cached clip (checkpointed, so a resumed run is exact). DALI
        backend: the same op inside the DALI pipeline (`fn.noise.gaussian`, per-sample std as external source),
        masked frames chosen by `generator`; its noise comes from DALI's generator, seeded per draw from `generator`.
        """
        noise = FrameNoise(sigma0, level, mask_fraction, generator)
        clip = load_clip(record.video, self.vcfg.backend, Sampling.from_config(self.vcfg), noise,
                         clean=lambda: self._clip(record), strict=self.strict)
        return clip.video.cpu()

    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Normalised `[T, 3, H, W]` -> (video_embeds `[num_video_tokens, hidden]`, video_grid_thw `[1, 3]`).

        On PP stages after the first (no vision tower) the embeddings are None; the grid (for mrope) is still made.
        """
        pixel_values, grid = patchify(video, self.info.patch_size, self.info.temporal_patch_size, self.info.merge_size)
        grid = grid.view(1, 3)
        if self.policy.visual is None:
            return None, grid
        return self.policy.encode_video(pixel_values, grid), grid

    def prepare(self, record: VideoQARecord, hint: Optional[str] = None, reveal_answer: bool = False,
                video: Optional[torch.Tensor] = None) -> Prepared:
        """Build the rollout request for `record`. `video` overrides the clip (DA-Aug noise, ALGORITHMS §4)."""
        vin = self.video(record)
        if video is None:
            if record.id not in self._embeds:
                self._cache(self._embeds, record.id, self.encode(vin.video))
            embeds, grid = self._embeds[record.id]
        else:
            embeds, grid = self.encode(video)
        text = format_question(record, hint=hint, reveal_answer=reveal_answer)
        prompt = chat_prompt(text, num_video_tokens(grid[0], self.info.merge_size))
        ids = torch.tensor(self.tokenizer(prompt, add_special_tokens=False)["input_ids"], dtype=torch.long)
        pos = get_rope_index(ids.view(1, -1), self.info.video_token_id, grid, [vin.second_per_grid],
                             self.info.merge_size, self.info.tokens_per_second, self.info.mrope_after_video)[:, 0]
        req = RolloutRequest(prompt_ids=ids, position_ids=pos, video_embeds=embeds, video_grid_thw=grid,
                             second_per_grid=vin.second_per_grid)
        return Prepared(record, text, req, grid, vin.second_per_grid, self.info.video_token_id)


@dataclass
class SeqBatch:
    """Right-padded prompt+response sequences.

    input_ids int64 `[N, S]`; position_ids int64 `[3, N, S]`; video_embeds `[sum of video tokens, hidden]` in row
    order (or None); resp_index int64 `[N, T]`: for response token j of row i, its index in the shifted target space
    `[N, S-1]` (= prompt_len - 1 + j); resp_mask float32 `[N, T]` (1 for real response tokens); video_mask bool
    `[N, S]` marks the prompt's `<|video_pad|>` positions (a sampled response token with that id is not one).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    video_embeds: Optional[torch.Tensor]
    resp_index: torch.Tensor
    resp_mask: torch.Tensor
    video_mask: torch.Tensor  # bool [N, S]: the prompt's video placeholder positions
    video_tokens: list[int] = field(default_factory=list)  # per row: how many rows of video_embeds it owns

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    def split(self, rows_per_microbatch: int) -> list["SeqBatch"]:
        """Consecutive row blocks of `rows_per_microbatch` rows (0 = one block), same padded length S."""
        n = self.num_rows
        step = rows_per_microbatch or n
        out = []
        for a in range(0, n, step):
            b = min(n, a + step)
            v0, v1 = sum(self.video_tokens[:a]), sum(self.video_tokens[:b])
            out.append(SeqBatch(self.input_ids[a:b], self.position_ids[:, a:b],
                                None if self.video_embeds is None else self.video_embeds[v0:v1],
                                self.resp_index[a:b], self.resp_mask[a:b], self.video_mask[a:b],
                                self.video_tokens[a:b]))
        return out


def build_batch(items: list[tuple[Prepared, list[int]]], pad_id: int) -> SeqBatch:
    """Concatenate each prompt with its response token ids and right-pad. Raises ValueError for no items."""
    if not items:
        raise ValueError("build_batch: no sequences")
    lens = [p.request.prompt_ids.numel() + len(r) for p, r in items]
    S, T = max(lens), max(max(len(r) for _, r in items), 1)
    N = len(items)
    ids = torch.full((N, S), pad_id, dtype=torch.long)
    pos = torch.empty(3, N, S, dtype=torch.long)
    resp_index = torch.zeros(N, T, dtype=torch.long)
    resp_mask = torch.zeros(N, T)
    video_mask = torch.zeros(N, S, dtype=torch.bool)
    embeds, vtok = [], []
    for i, (p, resp) in enumerate(items):
        L = p.request.prompt_ids.numel()
        ids[i, :L] = p.request.prompt_ids
        ids[i, L:L + len(resp)] = torch.tensor(resp, dtype=torch.long)
        pos[:, i, :L] = p.request.position_ids
        pos[:, i, L:] = continue_positions(p.request.position_ids[:, -1:].view(3, 1, 1), S - L)[:, 0]
        resp_index[i] = torch.clamp(torch.arange(T) + L - 1, max=S - 2)
        resp_mask[i, :len(resp)] = 1.0
        video_mask[i, :L] = p.request.prompt_ids == p.video_token_id
        vtok.append(0 if p.request.video_embeds is None else p.request.video_embeds.shape[0])
        if p.request.video_embeds is not None:
            embeds.append(p.request.video_embeds)
    return SeqBatch(ids, pos, torch.cat(embeds) if embeds else None, resp_index, resp_mask, video_mask, vtok)


def token_logprobs(model, batch: SeqBatch, compute_entropy: bool = False, rows_per_microbatch: int = 0,
                   fused: bool = False, chunk_size: int = 1024):
    """Per-token log-probs of the response tokens under `model`, without gradients (old-policy / reference passes).

    Runs through megatron-core's schedule (`dvr1.parallel.forward`), so it works at any TP/PP; the logits stay
    vocab-parallel `[rows, S, vocab/tp]` and are reduced by `vocab_parallel_logprobs`.

    Returns:
        (logp float32 `[N, T]` zero where `resp_mask` is 0, entropy `[N, T]` or None) on the last PP stage;
        (None, None) on other stages.
    """
    from dvr1.parallel.forward import forward_backward

    with torch.no_grad():
        res = forward_backward(model, batch, compute_entropy=compute_entropy, rows_per_microbatch=rows_per_microbatch,
                               fused=fused, chunk_size=chunk_size)
    return (None, None) if res is None else (res.logp, res.entropy)


def prepare_or_skip(builder, record, sampler=None, strict: bool = False, **kw):
    """`builder.prepare(record, **kw)`, reporting (and with a `PromptSampler`, dropping for the rest of the run) a
    record whose video cannot be read; returns None for it. ``strict``: re-raise the `VideoError` instead."""
    try:
        return builder.prepare(record, **kw)
    except VideoError as e:
        if strict:
            raise
        log.warning("skipped record %s: %s", record.id, e)
        if sampler is not None:
            sampler.bad.add(record.id)
        return None
