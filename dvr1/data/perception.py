"""Perception warm-up clips: rendered moving objects with a label for every merged video token.

The tiny checkpoint's vision tower is random; a real Qwen2.5-VL checkpoint's tower comes pretrained and already
encodes what is where and how it moves. :func:`dvr1.models.tiny.vision_warmup` (``model.tiny_vision_steps``) trains
the tiny tower + merger on these clips as the stand-in for that pretraining (docs/SEEING_POLICY.md), as the reading
warm-up is the stand-in for the language model's. The clips are drawn fresh from their own RNG with the builders'
primitives (:mod:`dvr1.data.render`: backgrounds, anti-aliased discs and squares on straight non-touching paths);
they are not records of any split and carry no question or answer.

Labels follow the tower's output layout (:func:`dvr1.data.processing.patchify`): merged tokens in ``(t, h, w)``
raster order, ``t`` the temporal patch (``TEMPORAL_PATCH_SIZE`` frames), each token ``patch_size * merge_size``
pixels a side of the resized frame.
"""

from __future__ import annotations

import numpy as np
import torch

from dvr1.data.processing import MERGE_SIZE, TEMPORAL_PATCH_SIZE, preprocess_video
from dvr1.data.render import COLORS, DIRECTIONS, background, place_objects, render

SHAPES = ("disc", "square")
# presence classes, colour-major: "red disc", "red square", "green disc", ...
PRESENCE_CLASSES = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)


def direction_class(path: np.ndarray) -> int:
    """Index into :data:`dvr1.data.render.DIRECTIONS` of a path's whole-clip displacement ``path[-1] - path[0]``
    (x, y pixels, y down): the larger axis wins, x on a tie."""
    dx, dy = (np.asarray(path[-1], np.float64) - np.asarray(path[0], np.float64)).tolist()
    if abs(dx) >= abs(dy):
        return DIRECTIONS.index("left" if dx < 0 else "right")
    return DIRECTIONS.index("up" if dy < 0 else "down")


def token_labels(objects: list[dict], grid: tuple[int, int, int], token_px: float,
                 temporal_patch: int = TEMPORAL_PATCH_SIZE, counts: bool = False) -> tuple[torch.Tensor, ...]:
    """Per-token labels of rendered objects.

    Args:
        objects: dicts with ``"class"`` (index into :data:`PRESENCE_CLASSES`) and ``"path"`` float ``[T, 2]``
            (x, y pixels per frame, ``T = grid[0] * temporal_patch``).
        grid: ``(t, h, w)`` merged tokens (temporal patches, rows, columns).
        token_px: a merged token's side in the path's pixels.

    Returns:
        ``presence`` float32 ``[t * h * w, len(PRESENCE_CLASSES)]`` (1 where an object's centre, averaged over the
        temporal patch's frames, falls in the token) and ``direction`` int64 ``[t * h * w]`` (the
        :func:`direction_class` of the token's object where it holds exactly one, else -1); with `counts` also
        ``count`` int64 ``[t * h * w]``: where the token holds exactly one object, how many objects of that object's
        class the token's temporal patch holds in all (>= 1), else -1.

    Raises:
        ValueError: a path whose length is not ``grid[0] * temporal_patch``.
    """
    gt, gh, gw = grid
    presence = torch.zeros(gt, gh, gw, len(PRESENCE_CLASSES))
    count = torch.zeros(gt, gh, gw, dtype=torch.long)
    direction = torch.full((gt, gh, gw), -1, dtype=torch.long)
    owner = torch.full((gt, gh, gw), -1, dtype=torch.long)  # the class of a token's (last) object
    per_class = torch.zeros(gt, len(PRESENCE_CLASSES), dtype=torch.long)  # objects of each class per temporal patch
    for obj in objects:
        path = np.asarray(obj["path"], np.float64)
        if path.shape[0] != gt * temporal_patch:
            raise ValueError(f"token_labels: a path of {path.shape[0]} frames for {gt} temporal patches of "
                             f"{temporal_patch}")
        d = direction_class(path)
        for k in range(gt):
            cx, cy = path[k * temporal_patch:(k + 1) * temporal_patch].mean(0)
            i, j = min(gh - 1, max(0, int(cy // token_px))), min(gw - 1, max(0, int(cx // token_px)))
            presence[k, i, j, obj["class"]] = 1.0
            count[k, i, j] += 1
            direction[k, i, j] = d
            owner[k, i, j] = obj["class"]
            per_class[k, obj["class"]] += 1
    direction[count != 1] = -1
    out = (presence.reshape(gt * gh * gw, -1), direction.reshape(-1))
    if not counts:
        return out
    owner[count != 1] = -1
    same = torch.gather(per_class, 1, owner.clamp(min=0).reshape(gt, -1)).reshape(gt, gh, gw)
    return out + (torch.where(owner >= 0, same, torch.full_like(same, -1)).reshape(-1),)


def perception_sample(rng: np.random.Generator, size: int = 112, num_frames: int = 8, min_pixels: int = 3136,
                      max_pixels: int = 12544, max_objects: int = 4, counts: bool = False):
    """One warm-up clip: 1-``max_objects`` objects (random colour of :data:`dvr1.data.render.COLORS`, disc or
    square, radius 4.5-8 % of the frame; half move straight left/right/up/down, half at a random angle; 15-60 % of
    the frame in all) on a plain, gradient or noise background, ``num_frames`` frames of ``size`` pixels,
    preprocessed as the policy's inputs are (:func:`dvr1.data.processing.preprocess_video` at
    ``min_pixels``/``max_pixels``).

    Returns:
        ``(pixel_values_videos [N, 1176], video_grid_thw [3], presence, direction)``, the labels of
        :func:`token_labels` for the tower's merged tokens (and its ``count`` labels last, with `counts`).

    Raises:
        ValueError: ``num_frames`` not a positive multiple of the temporal patch.
    """
    if num_frames < TEMPORAL_PATCH_SIZE or num_frames % TEMPORAL_PATCH_SIZE:
        raise ValueError(f"perception_sample: num_frames={num_frames} must be a positive multiple of "
                         f"{TEMPORAL_PATCH_SIZE} (the temporal patch)")
    names = list(COLORS)
    specs = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        c, s = int(rng.integers(len(names))), int(rng.integers(len(SHAPES)))
        d = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))] if rng.integers(2) else None
        specs.append({"shape": SHAPES[s], "color": COLORS[names[c]], "radius": size * rng.uniform(0.045, 0.08),
                      "direction": d, "class": c * len(SHAPES) + s})
    bg, _ = background(rng, size)
    objs = place_objects(rng, size, num_frames, specs, min_move=size * 0.15, max_move=size * 0.6)
    pixel_values, thw = preprocess_video(render(bg, objs), min_pixels, max_pixels)
    grid = (int(thw[0]), int(thw[1]) // MERGE_SIZE, int(thw[2]) // MERGE_SIZE)
    return (pixel_values, thw) + token_labels(objs, grid, size / grid[2], counts=counts)
