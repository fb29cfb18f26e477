"""The tiny checkpoint's text-only reading warm-up (dvr1.models.tiny.reading_warmup, model.tiny_reading_steps)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from dvr1.models.tiny import make_tiny_checkpoint, reading_text

OPTIONS = [["left", "up", "down", "right"], ["played forward", "played in reverse", "frozen on a single frame",
                                              "played forward, then backward"], ["1", "2", "3", "4"],
           ["1, 3, 2", "2, 1, 3", "3, 2, 1", "1, 2, 3"]]
TEXTS = [f"{'ABCD'[i]}. {o}" for opts in OPTIONS for i, o in enumerate(opts)] + [
    reading_text(opts, [3, 2, 1, 0])[1] for opts in OPTIONS] + ["<think>x</think><answer>B</answer>"] * 4


def test_reading_text_writes_the_option_list_and_maps_each_value_to_its_letter():
    prompt, target = reading_text(["left", "up", "down"], [2, 0, 1, 2])
    assert prompt == "A. left\nB. up\nC. down\n"
    assert target == "down is option C. left is option A. up is option B. down is option C."


def test_zero_steps_saves_the_same_weights_as_before(tmp_path):
    a = make_tiny_checkpoint(str(tmp_path / "a"), TEXTS, seed=3, vocab_size=300)
    b = make_tiny_checkpoint(str(tmp_path / "b"), TEXTS, seed=3, vocab_size=300, reading_options=OPTIONS,
                             reading_steps=0)
    wa, wb = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert "reading" not in json.load(open(f"{b}/dvr1_tiny.json"))


def test_warmup_trains_the_language_model_only_and_records_its_result(tmp_path):
    a = make_tiny_checkpoint(str(tmp_path / "a"), TEXTS, seed=3, vocab_size=300)
    b = make_tiny_checkpoint(str(tmp_path / "b"), TEXTS, seed=3, vocab_size=300, reading_options=OPTIONS,
                             reading_steps=25)
    wa, wb = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
    vision = [k for k in wa if ".visual." in k or k.startswith("visual.")]
    assert vision and all(torch.equal(wa[k], wb[k]) for k in vision)  # the tower is untouched
    changed = [k for k in wa if k not in vision and not torch.equal(wa[k], wb[k])]
    assert any("embed_tokens" in k for k in changed) and any("layers.0.self_attn" in k for k in changed)
    info = json.load(open(f"{b}/dvr1_tiny.json"))["reading"]
    assert info["steps"] == 25
    # the warm-up's target text (the option values, the fixed " is option" words) is being learned
    assert info["loss"] < 0.7 * info["first_loss"], info
    assert 0.0 <= info["letter_accuracy"] <= 1.0 and 0.0 <= info["lookup_accuracy"] <= 1.0
    # every list has 4 options: statements 1-3 of the first round, elimination alone gives 1/4, 1/3, 1/2
    assert info["lookup_chance"] == pytest.approx((1 / 4 + 1 / 3 + 1 / 2) / 3)


def test_warmup_without_multiple_choice_records_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="^reading_warmup: no multiple-choice record to build the warm-up from$"):
        make_tiny_checkpoint(str(tmp_path / "a"), TEXTS, seed=3, vocab_size=300, reading_options=[],
                             reading_steps=5)


def test_tiny_rope_knobs_reach_the_checkpoint_config(tmp_path):
    """model.tiny_rope_theta / tiny_mrope_section (examples/tiny_cpu.yaml: 1e4, [2, 4, 10]) are what the saved
    config.json carries, so transformers, megatron-core and vLLM all build the same rotary table; the defaults are
    Qwen's 1e6 / [4, 6, 6]."""
    from pathlib import Path

    from dvr1.config import load_config
    from dvr1.models.tiny import text_overrides

    repo = Path(__file__).resolve().parents[2]
    for cfg_path, want in ((repo / "examples/tiny_cpu.yaml", (10000.0, [2, 4, 10])), (None, (1e6, [4, 6, 6]))):
        model_cfg = load_config(None if cfg_path is None else str(cfg_path)).model
        out = make_tiny_checkpoint(str(tmp_path / str(want[0])), TEXTS, seed=3, vocab_size=300,
                                   text=text_overrides(model_cfg))
        rope = json.load(open(f"{out}/config.json"))["text_config"]["rope_parameters"]
        assert (rope["rope_theta"], rope["mrope_section"]) == want


def test_copy_warmup_runs_first_trains_the_language_model_only_and_records_its_result(tmp_path):
    a = make_tiny_checkpoint(str(tmp_path / "a"), TEXTS, seed=3, vocab_size=300)
    b = make_tiny_checkpoint(str(tmp_path / "b"), TEXTS, seed=3, vocab_size=300, copy_steps=20)
    c = make_tiny_checkpoint(str(tmp_path / "c"), TEXTS, seed=3, vocab_size=300, copy_steps=0)
    wa, wb, wc = (load_file(f"{x}/model.safetensors") for x in (a, b, c))
    assert all(torch.equal(wa[k], wc[k]) for k in wa) and "copy" not in json.load(open(f"{c}/dvr1_tiny.json"))
    vision = [k for k in wa if ".visual." in k or k.startswith("visual.")]
    assert vision and all(torch.equal(wa[k], wb[k]) for k in vision)  # the tower is untouched
    assert any("layers.0.self_attn" in k and not torch.equal(wa[k], wb[k]) for k in wa)
    meta = json.load(open(f"{b}/dvr1_tiny.json"))
    info = meta["copy"]
    # 20 steps are far from the induction phase change: the random init starts near uniform over its vocabulary and
    # only the unigram fit moves the loss; copy accuracy stays near chance (1 / the token pool)
    assert info["steps"] == 20 and abs(info["first_loss"] - math.log(meta["model_vocab"])) < 0.5, info
    assert info["loss"] < info["first_loss"] and info["copy_accuracy"] < 0.2, info


def _motion_record():
    from dvr1.data.schema import VideoQARecord

    return VideoQARecord(id="m0", video="v.webm", question="In which direction does the green disc move?",
                         options=["right", "left", "up", "down"], answer="D", task="motion_direction", segment=None,
                         fps=8.0, duration=2.0, source="render:m0", split="train",
                         meta={"direction": "down", "color": "green", "shape": "disc", "size": 112,
                               "start": [67.1, 14.2], "end": [67.1, 63.0]})


def test_lookup_drill_texts_state_each_option_and_answer_its_letter():
    from dvr1.data.prompts import format_question, lookup_drill_texts

    r = _motion_record()
    got = lookup_drill_texts(r)
    trace = ("<think>I follow the green disc from the first frame to the last. It starts near the top centre and ends "
             "near the centre. So it moves {}.</think><answer>")
    assert got == [(format_question(r), trace.format(v), letter)
                   for v, letter in (("right", "A"), ("left", "B"), ("up", "C"), ("down", "D"))]
    r.options = None
    assert lookup_drill_texts(r) == []


def test_answer_drill_trains_the_language_model_only_and_records_its_result(tmp_path):
    from dvr1.data.prompts import lookup_drill_texts

    samples = lookup_drill_texts(_motion_record())
    a = make_tiny_checkpoint(str(tmp_path / "a"), TEXTS, seed=3, vocab_size=300)
    b = make_tiny_checkpoint(str(tmp_path / "b"), TEXTS, seed=3, vocab_size=300, answer_samples=samples,
                             answer_steps=15)
    wa, wb = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
    vision = [k for k in wa if ".visual." in k or k.startswith("visual.")]
    assert vision and all(torch.equal(wa[k], wb[k]) for k in vision)
    assert any("layers.3.self_attn" in k and not torch.equal(wa[k], wb[k]) for k in wa)
    info = json.load(open(f"{b}/dvr1_tiny.json"))["answer"]
    # the letter's NLL starts near ln(vocabulary) (5.97 measured, ln 384 = 5.95) and falls in the LR warm-up (4.81)
    assert info["steps"] == 15 and abs(info["first_loss"] - math.log(384)) < 0.5, info
    assert info["loss"] < info["first_loss"] - 0.5 and 0.0 <= info["letter_accuracy"] <= 1.0, info
    with pytest.raises(ValueError, match="^answer_drill: no multiple-choice record whose SFT reasoning states its "
                                         "answer's value$"):
        make_tiny_checkpoint(str(tmp_path / "c"), TEXTS, seed=3, vocab_size=300, answer_samples=[], answer_steps=3)
