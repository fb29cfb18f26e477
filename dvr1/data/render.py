"""Rendering primitives of the synthetic video builders (:mod:`dvr1.data.build`, :mod:`dvr1.vidchain.data`):
anti-aliased moving shapes on a background, straight non-touching paths, and real-footage backgrounds (random
crop/flip/resize, two source windows stitched).

Every function draws from the ``numpy.random.Generator`` it is given, in a fixed order, so a record's RNG fixes its
pixels (the builders' byte-identical output relies on it). Frames are uint8 ``[T, H, W, 3]`` RGB; positions are
pixels, (x, y) from the top-left corner; times are frame indices.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from PIL import Image

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 225),
    "yellow": (235, 200, 40),
}
DIRECTIONS = ("left", "right", "up", "down")
DIR_VEC = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


class BuildError(RuntimeError):
    """The builder cannot produce the requested dataset (e.g. a split has no real source, objects cannot be placed)."""


def render(bg: np.ndarray, objects: list[dict]) -> np.ndarray:
    """Draw anti-aliased objects on ``bg`` (uint8 ``[T, H, W, 3]`` or ``[H, W, 3]``).

    Each object: ``shape`` ("disc" | "square"), ``color`` RGB, ``radius`` (pixels; half side for squares),
    ``path`` float ``[T, 2]`` centre (x, y) in pixels per frame, NaN where the object is not shown.

    Returns:
        uint8 ``[T, H, W, 3]``.
    """
    t = objects[0]["path"].shape[0] if objects else bg.shape[0]
    frames = np.broadcast_to(bg, (t, *bg.shape[-3:])).astype(np.float32) if bg.ndim == 3 else bg.astype(np.float32)
    h, w = frames.shape[1:3]
    for obj in objects:
        color = np.asarray(obj["color"], np.float32)
        r = float(obj["radius"])
        for k in range(t):
            cx, cy = obj["path"][k]
            if np.isnan(cx):
                continue
            x0, x1 = max(0, int(cx - r) - 2), min(w, int(cx + r) + 3)
            y0, y1 = max(0, int(cy - r) - 2), min(h, int(cy + r) + 3)
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
            if obj["shape"] == "disc":
                dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
            else:
                dist = np.maximum(np.abs(xx - cx), np.abs(yy - cy))
            alpha = np.clip(r + 0.5 - dist, 0.0, 1.0)[..., None]
            frames[k, y0:y1, x0:x1] = frames[k, y0:y1, x0:x1] * (1 - alpha) + color * alpha
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A muted background ``[size, size, 3]`` uint8: plain, two-colour gradient, or static noise."""
    kind = ("plain", "gradient", "noise")[int(rng.integers(3))]
    base = rng.integers(70, 170) + rng.integers(-20, 21, size=3)
    if kind == "plain":
        img = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    elif kind == "gradient":
        other = rng.integers(70, 170) + rng.integers(-20, 21, size=3)
        ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
        ramp = ramp[:, None] if rng.integers(2) else ramp[None, :]
        img = base + (other - base) * np.broadcast_to(ramp, (size, size))[..., None]
    else:
        img = base + rng.normal(0.0, 14.0, size=(size, size, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8), kind


def linear_path(p0, p1, t: int) -> np.ndarray:
    a = np.linspace(0.0, 1.0, t, dtype=np.float64)[:, None]
    return (1 - a) * np.asarray(p0, np.float64) + a * np.asarray(p1, np.float64)


def separated(objs: list[dict], gap: float = 3.0) -> bool:
    """True if no two objects come closer than ``gap`` pixels in any frame where both are shown."""
    for a, b in itertools.combinations(objs, 2):
        d = np.linalg.norm(a["path"] - b["path"], axis=1)
        d = d[~np.isnan(d)]
        if d.size and d.min() < a["radius"] + b["radius"] + gap:
            return False
    return True


def random_mover(
    rng,
    size: int,
    t: int,
    radius: float,
    direction: str | None = None,
    min_move: float = 0.0,
    max_move: float | None = None,
) -> np.ndarray:
    """A straight path float ``[t, 2]`` (x, y pixels) kept inside the frame, moving between ``min_move`` and
    ``max_move`` pixels in total; with ``direction`` it moves exactly that way (no sideways drift)."""
    lo, hi = radius + 2, size - radius - 2
    max_move = float(size) if max_move is None else max_move
    for _ in range(1000):
        p0 = rng.uniform(lo, hi, size=2)
        dist = rng.uniform(min_move, max_move)
        if direction is None:
            ang = rng.uniform(0.0, 2 * math.pi)
            v = np.array([math.cos(ang), math.sin(ang)])
        else:
            v = np.asarray(DIR_VEC[direction])
        p1 = p0 + v * dist
        if lo <= p1.min() and p1.max() <= hi:
            return linear_path(p0, p1, t)
    raise BuildError(f"cannot place a moving object (size={size}, radius={radius})")


def place_objects(rng, size, t, specs, **mover_kw) -> list[dict]:
    """Paths for ``specs`` (dicts with shape/color/radius[/direction]) that never come within 3 pixels of
    each other: objects are placed one at a time, each retried against those already placed."""
    for _ in range(50):
        objs = []
        for spec in specs:
            for _ in range(100):
                cand = dict(spec, path=random_mover(rng, size, t, spec["radius"], spec.get("direction"), **mover_kw))
                if separated(objs + [cand]):
                    objs.append(cand)
                    break
            else:
                break
        if len(objs) == len(specs):
            return objs
    raise BuildError(f"cannot place {len(specs)} non-touching objects in {size}x{size}")


def crop_resize(frames: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Random square crop (80-100 % of the short side), optional horizontal flip, resize to ``size``
    (PIL bicubic); the same crop for all frames. uint8 ``[T, h, w, 3]`` -> ``[T, size, size, 3]``."""
    h, w = frames.shape[1:3]
    side = int(round(min(h, w) * rng.uniform(0.8, 1.0)))
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    flip = bool(rng.integers(2))
    out = []
    for f in frames[:, y0 : y0 + side, x0 : x0 + side]:
        img = Image.fromarray(np.ascontiguousarray(f)).resize((size, size), Image.BICUBIC)
        out.append(np.asarray(img)[:, ::-1] if flip else np.asarray(img))
    return np.ascontiguousarray(np.stack(out))


def decimal_boundaries(num_frames: int, fps: float) -> list[int]:
    """Frame indices ``k`` in ``[0, num_frames]`` whose time ``k / fps`` is exact at one decimal."""
    ks = [k for k in range(num_frames + 1) if abs(round(k / fps, 1) - k / fps) < 1e-9]
    return ks if len(ks) >= 3 else list(range(num_frames + 1))


def stitched_footage(rng: np.random.Generator, sources: list, durations: list[float], fps: float,
                     size: int) -> tuple[np.ndarray, object, object]:
    """A real-footage background from two source windows of one split (the grounding and dense-captioning clips).

    Draws, in order: sources ``a`` and ``b`` (each uniform over ``sources``, may be equal), a length from
    ``durations`` (seconds; capped at two windows), then per half (``a`` gives ``T // 2`` frames, ``b`` the rest) a
    start offset in that window and a :func:`crop_resize`.

    Args:
        sources: objects with ``.frames`` uint8 ``[Wf, h, w, 3]`` (every window ``Wf`` frames) and ``.name``;
        fps: frames per second; size: output side (pixels).
    Returns: (uint8 ``[T, size, size, 3]``, a, b).
    """
    a, b = sources[int(rng.integers(len(sources)))], sources[int(rng.integers(len(sources)))]
    wf = a.frames.shape[0]
    total = min(2 * wf, int(round(float(rng.choice(durations)) * fps)))
    la = total // 2
    parts = []
    for src, n in ((a, la), (b, total - la)):
        o = int(rng.integers(0, wf - n + 1))
        parts.append(crop_resize(src.frames[o : o + n], rng, size))
    return np.concatenate(parts), a, b
