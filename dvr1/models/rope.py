"""Qwen2.5-VL 3-D multimodal RoPE positions (mrope) for text + video sequences (docs/ALGORITHMS.md §11).

Text tokens get (p, p, p). The tokens of a video with merged grid (t, h, w) = (T, H/merge, W/merge), starting at
position `s`, get (s + floor(i · tokens_per_second · second_per_grid), s + j, s + k) for grid step i, row j and column
k (`second_per_grid` = temporal_patch_size / sampled fps, seconds per temporal grid step). Where the text after a
video resumes is the *rule* (``model.mrope_rule``):

- ``"qwen"`` (the default, and the only one for Qwen2.5-VL checkpoints): at the largest position used so far + 1.
  This is Qwen2.5-VL's original code -- what the released 3B-72B checkpoints were trained with -- as the original
  transformers port has it (transformers 4.49-5.2 ``Qwen2_5_VLModel.get_rope_index``: ``st_idx =
  llm_pos_ids_list[-1].max() + 1``; its docstring: "we calculate the text start position_ids as the max vision
  position_ids plus 1"), and as vLLM samples with (vLLM 0.32 ``model_executor/models/qwen2_5_vl.py``
  ``get_mrope_input_positions``: ``st_idx = llm_pos_ids_list[-1].max() + 1``).
- ``"transformers5"``: at s + max(H, W) / merge, transformers 5.3-5.19's rewrite of ``get_rope_index`` (``current_pos
  += max(grid_thw[1], grid_thw[2]) // spatial_merge_size``). Kept, explicitly named, to reproduce Hugging Face
  transformers >= 5.3 exactly (its ``generate`` / forward on a released checkpoint uses it).

The two agree while a video's temporal positions stay below its spatial extent, floor((T-1) · tokens_per_second ·
second_per_grid) < max(H, W)/merge; past that -- at Qwen's defaults (2 fps: 1 s per grid step, 2 tokens per second,
448 x 448 frames: 16 merged patches) any clip longer than about 8 s -- the transformers5 rule puts the following
text at positions the video already uses, which no released checkpoint saw in training. Upstream history: the 5.x
rewrite first also lost the temporal spacing itself (transformers issue #45381: 5.3.0 gave every video token the
temporal position ``start · time_interval`` while 5.2.0 still resumed the text at max + 1; fixed by PR #45400, "Fix
Qwen2.5VL temporal grid positions", which kept the new resume rule), and scaled still images by tokens_per_second
(#45325, fixed in 5.5.4).

Precision: the temporal positions are computed in float64 as ``floor(i · (second_per_grid · tokens_per_second))``,
the arithmetic of vLLM 0.32 (numpy float64, ``iter_mm_grid_thw``'s ``t_factor``), and `dvr1.rollout.vllm` sends
``second_per_grid_ts`` to vLLM as float64, so the trainer and a colocated engine agree on every value. (A float32
``second_per_grid`` on either side breaks that: 10 frames of a 3.5 s clip are 0.7 s per grid step, and step 5 is
at 7 in float64 but at floor(5 · 2 · float32(0.7)) = 6.)
"""

from __future__ import annotations

import torch

RULES = ("qwen", "transformers5")


def check_rule(rule: str) -> str:
    """`rule` if it is one of `RULES`; else ValueError naming the allowed values."""
    if rule not in RULES:
        raise ValueError(f"mrope rule {rule!r}: must be one of {', '.join(RULES)} (model.mrope_rule)")
    return rule


def temporal_positions(t: int, second_per_grid: float, tokens_per_second: float) -> torch.Tensor:
    """floor(i · second_per_grid · tokens_per_second) for i < t, in float64 (module docstring). int64 `[t]`."""
    return (torch.arange(t, dtype=torch.float64) * (float(second_per_grid) * float(tokens_per_second))).long()


def video_position_ids(start: int, grid_thw, merge_size: int, second_per_grid: float,
                       tokens_per_second: float) -> torch.Tensor:
    """Positions of one video's LLM tokens (grid order t, h, w). Returns int64 `[3, t * (h/merge) * (w/merge)]`."""
    t, h, w = (int(x) for x in grid_thw)
    h, w = h // merge_size, w // merge_size
    pt = temporal_positions(t, second_per_grid, tokens_per_second) + start
    T, H, W = torch.meshgrid(pt, torch.arange(h) + start, torch.arange(w) + start, indexing="ij")
    return torch.stack([T, H, W]).reshape(3, -1)


def _runs(is_video: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each contiguous run of True in a 1-D bool tensor."""
    idx = is_video.nonzero().flatten().tolist()
    runs = []
    for i in idx:
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return [tuple(r) for r in runs]


def get_rope_index(
    input_ids: torch.Tensor,
    video_token_id: int,
    video_grid_thw: torch.Tensor | None,
    second_per_grid_ts: torch.Tensor | list[float] | None,
    merge_size: int,
    tokens_per_second: float,
    rule: str = "qwen",
) -> torch.Tensor:
    """3-D positions for a right-padded batch.

    Args:
        input_ids: int64 `[batch, seq]`; each video is one contiguous run of `video_token_id` tokens (Qwen's chat
            template puts ``<|vision_start|>`` / ``<|vision_end|>`` around each), any number per row.
        video_grid_thw: int64 `[num_videos, 3]` (patch grid per video, videos in row order, then left to right).
        second_per_grid_ts: `[num_videos]` seconds per temporal grid step (= temporal_patch_size / sampled fps);
            None: 1.0 for every video (as Qwen's code).
        merge_size: the vision tower's spatial merge size (2 for Qwen2.5-VL).
        tokens_per_second: `vision_config.tokens_per_second` (2 for Qwen2.5-VL).
        rule: where text resumes after a video: "qwen" (max + 1) | "transformers5" (module docstring).

    Returns:
        int64 `[3, batch, seq]`. Padding after a sequence's end simply continues the text positions (it is masked
        out of every loss).

    Raises:
        ValueError: a run of video tokens whose length does not match its grid, more runs than grids, or an
            unknown `rule`.
    """
    check_rule(rule)
    b, s = input_ids.shape
    out = torch.empty(3, b, s, dtype=torch.long)
    vid = 0
    n_grids = 0 if video_grid_thw is None else len(video_grid_thw)
    for i in range(b):
        cursor, nxt = 0, 0  # next token index to place; position of the next text token
        for v0, v1 in _runs(input_ids[i] == video_token_id):
            if vid >= n_grids:
                raise ValueError(f"row {i}: video token run [{v0}, {v1}) has no grid (video_grid_thw has {n_grids})")
            grid = video_grid_thw[vid]
            n = int(grid.prod()) // merge_size**2
            if v1 - v0 != n:
                raise ValueError(f"row {i}: {v1 - v0} video tokens in [{v0}, {v1}) but grid {grid.tolist()} needs {n}")
            out[:, i, cursor:v0] = (torch.arange(v0 - cursor) + nxt).expand(3, -1)
            start = nxt + v0 - cursor
            spg = float(second_per_grid_ts[vid]) if second_per_grid_ts is not None else 1.0
            vpos = video_position_ids(start, grid, merge_size, spg, tokens_per_second)
            out[:, i, v0:v1] = vpos
            if rule == "qwen":
                nxt = int(vpos.max()) + 1
            else:
                nxt = start + max(int(grid[1]), int(grid[2])) // merge_size
            cursor = v1
            vid += 1
        out[:, i, cursor:] = (torch.arange(s - cursor) + nxt).expand(3, -1)
    return out


def continue_positions(last: torch.Tensor, n: int) -> torch.Tensor:
    """Positions of `n` text tokens appended after a sequence whose last position is `last` `[3, batch, 1]`.

    Returns int64 `[3, batch, n]` (all three components equal the text position, as for any text token). Under the
    "qwen" rule the last prompt token holds the largest position, so this is Qwen's "max + 1" for the response too.
    """
    return last + 1 + torch.arange(n).view(1, 1, n)
