"""Qwen2.5-VL 3-D multimodal RoPE positions (mrope) for text + one video per sequence.

Reproduces `transformers` 5.19 `Qwen2_5_VLModel.get_rope_index` / `get_vision_position_ids`
(models/qwen2_5_vl/modeling_qwen2_5_vl.py) for text and video tokens, so the megatron-core policy sees the
positions Hugging Face's model sees (tested against it). Text tokens get (p, p, p); video tokens get
(start + floor(t * tokens_per_second * second_per_grid), start + h, start + w) on the merged grid. Where the text after
a video resumes is a choice (``after_video``):

- ``"transformers"``: at start + max(H, W) // merge_size (transformers 5.19's rule; dvr1's default, so the policy's
  logits equal Hugging Face's model, tested);
- ``"qwen"``: at the largest position of the video + 1 (Qwen2.5-VL's original code, and vLLM 0.32's
  ``get_mrope_input_positions``): a colocated vLLM engine samples with these positions, so the trainer must use them
  too (``model.mrope_after_video=auto`` picks this with ``rollout.engine=vllm``).

The two agree unless the video's temporal positions run past its spatial ones.
"""

from __future__ import annotations

import torch


def video_position_ids(start: int, grid_thw, merge_size: int, time_interval: float) -> torch.Tensor:
    """Positions of one video's LLM tokens. Returns int64 `[3, t * (h/merge) * (w/merge)]`."""
    t, h, w = (int(x) for x in grid_thw)
    h, w = h // merge_size, w // merge_size
    pt = (torch.arange(t) * time_interval).long() + start
    ph = torch.arange(h) + start
    pw = torch.arange(w) + start
    T, H, W = torch.meshgrid(pt, ph, pw, indexing="ij")
    return torch.stack([T, H, W]).reshape(3, -1)


def get_rope_index(
    input_ids: torch.Tensor,
    video_token_id: int,
    video_grid_thw: torch.Tensor | None,
    second_per_grid_ts: torch.Tensor | list[float] | None,
    merge_size: int,
    tokens_per_second: float,
    after_video: str = "transformers",
) -> torch.Tensor:
    """3-D positions for a right-padded batch.

    Args:
        input_ids: int64 `[batch, seq]`; each row holds at most one contiguous run of `video_token_id` tokens.
        video_grid_thw: int64 `[num_videos, 3]` (patch grid per video, in row order of the videos in the batch).
        second_per_grid_ts: `[num_videos]` seconds per temporal grid step (= temporal_patch_size / sampled fps).
        merge_size: the vision tower's spatial merge size (2 for Qwen2.5-VL).
        tokens_per_second: `vision_config.tokens_per_second`.

    Returns:
        int64 `[3, batch, seq]`. Padding after a sequence's end simply continues the text positions (it is masked
        out of every loss).

    Raises:
        ValueError: if a row's count of video tokens does not match its grid, or an unknown `after_video`.
    """
    if after_video not in ("transformers", "qwen"):
        raise ValueError(f"get_rope_index: after_video={after_video!r}: must be 'transformers' or 'qwen'")
    b, s = input_ids.shape
    out = torch.empty(3, b, s, dtype=torch.long)
    vid = 0
    for i in range(b):
        is_video = (input_ids[i] == video_token_id).nonzero().flatten()
        if len(is_video) == 0:
            out[:, i] = torch.arange(s).expand(3, s)
            continue
        v0, v1 = int(is_video[0]), int(is_video[-1]) + 1
        grid = video_grid_thw[vid]
        n = int(grid.prod()) // merge_size**2
        if v1 - v0 != n or len(is_video) != n:
            raise ValueError(f"row {i}: {len(is_video)} video tokens in [{v0}, {v1}) but grid {grid.tolist()} needs {n}")
        spg = float(second_per_grid_ts[vid]) if second_per_grid_ts is not None else 1.0
        out[:, i, :v0] = torch.arange(v0).expand(3, v0)
        vpos = video_position_ids(v0, grid, merge_size, tokens_per_second * spg)
        out[:, i, v0:v1] = vpos
        if after_video == "transformers":
            nxt = v0 + max(int(grid[1]), int(grid[2])) // merge_size
        else:
            nxt = int(vpos.max()) + 1
        out[:, i, v1:] = (torch.arange(s - v1) + nxt).expand(3, s - v1)
        vid += 1
    return out


def continue_positions(last: torch.Tensor, n: int) -> torch.Tensor:
    """Positions of `n` text tokens appended after a sequence whose last position is `last` `[3, batch, 1]`.

    Returns int64 `[3, batch, n]` (all three components equal the text position, as for any text token).
    """
    return last + 1 + torch.arange(n).view(1, 1, n)
