"""The VidChain tiny checkpoint's caption drill (`dvr1.vidchain.drill`, `dvr1.models.tiny.caption_drill`):

- a drill sample's answer is the CoTasks turn-0 answer of its own events (parsed back: count, numbered captions with
  the builder's caption form, percent segments), its frames show an object only inside its events, and its seconds
  per grid step are the policy's rule (temporal patch / sampled fps); equal seeds give equal samples;
- the builder (`build_dense_dataset`) draws through the same `dense_events`, so its records are unchanged by the
  drill (fixed events, captions measured before `dense_events` was split out of it);
- `caption_drill`'s padded, batched rows with dvr1's mrope positions (`mrope_rule="transformers5"`) give the same
  first-step loss and held-out accuracies as Hugging Face's own forward of each sample alone (HF computing the
  positions from ``second_per_grid_ts``), and it trains both the language model and the tower;
- the one-line errors: caption steps without a sample; the main (video-QA) job rejects ``model.tiny_caption_steps``.
"""

import functools
import re

import numpy as np
import pytest
import torch

from dvr1.data.processing import preprocess_video
from dvr1.data.render import COLORS, DIRECTIONS
from dvr1.vidchain.cotasks import parse_captions, parse_count, parse_segments, to_percent
from dvr1.vidchain.data import SHAPES, dense_events
from dvr1.vidchain.drill import drill_sample

CAPTION = re.compile(rf"^a ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) moves ({'|'.join(DIRECTIONS)})$")


def test_drill_answers_are_the_clips_own_turn0_answers():
    kinds = set()
    for seed in range(30):
        s = drill_sample(np.random.default_rng(seed), size=56)
        again = drill_sample(np.random.default_rng(seed), size=56)
        assert s["answer"] == again["answer"] and torch.equal(s["pixel_values_videos"], again["pixel_values_videos"])
        kinds.add(s["kind"])
        assert s["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
        n_video = s["prompt"].count("<|video_pad|>")
        assert n_video == int(s["video_grid_thw"].prod()) // 4
        # 8 frames sampled from a 4/5/6 s clip: 2 / (8 / d) seconds per grid step
        assert s["second_per_grid"] in (1.0, 1.25, 1.5)
        if s["kind"] == "count_seg_cap":
            assert "How many events" in s["prompt"] and parse_count(s["answer"]) in (1, 2, 3)
        elif s["kind"] == "cap_seg":
            caps = parse_captions(s["answer"])
            assert caps and all(CAPTION.match(c) for c in caps) and len(caps) <= 3
            assert len({c.split()[1] for c in caps}) == len(caps)  # one colour per event
        else:
            assert s["kind"] == "ground" and "When does this happen" in s["prompt"]
            caption = re.search(r'"(.*)"\?', s["prompt"]).group(1)
            assert CAPTION.match(caption) and len(parse_segments(s["answer"])) == 1
    assert kinds == {"count_seg_cap", "cap_seg", "ground"}


def test_dense_events_draws_objects_only_inside_their_segments():
    rng = np.random.default_rng(4)
    bg = np.full((40, 48, 48, 3), 120, np.uint8)  # 5 s at 8 fps
    frames, events, captions, meta = dense_events(rng, bg, 8.0, 3)
    assert len(events) == len(captions) == 3 and all(CAPTION.match(c) for c in captions)
    assert [m["segment"] for m in meta] == events
    shown = np.array([(f != 120).any() for f in frames])
    inside = np.zeros(40, bool)
    for s, e in events:
        assert (s * 2).is_integer() and (e * 2).is_integer() and e - s >= 0.5  # the 0.5 s grid
        inside[round(s * 8):round(e * 8)] = True
    assert np.array_equal(shown, inside)
    assert all(a[1] <= b[0] for a, b in zip(events, events[1:]))  # no overlap
    segs = [(to_percent(s, 5.0), to_percent(e, 5.0)) for s, e in events]
    assert segs == sorted(segs)


def test_builder_records_unchanged(tmp_path):
    """`dense_events` was split out of the builder's clip function: the same seed still gives the same records
    (values measured on the builder before the split, commit ce729ae)."""
    from dvr1.vidchain.data import build_dense_dataset, read_dense_records

    build_dense_dataset(str(tmp_path), seed=5, n_train=3, n_val=0, n_test=0, size=32, max_events=3)
    got = [(r.duration, r.events, r.captions) for r in read_dense_records(tmp_path / "train.jsonl")]
    assert got == BUILDER_SEED5


BUILDER_SEED5 = [
    (6.0, [[0.0, 3.5], [5.5, 6.0]], ["a blue square moves left", "a yellow square moves left"]),
    (4.0, [[0.0, 0.5], [1.0, 1.5], [3.5, 4.0]], ["a blue disc moves up", "a green square moves right",
                                                 "a red disc moves left"]),
    (5.0, [[0.5, 4.5]], ["a green square moves right"])]


@pytest.fixture(scope="module")
def drilled(tmp_path_factory):
    """A 2-layer tiny checkpoint whose caption drill ran 6 steps on 56 px drill clips with transformers 5's mrope
    rule -- the one HF's own forward uses, and on these clips (2 x 2 merged tokens, temporal positions up to 9) not
    the "qwen" rule's positions, so a drill that ignored `mrope_rule` would not match; returns (path, the same
    checkpoint without the drill, the drill's result, the sample function)."""
    from dvr1.models.tiny import make_tiny_checkpoint

    sample = functools.partial(drill_sample, size=56)
    rng = np.random.default_rng(0)
    texts = []
    for _ in range(60):
        s = sample(rng)
        texts += [s["prompt"].replace("<|video_pad|>", ""), s["answer"]]
    out = str(tmp_path_factory.mktemp("drilled"))
    undrilled = make_tiny_checkpoint(str(tmp_path_factory.mktemp("init")), texts, seed=2, vocab_size=400,
                                     text={"num_hidden_layers": 2})
    make_tiny_checkpoint(out, texts, seed=2, vocab_size=400, text={"num_hidden_layers": 2},
                         caption_sample=sample, caption_steps=6, mrope_rule="transformers5")
    import json
    import os

    with open(os.path.join(out, "dvr1_tiny.json")) as f:
        result = json.load(f)["caption"]
    return out, undrilled, result, sample


def _hf(path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()


def _alone(model, tok, s):
    """HF's own forward of one sample, no padding, positions from ``second_per_grid_ts``: (logits of the answer
    tokens and <|im_end|> [n, vocab], those tokens [n])."""
    p = tok(s["prompt"], add_special_tokens=False)["input_ids"]
    a = tok(s["answer"], add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    ids = torch.tensor([p + a])
    with torch.no_grad():  # transformers 5.19 places the video tokens by mm_token_type_ids (2 = video)
        logits = model(input_ids=ids, pixel_values_videos=s["pixel_values_videos"],
                       video_grid_thw=s["video_grid_thw"].view(1, 3),
                       mm_token_type_ids=(ids == model.config.video_token_id).int() * 2,
                       second_per_grid_ts=torch.tensor([s["second_per_grid"]])).logits[0]
    return logits[len(p) - 1:-1], torch.tensor(a)


def test_caption_drill_equals_hf_forward_per_sample(drilled):
    from transformers import AutoTokenizer

    out, undrilled, result, sample = drilled
    tok = AutoTokenizer.from_pretrained(out)
    # the first step's loss: the initial model (same seed, no drill) on the drill's first batch (8 clips; the drill
    # draws them with the checkpoint's seed, 2)
    init = _hf(undrilled)
    rng = np.random.default_rng(2)
    nll, n = 0.0, 0
    for _ in range(8):
        logits, target = _alone(init, tok, sample(rng))
        nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        n += len(target)
    assert result["first_loss"] == pytest.approx(nll / n, rel=1e-5)
    # held-out accuracies: 48 clips of rng seed 2 + 1 on the drilled model
    model = _hf(out)
    rng = np.random.default_rng(3)
    hits, whole = {}, {}
    for _ in range(48):
        s = sample(rng)
        logits, target = _alone(model, tok, s)
        ok = logits.argmax(-1) == target
        hits.setdefault(s["kind"], []).append((int(ok.sum()), len(target)))
    want_tok = {k: sum(h for h, _ in v) / sum(n for _, n in v) for k, v in hits.items()}
    want_ans = {k: sum(h == n for h, n in v) / len(v) for k, v in hits.items()}
    assert result["token_accuracy"].keys() == want_tok.keys() == {"count_seg_cap", "cap_seg", "ground"}
    for k in want_tok:
        assert result["token_accuracy"][k] == pytest.approx(want_tok[k], abs=1e-12)
        assert result["answer_accuracy"][k] == pytest.approx(want_ans[k], abs=1e-12)
    assert result["steps"] == 6 and len(result["loss_per_100_steps"]) == 1


def test_caption_drill_trains_the_lm_and_the_tower(drilled):
    from safetensors.torch import load_file

    out, undrilled, _, _ = drilled
    a, b = load_file(f"{undrilled}/model.safetensors"), load_file(f"{out}/model.safetensors")
    moved = {k for k in a if not torch.equal(a[k], b[k])}
    assert any(k.startswith("visual.") for k in moved)  # the saved names: visual.*, model.* (the LM), lm_head
    assert any(k.startswith("model.layers.") for k in moved)


def test_caption_drill_errors(tmp_path):
    from dvr1.config import ConfigError, load_config
    from dvr1.models.tiny import make_tiny_checkpoint
    from dvr1.train.job import ensure_model

    with pytest.raises(ValueError, match=r"^make_tiny_checkpoint: caption_steps > 0 needs a caption_sample to draw "
                                         r"drill clips from$"):
        make_tiny_checkpoint(str(tmp_path / "x"), ["a b c"] * 8, vocab_size=300, caption_steps=2)
    cfg = load_config(None, [f"run_dir={tmp_path}", "model.tiny_caption_steps=5", "log.wandb=false"])
    with pytest.raises(ConfigError, match=r"^model\.tiny_caption_steps=5: the caption drill is for dense-captioning "
                                          r"records \(dvr1 vidchain\); this job's video-QA checkpoint has none \(set "
                                          r"it to 0\)$"):
        ensure_model(cfg)
