"""tools/da_aug_check.py (issue 16, DVR1 §3.3): the noise conditions feed the vision tower exactly the clip plus
σ0·level·N(0, I) drawn from the fixed seed (level 0 = the plain eval's inputs, bit for bit); the hint conditions put
the first floor(n·G/(L+1)) sentences of the record's SFT reasoning into the prompt; the table / JSON / PNG outputs."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dvr1.config import load_config
from dvr1.data.build import write_webm
from dvr1.data.schema import VideoQARecord
from dvr1.models.tiny import make_tiny_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import da_aug_check  # noqa: E402

SENT = ["The square starts near the left edge.", "It moves over the frames.", "Its speed stays constant.",
        "The path is straight.", "The motion never stops.", "So it goes right."]
# (number of reasoning sentences n, expected hint sentences at guidance 1, 2, 3 = n*G//4, worked by hand)
TRACES = [(6, [1, 3, 4]), (4, [1, 2, 3]), (2, [0, 1, 1])]
TEXTS = ["Which way does the square move? A. left B. right <think>" + " ".join(SENT) + "</think><answer>B</answer>"] * 20
SEED = 7


@pytest.fixture(scope="module")
def setup(tmp_path_factory, parallel_state_1):
    from transformers import AutoTokenizer

    from dvr1.parallel.setup import seed_everything
    from dvr1.rollout.native import NativeRolloutEngine
    from dvr1.train import job
    from dvr1.train.inputs import InputBuilder

    root = tmp_path_factory.mktemp("dacheck")
    ckpt = make_tiny_checkpoint(str(root / "tiny"), TEXTS, seed=3, vocab_size=320, text={"num_hidden_layers": 2})
    recs = []
    for i, (n, _) in enumerate(TRACES):
        frames = np.zeros((8, 56, 56, 3), dtype=np.uint8)
        for t in range(8):
            frames[t, 20:32, 4 + 5 * t:16 + 5 * t] = 60 * i + 50
        path = root / f"clip{i}.webm"
        write_webm(str(path), frames, fps=8)
        recs.append(VideoQARecord(id=f"r{i}", video=str(path), question="Which way does the square move?",
                                  options=["left", "right"], answer="B", task=["motion", "count"][i % 2],
                                  segment=None, fps=8.0, duration=1.0, source="s", split="test", meta={},
                                  reasoning=" ".join(SENT[:n])))
    cfg = load_config(None, ["log.wandb=false", "video.num_frames=4", "video.min_pixels=3136",
                             "video.max_pixels=3136", "da_aug.sigma0=0.3"])
    seed_everything(0)
    policy = job.build_policy(cfg, ckpt, parallel_state_1, trainable=False)
    tok = AutoTokenizer.from_pretrained(ckpt)

    class Recording(InputBuilder):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.seen = []  # (record id, prepare kwargs, Prepared)

        def prepare(self, record, **kw):
            p = super().prepare(record, **kw)
            self.seen.append((record.id, kw, p))
            return p

    builder = Recording(policy, tok, cfg.video)
    engine = NativeRolloutEngine(policy, seed=0)
    return cfg, recs, builder, engine, tok


@pytest.fixture(scope="module")
def result(setup):
    from dvr1.train.evaluate import evaluate

    cfg, recs, builder, engine, tok = setup
    builder.seen.clear()
    plain = evaluate(engine, builder, tok, recs, max_new_tokens=3)
    plain_seen = list(builder.seen)
    builder.seen.clear()
    res = da_aug_check.run_check(engine, builder, tok, recs, cfg.da_aug, max_new_tokens=3, seed=SEED)
    return plain, plain_seen, list(builder.seen), res


def test_noise_reaches_the_vision_tower_with_sigma0_times_level(setup, result):
    cfg, recs, builder, _, _ = setup
    plain, plain_seen, seen, res = result
    by = {}  # condition index -> [(id, kw, prepared)]
    for k in range(len(seen) // len(recs)):
        by[k] = seen[k * len(recs):(k + 1) * len(recs)]
    sigma0 = 0.3
    for level in range(4):
        gen = torch.Generator().manual_seed(SEED)  # the reference draw: plain torch, records in order
        for (rid, kw, p), (prid, _, pp), rec in zip(by[level], plain_seen, recs):
            assert rid == prid == rec.id and "video" in kw and "hint" not in kw
            clean = builder.video(rec).video
            eps = torch.randn(clean.shape, generator=gen)
            assert torch.allclose(kw["video"] - clean, sigma0 * level * eps, atol=1e-6)
            ref = builder.encode(clean + sigma0 * level * eps)[0]
            assert torch.allclose(p.request.video_embeds, ref, atol=1e-5)
            assert torch.equal(p.request.prompt_ids, pp.request.prompt_ids)
            if level == 0:  # the unaugmented inputs of plain eval, exactly
                assert torch.equal(p.request.video_embeds, pp.request.video_embeds)
                assert torch.equal(p.request.position_ids, pp.request.position_ids)
            else:
                assert (p.request.video_embeds - pp.request.video_embeds).abs().max() > 1e-3
    noise0 = res["conditions"][0]
    assert noise0["condition"] == "noise 0" and noise0["accuracy"] == plain["accuracy"]
    assert noise0["per_task"] == {t: d["accuracy"] for t, d in plain["per_task"].items()}
    assert noise0["outputs"] == plain["outputs"]  # noise 0 decodes exactly what plain eval decodes
    assert [c["sigma"] for c in res["conditions"][:4]] == pytest.approx([0.0, 0.3, 0.6, 0.9])


def test_hints_in_the_prompt_with_the_rule_sentence_counts(setup, result):
    _, recs, _, _, _ = setup
    _, plain_seen, seen, res = result
    hinted = seen[4 * len(recs):]
    assert len(hinted) == 3 * len(recs)
    for g in range(3):
        for (rid, kw, p), (n, counts), (_, _, pp) in zip(hinted[g * len(recs):(g + 1) * len(recs)], TRACES,
                                                          plain_seen):
            k = counts[g]
            want = " ".join(SENT[:k])
            if k:
                assert kw["hint"] == want and f"Hint: {want}" in p.prompt_text
                assert k == n or SENT[k] not in p.prompt_text  # nothing past the rule's prefix
            else:  # an empty hint: evaluated without one, as DA-Aug leaves the sample unaugmented
                assert kw["hint"] is None and "Hint:" not in p.prompt_text
                assert p.prompt_text == pp.prompt_text
            assert "Hint:" not in pp.prompt_text
    rows = res["conditions"][4:]
    assert [r["empty_hints"] for r in rows] == [1, 0, 0]
    assert [r["mean_hint_sentences"] for r in rows] == pytest.approx([2 / 3, 2.0, 8 / 3])


def test_table_json_and_plot(result, tmp_path):
    _, _, _, res = result
    assert [c["condition"] for c in res["conditions"]] == ["noise 0", "noise 1", "noise 2", "noise 3",
                                                          "hint 1", "hint 2", "hint 3"]
    assert res["tasks"] == ["count", "motion"]
    for c in res["conditions"]:
        assert c["n"] == 3 and c["n_per_task"] == {"count": 1, "motion": 2}
        assert c["accuracy"] == pytest.approx((c["per_task"]["count"] + 2 * c["per_task"]["motion"]) / 3)
    table = da_aug_check.format_table(res).splitlines()
    assert table[0] == "| condition | σ or empty hints | n | accuracy | count | motion |"
    assert len(table) == 2 + 7 and table[3].startswith("| noise 1 | σ=0.3 | 3 | **")
    assert table[6].startswith("| hint 1 | 1 empty | 3 |")
    da_aug_check.write(res, str(tmp_path))
    assert json.load(open(tmp_path / "da_aug_check.json")) == json.loads(json.dumps(res))
    md = open(tmp_path / "da_aug_check.md").read()
    assert md.startswith(table[0]) and "DVR1 §3.3 assumes both" in md and "empty hint" in md and "hint 1 1/3." in md
    assert open(tmp_path / "da_aug_check.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_monotone_verdict():
    m = da_aug_check._monotone
    assert m([0.5, 0.4, 0.4, 0.2], -1) and not m([0.5, 0.6, 0.4, 0.2], -1) and not m([0.3, 0.3], -1)
    assert m([0.2, 0.3, 0.5], +1) and not m([0.2, 0.1, 0.5], +1)
    res = {"settings": {"max_level": 1}, "noise_falls": True, "hints_rise": False,
           "conditions": [{"condition": "noise 0", "accuracy": 0.5}, {"condition": "noise 1", "accuracy": 0.25},
                          {"condition": "hint 1", "accuracy": 0.5}]}
    v = da_aug_check.verdict(res)
    assert "falls as noise rises (levels 0..1: 0.500 → 0.250)" in v
    assert "does NOT rise monotonically" in v and "0.500 → 0.500" in v and "does not hold here" in v
