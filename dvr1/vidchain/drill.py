"""The VidChain tiny checkpoint's caption drill: dense-captioning clips on synthetic backgrounds, asked as the first
turn of each CoTasks chain (docs/VIDCHAIN.md, "The caption drill in the tiny checkpoint").

A real Qwen2.5-VL arrives at CoTasks SFT able to say what happens in a clip and when (its pretraining has dense
captioning and temporal grounding). The tiny checkpoint's stand-in is `dvr1.models.tiny.caption_drill` on the clips
of :func:`drill_sample`: the dense set's events (:func:`dvr1.vidchain.data.dense_events`, the builder's own rule) on
a plain, gradient or noise background (`dvr1.data.render.background`) instead of the set's real footage, so the
drill never sees a clip, a source or a frame of any split. Each sample asks one single-turn question: turn 0 of
``count_seg_cap`` (how many events), of ``cap_seg`` (the numbered captions) or of ``ground`` (one event's segment
given its caption); the later turns of a chain, which condition on earlier answers, are left to CoTasks SFT.
"""

from __future__ import annotations

import numpy as np

from dvr1.data.processing import MERGE_SIZE, TEMPORAL_PATCH_SIZE, num_video_tokens, preprocess_video
from dvr1.data.render import background
from dvr1.data.video_io import sample_frame_indices
from dvr1.vidchain.cotasks import chain_turns, multiturn_prompt
from dvr1.vidchain.data import DURATIONS, dense_events

DRILL_CHAINS = ("count_seg_cap", "cap_seg", "ground")  # turn 0 of each


def drill_sample(rng: np.random.Generator, size: int = 112, num_frames: int = 8, min_pixels: int = 3136,
                 max_pixels: int = 12544, fps: float = 8.0, max_events: int = 3,
                 durations: tuple = DURATIONS) -> dict:
    """One drill clip and question (module docstring).

    Draws, in order: the event count (1..`max_events`), the duration (from `durations`, seconds), the background, the
    events (:func:`dvr1.vidchain.data.dense_events` at `fps`), the chain and, for ``ground``, the event. The clip is
    sampled as the policy's inputs are (`dvr1.data.video_io.sample_frame_indices` with `num_frames`, then
    `dvr1.data.processing.preprocess_video` at `min_pixels` / `max_pixels`), and its seconds per temporal grid step
    are ``temporal_patch_size / (num_frames / duration)`` (`dvr1.train.inputs.InputBuilder.video`'s rule).

    Returns:
        ``{"pixel_values_videos": float32 [N, 1176], "video_grid_thw": int64 [3], "second_per_grid": float (s),
        "prompt": the chat prompt with its video tokens (str), "answer": the ground-truth answer (str, without
        <|im_end|>), "kind": the chain whose turn 0 it is}``.
    """
    n_events = int(rng.integers(1, max_events + 1))
    duration = float(rng.choice(list(durations)))
    total = int(round(duration * fps))
    bg, _ = background(rng, size)
    frames, events, captions, _ = dense_events(rng, np.broadcast_to(bg, (total, size, size, 3)), fps, n_events)
    chain = DRILL_CHAINS[int(rng.integers(len(DRILL_CHAINS)))]
    if chain == "ground":
        j = int(rng.integers(n_events))
        events, captions = [events[j]], [captions[j]]
    turns = chain_turns(chain, events, captions, duration)
    idx = sample_frame_indices(total, fps, num_frames=num_frames)
    pixels, thw = preprocess_video(frames[idx], min_pixels, max_pixels)
    return {"pixel_values_videos": pixels, "video_grid_thw": thw,
            "second_per_grid": TEMPORAL_PATCH_SIZE / (len(idx) / duration),
            "prompt": multiturn_prompt(turns, 0, num_video_tokens(thw, MERGE_SIZE)),
            "answer": turns[0].answer, "kind": chain}
