"""InputBuilder on real records (issue 14): caches keyed by what determines a clip's content, never by record id;
prompts over `max_prompt_tokens` get fewer frames or are skipped with the reason; rewards by problem type."""

import os
import types

import numpy as np
import pytest
import torch

from dvr1.config import VideoConfig
from dvr1.data.build import write_webm
from dvr1.data.schema import SkipReport, VideoQARecord
from dvr1.rl.rewards import score_response
from dvr1.train.inputs import InputBuilder, PromptTooLong, prepare_or_skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from dvr1.models.qwen2_5_vl import load_hf_config, vl_info
    from dvr1.models.tiny import make_tiny_checkpoint
    from transformers import AutoTokenizer

    path = make_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny")), ["Q? A. red B. blue Output the answer"] * 8,
                                seed=0, vocab_size=300, text={"num_hidden_layers": 2})
    return vl_info(load_hf_config(path)), AutoTokenizer.from_pretrained(path)


def _clip(path, value):
    write_webm(str(path), np.full((16, 56, 56, 3), value, dtype=np.uint8), fps=8)


def _rec(video, rid="same", question="Q?"):
    return VideoQARecord(id=rid, video=str(video), question=question, options=["red", "blue"], answer="A",
                         task="colour", segment=None, fps=8.0, duration=2.0, source="s", split="train", meta={})


def _builder(tiny, **kw):
    info, tok = tiny
    return InputBuilder(types.SimpleNamespace(info=info, visual=None), tok,
                        VideoConfig(num_frames=8, min_pixels=3136, max_pixels=3136), **kw)


def test_two_records_with_one_id_get_their_own_videos(tmp_path, tiny):
    """Problem 2: the old cache (by record id) gave the second record the first one's frames."""
    _clip(tmp_path / "dark.webm", 20)
    _clip(tmp_path / "bright.webm", 230)
    b = _builder(tiny)
    dark, bright = b.video(_rec(tmp_path / "dark.webm")).video, b.video(_rec(tmp_path / "bright.webm")).video
    assert float(dark.mean()) < -1.0 and float(bright.mean()) > 1.0  # normalised: far apart
    # a file rewritten in place (new size/mtime) is decoded again
    _clip(tmp_path / "dark.webm", 230)
    os.utime(tmp_path / "dark.webm", ns=(1, 1))
    assert torch.allclose(b.video(_rec(tmp_path / "dark.webm")).video, bright)
    assert len(b._videos) == 3


def test_over_long_prompt_gets_fewer_frames_or_is_skipped(tmp_path, tiny):
    _clip(tmp_path / "a.webm", 100)
    full = _builder(tiny).prepare(_rec(tmp_path / "a.webm"))
    assert full.video_grid_thw.tolist() == [[4, 4, 4]]  # 8 frames of 56x56: 4 x 4 x 4 / 2^2 = 16 video tokens
    n = full.request.prompt_ids.numel()
    b = _builder(tiny, max_prompt_tokens=n - 8)  # room for 2 of the 4 temporal patches
    p = b.prepare(_rec(tmp_path / "a.webm"))
    assert p.video_grid_thw.tolist() == [[2, 4, 4]] and p.request.prompt_ids.numel() == n - 8
    assert p.second_per_grid == pytest.approx(2 * full.second_per_grid)
    report = SkipReport()
    b = _builder(tiny, max_prompt_tokens=n - 13, skips=report)  # not even one temporal patch (4 tokens) fits
    rec = _rec(tmp_path / "a.webm", rid="long")
    rec.where = "x.jsonl:7"
    with pytest.raises(PromptTooLong, match=rf"prompt of {n} tokens \({n - 16} of text\) exceeds "
                                            rf"model.max_prompt_tokens={n - 13} even with one temporal patch"):
        b.prepare(rec)
    assert prepare_or_skip(b, rec) is None
    assert [(s.file, s.line, s.id, s.reason, s.phase) for s in report.entries] == [
        ("x.jsonl", 7, "long", "prompt_too_long", "use")]


def test_rewards_by_problem_type():
    ans = lambda a: f"<think>t</think><answer>{a}</answer>"  # noqa: E731
    assert score_response(ans("B"), "multiple_choice", "B") == {"format": 1.0, "accuracy": 1.0, "iou": 0.0,
                                                                "total": 2.0}
    assert score_response(ans("3"), "numerical", "3")["accuracy"] == 1.0
    assert score_response(ans("3.00"), "numerical", "3")["accuracy"] == 0.0  # Video-R1's decimal-mark rule
    assert score_response(ans("STOP"), "ocr", "STOP")["accuracy"] == 1.0
    # mean ROUGE-1/2/L F: P = 3/4, R = 1 -> R1 = RL = 6/7; bigrams 2/3 and 2/2 -> R2 = 4/5
    assert score_response(ans("a dog runs fast"), "free_form", "a dog runs")["accuracy"] == pytest.approx(
        (6 / 7 + 6 / 7 + 4 / 5) / 3)
    assert score_response(ans("2.0"), "regression", "2.5")["accuracy"] == pytest.approx(0.8)
    assert score_response(ans("9"), "regression", "2.5")["accuracy"] == 0.0
    # several ground-truth segments: IoU against their union
    sc = score_response(ans("[1.0, 3.0]"), "grounding", "[1.0, 3.0]", [[1.0, 2.0], [2.5, 3.0]])
    assert sc["iou"] == pytest.approx(1.5 / 2.0)
    sc = score_response(ans("B") + "<glue>[(1.0, 2.0)]</glue>", "grounded_qa", "B", [[1.0, 2.0], [3.0, 4.0]])
    assert (sc["accuracy"], sc["iou"], sc["format"]) == (1.0, 0.5, 1.0)


def test_default_prompt_budget_is_positions_minus_new_tokens(tmp_path):
    from dvr1.config import load_config
    from dvr1.models.tiny import make_tiny_checkpoint
    from dvr1.train.job import max_prompt_tokens

    path = make_tiny_checkpoint(str(tmp_path / "t"), ["a b c"] * 4, seed=0, vocab_size=280,
                                text={"num_hidden_layers": 2})
    assert max_prompt_tokens(load_config(None, ["rollout.max_new_tokens=80"]), path) == 4096 - 80
    assert max_prompt_tokens(load_config(None, ["model.max_prompt_tokens=1000"]), path) == 1000


def test_shuffle_permutes_the_frames_the_vision_tower_sees(tmp_path, tiny):
    """T-GRPO (docs/ALGORITHMS.md §9): prepare(shuffle=g) encodes clean[randperm(T, g)]; positions and text are those
    of the ordered prompt, and the ordered prompt's cached embeddings are not touched."""
    path = tmp_path / "ramp.webm"
    write_webm(str(path), np.stack([np.full((56, 56, 3), 20 + 14 * t, dtype=np.uint8) for t in range(16)]), fps=8)
    b = _builder(tiny)
    seen = []
    encode = b._encode  # every encode of the builder goes through it
    b._encode = lambda video, embed=True: (seen.append(video.clone()), encode(video, embed))[1]
    rec = _rec(path)
    ordered = b.prepare(rec)
    clean = b.video(rec).video
    shuffled = b.prepare(rec, shuffle=torch.Generator().manual_seed(7))
    perm = torch.randperm(clean.shape[0], generator=torch.Generator().manual_seed(7))
    assert shuffled.frame_order == perm.tolist() != list(range(8)) and ordered.frame_order is None
    assert len(seen) == 2 and torch.equal(seen[0], clean) and torch.equal(seen[1], clean[perm])
    assert torch.equal(shuffled.request.prompt_ids, ordered.request.prompt_ids)
    assert torch.equal(shuffled.request.position_ids, ordered.request.position_ids)
    b.prepare(rec)  # the ordered prompt again: its cached embeddings, no new encode
    assert len(seen) == 2
