"""Perception warm-up of the tiny checkpoint's vision tower (dvr1.data.perception, dvr1.models.tiny.vision_warmup,
model.tiny_vision_steps)."""

import functools
import json
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dvr1.data.perception import PRESENCE_CLASSES, direction_class, perception_sample, token_labels
from dvr1.data.render import DIRECTIONS
from dvr1.models.tiny import make_tiny_checkpoint

TEXTS = ["How many red discs move?", "<think>x</think><answer>B</answer>", "A. up\nB. left"] * 4


def test_direction_is_the_larger_axis_of_the_whole_displacement():
    assert DIRECTIONS[direction_class([[10, 10], [30, 15]])] == "right"
    assert DIRECTIONS[direction_class([[10, 10], [5, 40]])] == "down"
    assert DIRECTIONS[direction_class([[10, 40], [12, 5]])] == "up"
    assert DIRECTIONS[direction_class([[10, 10], [0, 20]])] == "left"  # a tie goes to x


def test_token_labels_by_hand():
    # 2 temporal patches of 2 frames, 2 x 2 tokens of 28 px
    a = {"class": 3, "path": [[10, 10], [12, 10], [40, 10], [44, 10]]}  # token (0, 0), then (0, 1); right
    b = {"class": 5, "path": [[50, 50], [50, 46], [50, 44], [50, 40]]}  # token (1, 1) twice; up
    c = {"class": 0, "path": [[54, 12], [54, 14], [54, 16], [54, 18]]}  # token (0, 1) twice; down
    presence, direction = token_labels([a, b, c], (2, 2, 2), 28.0)
    assert presence.shape == (8, len(PRESENCE_CLASSES)) and direction.shape == (8,)
    want = torch.zeros(8, len(PRESENCE_CLASSES))
    want[0, 3] = want[3, 5] = want[1, 0] = 1  # patch 0: a at (0, 0), b at (1, 1), c at (0, 1)
    want[4 + 1, 3] = want[4 + 1, 0] = want[4 + 3, 5] = 1  # patch 1: a and c share (0, 1), b at (1, 1)
    assert torch.equal(presence, want)
    right, up, down = (DIRECTIONS.index(d) for d in ("right", "up", "down"))
    assert direction.tolist() == [right, down, -1, up, -1, -1, -1, up]  # the shared token has no direction


def test_count_labels_by_hand():
    # patch 0: a, b (class 0) alone in (0, 0) and (0, 1); c and d (class 1) share (1, 1). Patch 1: c moved to (1, 0)
    a, b = {"class": 0, "path": [[5, 5]] * 4}, {"class": 0, "path": [[40, 5]] * 4}
    c, d = {"class": 1, "path": [[40, 40]] * 2 + [[5, 40]] * 2}, {"class": 1, "path": [[40, 40]] * 4}
    e = {"class": 2, "path": [[5, 40]] * 2 + [[40, 5]] * 2}  # patch 0: alone in (1, 0); patch 1: shares (0, 1)
    presence, direction, count = token_labels([a, b, c, d, e], (2, 2, 2), 28.0, counts=True)
    assert count.tolist() == [2, 2, 1, -1, 2, -1, 2, 2]  # where a token holds one object: its class's objects
    assert torch.equal(count >= 0, direction >= 0)
    plain = token_labels([a, b, c, d, e], (2, 2, 2), 28.0)
    assert all(torch.equal(x, y) for x, y in zip((presence, direction), plain))


def test_token_labels_rejects_a_path_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"^token_labels: a path of 3 frames for 2 temporal patches of 2$"):
        token_labels([{"class": 0, "path": [[1, 1]] * 3}], (2, 2, 2), 28.0)


def test_sample_matches_the_tower_layout_and_its_rng():
    pv, thw, presence, direction = perception_sample(np.random.default_rng(7), size=112, num_frames=8)
    assert thw.tolist() == [4, 8, 8] and pv.shape == (4 * 8 * 8, 3 * 2 * 14 * 14)
    assert presence.shape == (4 * 4 * 4, len(PRESENCE_CLASSES)) and direction.shape == (64,)
    per_patch = presence.reshape(4, 16, -1).sum((1, 2))
    assert ((per_patch >= 1) & (per_patch <= 4)).all() and len(set(per_patch.tolist())) == 1
    again = perception_sample(np.random.default_rng(7), size=112, num_frames=8)
    assert torch.equal(again[0], pv) and torch.equal(again[2], presence) and torch.equal(again[3], direction)
    with pytest.raises(ValueError, match=r"^perception_sample: num_frames=7 must be a positive multiple of 2 "):
        perception_sample(np.random.default_rng(7), num_frames=7)
    counted = perception_sample(np.random.default_rng(7), size=112, num_frames=8, counts=True)
    assert len(counted) == 5 and all(torch.equal(x, y) for x, y in zip(counted, (pv, thw, presence, direction)))


def _sample(rng):
    return perception_sample(rng, size=56, num_frames=4)


def test_vision_warmup_trains_the_tower_only_and_records_its_result(tmp_path):
    a = make_tiny_checkpoint(str(tmp_path / "a"), TEXTS, seed=3, vocab_size=300)
    b = make_tiny_checkpoint(str(tmp_path / "b"), TEXTS, seed=3, vocab_size=300, vision_sample=_sample,
                             vision_steps=60)
    wa, wb = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
    vision = [k for k in wa if ".visual." in k or k.startswith("visual.")]
    assert vision and all(torch.equal(wa[k], wb[k]) for k in wa if k not in vision)  # the LM is untouched
    assert any("merger" in k and not torch.equal(wa[k], wb[k]) for k in vision)
    assert any("blocks.0.attn" in k and not torch.equal(wa[k], wb[k]) for k in vision)
    assert wa.keys() == wb.keys()  # the warm-up head is not saved
    info = json.load(open(f"{b}/dvr1_tiny.json"))["vision"]
    assert info["steps"] == 60 and info["loss"] < 0.9 * info["first_loss"], info  # 2.08 -> 1.77 (measured)
    assert 0.0 <= info["presence_accuracy"] <= 1.0 and 0.0 <= info["direction_accuracy"] <= 1.0


def test_vision_warmup_with_count_labels_trains_a_count_head(tmp_path):
    kw = dict(seed=3, vocab_size=300, vision_steps=30)
    a = make_tiny_checkpoint(str(tmp_path / "a"), TEXTS, vision_sample=_sample, **kw)
    b = make_tiny_checkpoint(str(tmp_path / "b"), TEXTS, vision_sample=functools.partial(
        perception_sample, size=56, num_frames=4, counts=True), **kw)
    ia, ib = (json.load(open(f"{p}/dvr1_tiny.json"))["vision"] for p in (a, b))
    assert "count_accuracy" not in ia and 0.0 <= ib["count_accuracy"] <= 1.0
    assert ib["first_loss"] > ia["first_loss"] + 1.0  # + the count CE over 8 classes (~ln 8 = 2.08) at the start
    wa, wb = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
    assert wa.keys() == wb.keys() and any(not torch.equal(wa[k], wb[k]) for k in wa if "merger" in k)


def test_vision_warmup_beside_the_lm_warmups_gives_the_same_checkpoint(tmp_path):
    """make_tiny_checkpoint runs the tower's warm-up in a spawned process while the LM's run (vision_in_parallel):
    the saved weights and results are those of running them one after the other, bit for bit."""
    sample = functools.partial(perception_sample, size=56, num_frames=4)  # pickles into the spawned process
    kw = dict(seed=3, vocab_size=300, copy_steps=4, vision_sample=sample, vision_steps=6)
    a = make_tiny_checkpoint(str(tmp_path / "a"), TEXTS, vision_in_parallel=False, **kw)
    b = make_tiny_checkpoint(str(tmp_path / "b"), TEXTS, vision_in_parallel=True, **kw)
    wa, wb = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    c = load_file(make_tiny_checkpoint(str(tmp_path / "c"), TEXTS, seed=3, vocab_size=300, copy_steps=4)
                  + "/model.safetensors")
    assert any(not torch.equal(wa[k], c[k]) for k in wa if "merger" in k)  # the tower did train in both
    ia, ib = (json.load(open(f"{p}/dvr1_tiny.json")) for p in (a, b))
    assert ia == ib and ia["vision"]["steps"] == 6 and ia["copy"]["steps"] == 4


def test_the_vision_worker_takes_one_thread_and_gives_it_back_with_the_same_checkpoint(tmp_path, monkeypatch):
    """At 2 threads the LM's warm-ups run on 1 while the tower's runs beside them on the other, and on 2 from the
    first step after it has returned; the checkpoint equals the one-thread, one-after-the-other one, bit for bit."""
    from dvr1.models import tiny

    sample = functools.partial(perception_sample, size=56, num_frames=4)
    kw = dict(seed=3, vocab_size=300, copy_steps=4, vision_sample=sample, vision_steps=6)
    before = torch.get_num_threads()
    seen, real = [], tiny.copy_warmup

    def spy(*args, on_step=None, **kwargs):
        def hook():
            on_step()
            seen.append(torch.get_num_threads())

        hook()  # the worker is still importing torch: this process holds 1 thread
        for _ in range(1200):  # then wait (<= 120 s) until the hook has given the worker's thread back
            if seen[-1] == 2:
                break
            time.sleep(0.1)
            hook()
        return real(*args, on_step=hook, **kwargs)

    try:
        torch.set_num_threads(1)
        a = make_tiny_checkpoint(str(tmp_path / "a"), TEXTS, vision_in_parallel=False, **kw)
        torch.set_num_threads(2)
        monkeypatch.setattr(tiny, "copy_warmup", spy)
        b = make_tiny_checkpoint(str(tmp_path / "b"), TEXTS, vision_in_parallel=True, **kw)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert seen[0] == 1 and seen[-5:] == [2] * 5 and after == 2
    wa, wb = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.load(open(f"{a}/dvr1_tiny.json")) == json.load(open(f"{b}/dvr1_tiny.json"))


def test_progress_false_silences_every_warmup_bar(tmp_path, capfd):
    """`progress=False` (the jobs pass log.progress) prints no tqdm bar, the spawned tower worker's included;
    `progress=True` prints each warm-up's."""
    sample = functools.partial(perception_sample, size=56, num_frames=4)
    kw = dict(seed=3, vocab_size=300, copy_steps=2, vision_sample=sample, vision_steps=2, vision_in_parallel=True)
    capfd.readouterr()
    make_tiny_checkpoint(str(tmp_path / "a"), TEXTS, progress=False, **kw)
    quiet = capfd.readouterr()
    assert "warm-up" not in quiet.err + quiet.out
    make_tiny_checkpoint(str(tmp_path / "b"), TEXTS, progress=True, **kw)
    loud = capfd.readouterr().err
    assert "copy warm-up" in loud and "vision warm-up" in loud


def test_vision_steps_without_clips_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="^make_tiny_checkpoint: vision_steps > 0 needs a vision_sample to draw "
                                         "warm-up clips from$"):
        make_tiny_checkpoint(str(tmp_path / "a"), TEXTS, seed=3, vocab_size=300, vision_steps=5)


def test_the_config_knobs_reach_the_warmup_clips():
    from dvr1.config import load_config
    from dvr1.train.job import tiny_vision_warmup

    kw = tiny_vision_warmup(load_config(None, ["model.tiny_vision_steps=5"]), 56)
    assert kw["vision_steps"] == 5 and len(kw["vision_sample"](np.random.default_rng(0))) == 4
    cfg = load_config(None, ["model.tiny_vision_max_objects=7", "model.tiny_vision_counts=true"])
    sample = tiny_vision_warmup(cfg, 56)["vision_sample"]
    assert sample.keywords["max_objects"] == 7 and len(sample(np.random.default_rng(0))) == 5
