"""From records to model inputs: video -> normalised frames -> vision embeddings; prompt -> token ids + mrope
positions; (prompt, response) pairs -> right-padded training sequences and per-token log-probs.

Data flow (one direction): `InputBuilder.prepare(record, hint=..., video=...)` -> `Prepared` (a `RolloutRequest` plus
what the trainer needs) -> rollout -> `build_batch(prepared, responses)` -> `token_logprobs(model, batch)`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

import torch

from dvr1.data.noise import FrameNoise
from dvr1.data.processing import num_video_tokens, patchify
from dvr1.data.prompts import format_question
from dvr1.data.schema import Skip, VideoQARecord, frame_fps, split_where
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
    frame_order: Optional[list[int]] = None  # the permutation of the frames the model sees (T-GRPO), else None


class PromptTooLong(ValueError):
    """A prompt's text alone (no video frames) exceeds the prompt budget (`model.max_prompt_tokens`)."""


class InputBuilder:
    """Turns records into `Prepared` prompts for one policy and tokenizer.

    Decoded videos and (unaugmented) vision embeddings are cached (`cache_size` clips, LRU) under what determines
    their content: the video's real path, file size and mtime, the backend and the sampling settings
    (`clip_key`), never the record id alone (two records with one id and different videos get their own frames).
    Embeddings are also keyed on the policy's `vision_version` (bumped after every optimizer step that trains the
    tower, and by state loads), and the embedding cache is emptied when it changes: a frozen tower's embeddings are
    computed once per clip, a trained tower's once per clip and update. Noisy (DA-Aug) clips are never cached.

    When the policy trains its vision tower (`model.freeze_vision=false`), every request also carries the clip's
    `pixel_values_videos`, so the training pass runs the tower with gradients (`SeqBatch.vision_inputs`);
    `prepare(..., embed=False)` then skips the no-grad encoding a caller that never rolls out does not need (SFT).
    `clip_inputs(record)` gives the same cached vision inputs to callers that build their own prompts (VidChain).

    `max_prompt_tokens` > 0 bounds the prompt length in tokens: a prompt over it gets fewer frames (whole temporal
    patches, uniformly over the sampled ones), and one whose text alone does not fit raises `PromptTooLong`.
    `skips` (a `dvr1.data.schema.SkipReport`) collects the records `prepare_or_skip` skips. `strict`
    (`data.strict`): a truncated video file is a `VideoError` instead of a warning. `prompt_style`: the
    `dvr1.data.prompts.format_question` style ("dvr1": the synthetic set's §6 template; "video_r1": imported data).

    Raises (from `prepare`): `dvr1.data.video.VideoError` for a missing/corrupt video, `PromptTooLong` (callers
    report and skip).
    """

    def __init__(self, policy, tokenizer, video_cfg, cache_size: int = 4096, max_prompt_tokens: int = 0,
                 skips=None, strict: bool = False, prompt_style: str = "dvr1"):
        from megatron.core.utils import unwrap_model  # the policy inside megatron's DDP / Float16Module wrappers

        self.strict = strict
        self.prompt_style = prompt_style
        self.policy = unwrap_model(policy)
        self.tokenizer = tokenizer
        self.vcfg = video_cfg
        self.info = self.policy.info
        self._videos: OrderedDict[tuple, NormalizedClip] = OrderedDict()
        self._embeds: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._embeds_version = self._vision_version()  # the tower version the cached embeddings belong to
        self.cache_size = cache_size
        self.max_prompt_tokens = max_prompt_tokens
        self.skips = skips
        self._reduced: set = set()  # clip keys whose frame reduction was already logged

    def _vision_version(self) -> int:
        return getattr(self.policy, "vision_version", 0)

    def clip_key(self, record: VideoQARecord) -> tuple:
        """The cache key of `record`'s clean clip: (real path, size in bytes, mtime in ns, backend, `Sampling`).
        Raises VideoError when the file cannot be stat'ed (missing)."""
        try:
            st = os.stat(record.video)
        except OSError as e:
            raise VideoError(f"{record.video}: {'file not found' if isinstance(e, FileNotFoundError) else e}") from None
        return (os.path.realpath(record.video), st.st_size, st.st_mtime_ns, self.vcfg.backend,
                Sampling.from_config(self.vcfg))

    def _cache(self, store: OrderedDict, key, value):
        store[key] = value
        store.move_to_end(key)
        while len(store) > self.cache_size:
            store.popitem(last=False)

    def _clip(self, record: VideoQARecord, key: tuple | None = None) -> NormalizedClip:
        """The record's clean clip, on the CPU (cached under `clip_key`, computed here unless given)."""
        key = key or self.clip_key(record)
        if key in self._videos:
            self._videos.move_to_end(key)
            return self._videos[key]
        clip = load_clip(record.video, self.vcfg.backend, Sampling.from_config(self.vcfg), strict=self.strict,
                         frame_fps=frame_fps(record))
        clip = dataclasses.replace(clip, video=clip.video.cpu())
        self._cache(self._videos, key, clip)
        return clip

    def video(self, record: VideoQARecord, key: tuple | None = None) -> VideoInput:
        """The record's clip, decoded, sampled, resized and normalised (cached), by `dvr1.data.video.load_clip`:
        `video.backend=dali` runs all of it in one DALI pipeline; `pyav` decodes with PyAV and normalises in torch.
        `key`: its `clip_key`, when the caller already has it."""
        clip = self._clip(record, key)
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
                         clean=lambda: self._clip(record), strict=self.strict, frame_fps=frame_fps(record))
        return clip.video.cpu()

    def encode(self, video: torch.Tensor, embed: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Normalised `[T, 3, H, W]` -> (video_embeds `[num_video_tokens, hidden]`, video_grid_thw `[1, 3]`), without
        gradients (rollout inputs).

        On PP stages after the first (no vision tower), or with `embed=False`, the embeddings are None; the grid (for
        mrope) is still made.
        """
        return self._encode(video, embed)[:2]

    def _encode(self, video: torch.Tensor, embed: bool = True):
        """(embeds or None, grid `[1, 3]`, pixel_values `[patches, 3*2*14*14]`)."""
        pixel_values, grid = patchify(video, self.info.patch_size, self.info.temporal_patch_size, self.info.merge_size)
        grid = grid.view(1, 3)
        if self.policy.visual is None or not embed:
            return None, grid, pixel_values
        with torch.no_grad():
            return self.policy.encode_video(pixel_values, grid), grid, pixel_values

    def _fit(self, record: VideoQARecord, text: str, grid: torch.Tensor) -> int | None:
        """Frames to keep so the prompt fits `max_prompt_tokens` (None: all). Raises PromptTooLong."""
        if self.max_prompt_tokens <= 0:
            return None
        n_video = num_video_tokens(grid[0], self.info.merge_size)
        n = len(self.tokenizer(chat_prompt(text, n_video), add_special_tokens=False)["input_ids"])
        if n <= self.max_prompt_tokens:
            return None
        per_t = n_video // int(grid[0, 0])  # video tokens per temporal patch
        keep_t = (self.max_prompt_tokens - (n - n_video)) // per_t
        if keep_t < 1:
            raise PromptTooLong(f"prompt of {n} tokens ({n - n_video} of text) exceeds model.max_prompt_tokens="
                                f"{self.max_prompt_tokens} even with one temporal patch of frames")
        return keep_t * self.info.temporal_patch_size

    def clip_inputs(self, record: VideoQARecord, embed: bool = True):
        """The vision inputs of `record`'s whole clean clip (no frame reduction, noise or shuffle), through the same
        tower-version-keyed embedding cache as `prepare`: (video_embeds float ``[num_video_tokens, hidden]`` or None,
        video_grid_thw int64 ``[1, 3]``, pixel_values_videos ``[patches, 3*2*14*14]`` or None, second_per_grid
        seconds). Pixel values only when the policy trains its tower; `embed=False` skips the no-grad encoding of a
        trained tower (as in `prepare`). Callers that build their own prompts (VidChain's multi-turn chats) use it.
        Raises VideoError for a bad video."""
        base = self.clip_key(record)
        vin = self.video(record, base)
        embeds, grid, pixels = self._video_tensors((base, None), vin.video, None, embed)
        return embeds, grid, pixels, vin.second_per_grid

    def _video_tensors(self, key: tuple, clean: torch.Tensor, video: Optional[torch.Tensor], embed: bool):
        """(embeds or None, grid ``[1, 3]``, pixel values or None) of `clean` (cached under `key` and the tower
        version) or of an uncached `video` (noisy / shuffled); pixel values only for a trained tower."""
        version = self._vision_version()
        if version != self._embeds_version:  # the tower changed: no cached embedding is valid any more
            self._embeds.clear()
            self._embeds_version = version
        key = (*key, version)
        trained = bool(getattr(self.policy, "vision_trainable", False))
        embed = embed or not trained  # a frozen tower's embeddings are the only video input
        pixels = None
        if video is None and embed:
            if key not in self._embeds:
                self._cache(self._embeds, key, self.encode(clean))
            else:
                self._embeds.move_to_end(key)
            embeds, grid = self._embeds[key]
            if trained:
                pixels = self._encode(clean, embed=False)[2]
        else:
            embeds, grid, pixels = self._encode(clean if video is None else video, embed)
        if not trained:
            pixels = None
        return embeds, grid, pixels

    def prepare(self, record: VideoQARecord, hint: Optional[str] = None, reveal_answer: bool = False,
                video: Optional[torch.Tensor] = None, shuffle: Optional[torch.Generator] = None,
                embed: bool = True) -> Prepared:
        """Build the rollout request for `record`. `video` overrides the clip (DA-Aug noise, ALGORITHMS §4).
        `shuffle` (T-GRPO, ALGORITHMS §9): the frames the model sees (after any frame reduction) are permuted by
        ``torch.randperm(T, generator=shuffle)`` before the vision tower, as Video-R1 permutes its sampled frames;
        text and mrope positions are unchanged, the permutation is in `Prepared.frame_order`, nothing is cached.
        `embed=False`: no `video_embeds` when the tower is trained (its training pass encodes `pixel_values_videos`
        itself); ignored for a frozen tower.

        A prompt over `max_prompt_tokens` is built from fewer frames (logged once per clip); raises PromptTooLong when
        its text alone does not fit, VideoError for a bad video."""
        base = self.clip_key(record)  # one stat of the file per prompt
        vin = self.video(record, base)
        key = (base, None)
        text = format_question(record, hint=hint, reveal_answer=reveal_answer, style=self.prompt_style)
        T = vin.video.shape[0]
        ps = self.info.patch_size
        grid_full = torch.tensor([[-(-T // self.info.temporal_patch_size), vin.video.shape[2] // ps,
                                   vin.video.shape[3] // ps]])
        keep = self._fit(record, text, grid_full)
        second_per_grid = vin.second_per_grid
        clean = vin.video
        if keep is not None:
            idx = torch.linspace(0, T - 1, keep).round().long()
            clean = clean[idx]
            video = None if video is None else video[idx]
            second_per_grid = vin.second_per_grid * T / keep
            key = (key[0], keep)
            if key not in self._reduced:
                self._reduced.add(key)
                log.warning("%s (id %r): prompt over model.max_prompt_tokens=%d: %d of %d frames kept",
                            record.where or record.video, record.id, self.max_prompt_tokens, keep, T)
        order = None
        if shuffle is not None:
            src = clean if video is None else video
            perm = torch.randperm(src.shape[0], generator=shuffle)
            order, video = perm.tolist(), src[perm]
        embeds, grid, pixels = self._video_tensors(key, clean, video, embed)
        prompt = chat_prompt(text, num_video_tokens(grid[0], self.info.merge_size))
        ids = torch.tensor(self.tokenizer(prompt, add_special_tokens=False)["input_ids"], dtype=torch.long)
        pos = get_rope_index(ids.view(1, -1), self.info.video_token_id, grid, [second_per_grid],
                             self.info.merge_size, self.info.tokens_per_second, self.info.mrope_rule)[:, 0]
        req = RolloutRequest(prompt_ids=ids, position_ids=pos, video_embeds=embeds, video_grid_thw=grid,
                             second_per_grid=second_per_grid, pixel_values_videos=pixels)
        return Prepared(record, text, req, grid, second_per_grid, self.info.video_token_id, order)


@dataclass
class SeqBatch:
    """Right-padded prompt+response sequences.

    input_ids int64 `[N, S]`; position_ids int64 `[3, N, S]`; video_embeds `[sum of video tokens, hidden]` in row
    order (or None); resp_index int64 `[N, T]`: for response token j of row i, its index in the shifted target space
    `[N, S-1]` (= prompt_len - 1 + j); resp_mask float32 `[N, T]` (1 for real response tokens); video_mask bool
    `[N, S]` marks the prompt's `<|video_pad|>` positions (a sampled response token with that id is not one).
    pixels / grids: per row, the clip's `pixel_values_videos` `[patches, 3*2*14*14]` and `video_grid_thw` `[1, 3]`
    (or None), when the requests carry them (a trained vision tower, `InputBuilder`); rows of one prompt share the
    tensor objects, so `vision_inputs` encodes each clip once.
    seq_lens: per row, its real length in tokens (prompt + response; the rest is padding), which
    `dvr1.parallel.packing.pack` needs (`model.packing`).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    video_embeds: Optional[torch.Tensor]
    resp_index: torch.Tensor
    resp_mask: torch.Tensor
    video_mask: torch.Tensor  # bool [N, S]: the prompt's video placeholder positions
    video_tokens: list[int] = field(default_factory=list)  # per row: how many rows of video_embeds it owns
    pixels: Optional[list] = None
    grids: Optional[list] = None
    seq_lens: list[int] = field(default_factory=list)  # per row: prompt + response tokens

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "SeqBatch":
        """The same batch with every tensor on `device` (a no-op for tensors already there). `pixels` / `grids` stay
        the same objects (their identity marks rows sharing a clip); the tower moves them when it encodes."""
        return SeqBatch(self.input_ids.to(device), self.position_ids.to(device),
                        None if self.video_embeds is None else self.video_embeds.to(device),
                        self.resp_index.to(device), self.resp_mask.to(device), self.video_mask.to(device),
                        list(self.video_tokens), self.pixels, self.grids, list(self.seq_lens))

    def vision_inputs(self):
        """What the policy's forward needs to run its vision tower on this batch, or None (no pixel values):
        (`pixel_values_videos` `[patches of the distinct clips, 3*2*14*14]`, `video_grid_thw` `[clips, 3]`,
        `video_token_index` int64 `[video positions]`: for each `video_mask` position in batch-row order, its row of
        the tower's output). Rows sharing one clip object (the G responses of a prompt) point at one encoding.
        Raises ValueError for a row whose video positions do not match its clip."""
        if self.pixels is None:
            return None
        order, pv, grid, index, start = {}, [], [], [], 0
        for i, (p, g) in enumerate(zip(self.pixels, self.grids)):
            n = int(self.video_mask[i].sum())
            if p is None:
                if n:
                    raise ValueError(f"row {i}: {n} video positions but no pixel values")
                continue
            if id(p) not in order:
                patches = int(g.view(-1, 3).prod(-1).sum())
                order[id(p)] = (start, patches)
                pv.append(p)
                grid.append(g.view(-1, 3))
                start += patches
            first, patches = order[id(p)]
            if n == 0 or patches % n:
                raise ValueError(f"row {i}: {n} video positions do not match its grid {g.view(-1).tolist()}")
            per = patches // n  # merge^2 patches per video token (the merger)
            index.append(torch.arange(first // per, first // per + n))
        if not pv:
            return None
        return torch.cat(pv), torch.cat(grid), torch.cat(index)

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
                                self.video_tokens[a:b], None if self.pixels is None else self.pixels[a:b],
                                None if self.grids is None else self.grids[a:b], self.seq_lens[a:b]))
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
    with_pixels = any(p.request.pixel_values_videos is not None for p, _ in items)
    pixels = [p.request.pixel_values_videos for p, _ in items] if with_pixels else None
    grids = [p.request.video_grid_thw for p, _ in items] if with_pixels else None
    return SeqBatch(ids, pos, torch.cat(embeds) if embeds else None, resp_index, resp_mask, video_mask, vtok,
                    pixels, grids, lens)


def token_logprobs(model, batch: SeqBatch, compute_entropy: bool = False, rows_per_microbatch: int = 0,
                   fused: bool = False, chunk_size: int = 1024, packing: bool = False):
    """Per-token log-probs of the response tokens under `model`, without gradients (old-policy / reference passes).

    Runs through megatron-core's schedule (`dvr1.parallel.forward`), so it works at any TP/PP; the logits stay
    vocab-parallel `[rows, S, vocab/tp]` and are reduced by `vocab_parallel_logprobs`. `packing`: each microbatch
    runs as one packed row (`dvr1.parallel.packing`), same results.

    Returns:
        (logp float32 `[N, T]` zero where `resp_mask` is 0, entropy `[N, T]` or None) on the last PP stage;
        (None, None) on other stages.
    """
    from dvr1.parallel.forward import forward_backward

    with torch.no_grad():
        res = forward_backward(model, batch, compute_entropy=compute_entropy, rows_per_microbatch=rows_per_microbatch,
                               fused=fused, chunk_size=chunk_size, packing=packing)
    return (None, None) if res is None else (res.logp, res.entropy)


def prepare_or_skip(builder, record, sampler=None, strict: bool = False, **kw):
    """`builder.prepare(record, **kw)`, reporting (into `builder.skips` when set, and with a `PromptSampler`, dropping
    for the rest of the run) a record whose video cannot be read or whose prompt cannot fit; returns None for it.
    ``strict``: re-raise the `VideoError` / `PromptTooLong` instead."""
    try:
        return builder.prepare(record, **kw)
    except (VideoError, PromptTooLong) as e:
        if strict:
            raise
        log.warning("skipped record %s: %s", record.id, e)
        if sampler is not None:
            sampler.bad.add(record.id)
        report = getattr(builder, "skips", None)
        if report is not None:
            if isinstance(e, PromptTooLong):
                reason = "prompt_too_long"
            else:
                reason = "missing_video" if not os.path.exists(record.video) else "corrupt_video"
            file, line = split_where(record.where)
            report.add(Skip(file, line, record.id, reason, str(e), phase="use"))
        return None
