"""SFT validation loss (`sft.val_every`, `dvr1.train.sft.SFTTrainer.validate`) and the readable run plots
(`dvr1.plots.rolling_mean`, `dvr1.train.metrics.plot_run`), issue 16.

The validation loss equals the teacher-forced NLL per response token of the SFT targets under transformers'
Qwen2_5_VLForConditionalGeneration loaded from the same checkpoint; the val pass leaves training untouched (the same
training rows with and without it) and a run stopped mid-stage and resumed logs exactly the rows of an
uninterrupted one.
"""

import json
import os

import numpy as np
import pytest
import torch

from dvr1.config import load_config
from dvr1.data.build import write_webm
from dvr1.data.schema import VideoQARecord
from dvr1.models.tiny import make_tiny_checkpoint

TEXTS = ["Which way does the square move? A. left B. right <think>I look.</think><answer>A</answer>"] * 20


def moving_square_clip(root, name, i, brightness_step=25, record_id=None):
    """`root/{name}.webm`: 8 frames of 56x56, a square of brightness ``brightness_step * i + 50`` moving right (odd
    `i`, answer B) or left (even `i`, answer A); and its motion-direction record (id `record_id`, default `name`).
    Shared with test_freeze_vision."""
    frames = np.zeros((8, 56, 56, 3), dtype=np.uint8)
    for t in range(8):  # a bright square moving left or right
        x = 4 + 5 * t if i % 2 else 40 - 5 * t
        frames[t, 20:32, x:x + 12] = brightness_step * i + 50
    path = root / f"{name}.webm"
    write_webm(str(path), frames, fps=8)
    return VideoQARecord(id=record_id or name, video=str(path), question="Which way does the square move?",
                         options=["left", "right"], answer="B" if i % 2 else "A", task="motion_direction",
                         segment=None, fps=8.0, duration=1.0, source="s", split="train", meta={})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sftval")
    ckpt = make_tiny_checkpoint(str(root / "tiny"), TEXTS, seed=3, vocab_size=320, text={"num_hidden_layers": 2})
    train = [moving_square_clip(root, f"t{i}", i) for i in range(4)]
    val = [moving_square_clip(root, f"v{i}", i + 4) for i in range(3)]
    return ckpt, train, val


def _setup(data, run_dir, *extra):
    from transformers import AutoTokenizer

    from dvr1.parallel.setup import parallel_info, seed_everything
    from dvr1.train import job
    from dvr1.train.inputs import InputBuilder
    from dvr1.train.sft import SFTTrainer

    ckpt, train, val = data
    cfg = load_config(None, ["log.wandb=false", "log.progress=false", "sft.batch_size=2", "sft.warmup=0",
                             "sft.lr=1e-3", "video.num_frames=4", "video.min_pixels=3136", "video.max_pixels=3136",
                             f"run_dir={run_dir}", *extra])
    seed_everything(0)
    policy = job.build_policy(cfg, ckpt, parallel_info(), train_vision=not cfg.model.freeze_vision)
    model, opt, sched = job.optimizer_for(policy, cfg.sft.lr, 0.0, 1.0, 0, cfg)
    tok = AutoTokenizer.from_pretrained(ckpt)
    trainer = SFTTrainer(cfg, model, opt, sched, InputBuilder(policy, tok, cfg.video), tok, train, val_records=val,
                         val_builder=InputBuilder(policy, tok, cfg.video))
    return cfg, model, opt, sched, trainer


def _hf_target_nll(hf, trainer, builder, record):
    """(per-token NLL float64 `[len(target)]` of the record's SFT target under transformers' model `hf`, positions
    given and the clip's pixels passed (the tower trains), answer-token flags, target ids)."""
    from dvr1.train.inputs import build_batch

    p = builder.prepare(record, embed=False)
    resp, flags, _ = trainer.target_tokens(record)
    pos = build_batch([(p, resp)], trainer.pad).position_ids
    ids = torch.cat([p.request.prompt_ids, torch.tensor(resp)]).view(1, -1)
    L = p.request.prompt_ids.numel()
    with torch.no_grad():
        logits = hf(input_ids=ids, position_ids=pos, pixel_values_videos=p.request.pixel_values_videos,
                    video_grid_thw=p.request.video_grid_thw,
                    second_per_grid_ts=torch.tensor([p.second_per_grid])).logits[0]
    return -torch.log_softmax(logits[L - 1:-1].double(), -1).gather(1, ids[0, L:, None])[:, 0], flags, resp


def test_val_loss_equals_hugging_face_nll(parallel_state_1, data, tmp_path):
    """3 val records in batches of 2 (the last one short), microbatches of 2: the mean NLL per response token equals
    transformers' model on each prompt + target, positions given (the tower trained, so the clip's pixels reach the
    HF model)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    ckpt, _, val = data
    _, _, _, _, trainer = _setup(data, tmp_path, "model.freeze_vision=false", "sft.micro_batch_size=2")
    got, got_answer = trainer.validate(answer=True)
    assert trainer.validate() == got

    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    nll, n, a_nll, a_n = 0.0, 0, 0.0, 0
    for r in val:
        tok_nll, flags, resp = _hf_target_nll(hf, trainer, trainer.val_builder, r)
        assert resp == trainer.target_ids(r) and len(flags) == len(resp) and 0 < sum(flags) < len(resp)
        nll += tok_nll.sum().item()
        n += len(resp)
        a_nll += tok_nll[torch.tensor(flags)].sum().item()
        a_n += sum(flags)
    assert got == pytest.approx(nll / n, rel=1e-5)
    assert got_answer == pytest.approx(a_nll / a_n, rel=1e-5)
    assert trainer.periodic(1, 10) == {} and trainer.periodic(50, 60).keys() == {"val_loss", "val_answer_loss"}
    last = trainer.periodic(7, 7)  # the last step, no update between
    assert last["val_loss"] == pytest.approx(got, rel=1e-6) and last["val_answer_loss"] == pytest.approx(got_answer,
                                                                                                          rel=1e-6)


def test_answer_spans_are_the_answer_and_its_option_letter():
    """What `sft.answer_weight` weights: the <answer> content and "option X" of the answer letter only (not another
    option's letter, not a letter inside a word); grounding's span; none without an <answer> tag."""
    from dvr1.data.prompts import answer_spans

    rec = VideoQARecord(id="r", video="v.webm", question="Which way?", options=["left", "right", "up"], answer="B",
                        task="motion_direction", segment=None, fps=8.0, duration=1.0, source="s", split="train",
                        meta={})
    text = "<think>Not option A. It moves right, which is option B. Options Bx.</think><answer>B</answer>"
    assert [text[a:b] for a, b in answer_spans(rec, text)] == ["B", "B"]
    assert answer_spans(rec, text)[0][0] == text.index("option B.") + len("option ")
    assert answer_spans(rec, text)[1][0] == text.index("<answer>") + len("<answer>")
    ground = VideoQARecord(id="g", video="v.webm", question="When?", options=None, answer="[1.0, 2.5]",
                           task="grounding", segment=[1.0, 2.5], fps=8.0, duration=3.0, source="s", split="train",
                           meta={})
    t2 = "<think>At 1.0 s, option B.</think><answer>[1.0, 2.5]</answer>"
    assert [t2[a:b] for a, b in answer_spans(ground, t2)] == ["[1.0, 2.5]"]
    assert answer_spans(rec, "<think>option B</think>") == [(len("<think>option "), len("<think>option B"))]
    assert answer_spans(rec, "no tags") == []


def test_answer_weight_loss_is_the_weighted_mean_nll(parallel_state_1, data, tmp_path):
    """One SFT step with sft.answer_weight=3: the logged loss (before the update) equals
    Σ_t w_t·NLL_t / n_tokens computed with transformers' model on the step's two records (w = 3 on answer tokens,
    1 elsewhere); weight 1 gives the plain mean; a negative weight is refused."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    ckpt = data[0]
    for w in (1.0, 3.0):
        _, _, _, _, trainer = _setup(data, tmp_path / str(w), f"sft.answer_weight={w}", "model.freeze_vision=false")
        state = trainer.sampler.state_dict()
        recs = [trainer.sampler.next() for _ in range(2)]
        trainer.sampler.load_state_dict(state)
        hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
        total, plain, n = 0.0, 0.0, 0
        for r in recs:
            tok_nll, flags, resp = _hf_target_nll(hf, trainer, trainer.builder, r)
            wt = torch.tensor([w if f else 1.0 for f in flags], dtype=torch.float64)
            assert sum(flags) > 0
            total += float((wt * tok_nll).sum())
            plain += float(tok_nll.sum())
            n += len(resp)
        out = trainer.step()
        assert out["loss"] == pytest.approx(total / n, rel=1e-5)
        assert out["nll"] == pytest.approx(plain / n, rel=1e-5)  # the unweighted mean, logged beside it
    with pytest.raises(ValueError, match=r"sft.answer_weight must be >= 0, got -1.0"):
        _setup(data, tmp_path / "neg", "sft.answer_weight=-1")


def _run(data, run_dir, *extra, fail_at=None):
    """`job._train_loop` over 5 SFT steps, checkpoints every 2; `fail_at`: step() raises there (a crash)."""
    from dvr1.train import job

    ckpt = data[0]
    cfg, model, opt, sched, trainer = _setup(data, run_dir, *extra)
    if fail_at is not None:
        step, calls = trainer.step, []

        def crashing():
            calls.append(1)
            if len(calls) == fail_at:
                raise RuntimeError("crash")
            return step()

        trainer.step = crashing
    job._train_loop(cfg, "sft", trainer, model, opt, sched, 5, 2, 1, ckpt)
    with open(os.path.join(run_dir, "metrics", "sft.jsonl")) as f:
        return [json.loads(l) for l in f]


def test_val_pass_leaves_training_alone_and_resume_logs_the_same_rows(parallel_state_1, data, tmp_path):
    rows = _run(data, tmp_path / "a", "sft.val_every=2")
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4, 5]  # every 2 steps and at the last
    plain = _run(data, tmp_path / "off", "sft.val_every=0")
    assert all("val_loss" not in r for r in plain)
    assert all("val_answer_loss" in r for r in rows if "val_loss" in r)
    assert [{k: v for k, v in r.items() if not k.startswith("val_")} for r in rows] == plain  # training did not move
    with pytest.raises(RuntimeError, match="crash"):
        _run(data, tmp_path / "b", "sft.val_every=2", fail_at=4)  # steps 1-3 logged, checkpoint at step 2
    resumed = _run(data, tmp_path / "b", "sft.val_every=2")  # resumes from step 2, re-logs 3-5
    assert resumed == rows


def test_rolling_mean_is_the_trailing_window_mean():
    from dvr1.plots import rolling_mean

    ys = [1.0, 3.0, 2.0, 8.0, 0.5, 4.0, 7.0]
    for w in (1, 3, 10):
        want = [float(np.mean(ys[max(0, i - w + 1): i + 1])) for i in range(len(ys))]
        assert rolling_mean(ys, w) == pytest.approx(want, rel=1e-12)
    assert rolling_mean(ys, 3)[3] == pytest.approx((3.0 + 2.0 + 8.0) / 3)  # hand-worked
    with pytest.raises(ValueError, match="window"):
        rolling_mean(ys, 0)


def test_plot_run_draws_raw_and_smoothed_rl_curves_and_both_sft_losses(tmp_path, monkeypatch):
    """What plot_run hands matplotlib: per RL reward series the raw points faint and their rolling mean over
    RL_SMOOTH steps bold; the SFT train and val losses; the PNGs are written."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from dvr1.plots import rolling_mean
    from dvr1.train.metrics import RL_SMOOTH, plot_run

    os.makedirs(tmp_path / "metrics")
    rng = np.random.default_rng(0)
    rl = [{"step": s, "reward/mean": float(rng.random()), "reward/accuracy": float(rng.random()),
           "vanishing_advantage_ratio": 0.5} for s in range(1, 26)]
    sft = [{"step": s, "loss": 3.0 / s, "nll": 1.0 / s, **({"val_loss": 2.0 / s, "val_answer_loss": 4.0 / s}
                                                           if s % 5 == 0 else {})} for s in range(1, 16)]
    for name, rows in (("rl", rl), ("sft", sft)):
        with open(tmp_path / "metrics" / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    drawn = []
    orig = Axes.plot

    def spy(self, *args, **kw):
        drawn.append((self.get_title(), [list(map(float, a)) for a in args[:2]], kw))
        return orig(self, *args, **kw)

    monkeypatch.setattr(Axes, "plot", spy)
    paths = plot_run(str(tmp_path))
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["rl_reward.png", "rl_vanishing_advantage.png", "sft_loss.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    reward = drawn[:4]  # reward/mean raw, smoothed; reward/accuracy raw, smoothed (format / iou absent)
    for i, key in enumerate(("reward/mean", "reward/accuracy")):
        raw, smooth = reward[2 * i], reward[2 * i + 1]
        assert raw[1] == [list(range(1, 26)), [r[key] for r in rl]] and raw[2]["alpha"] < 1
        assert smooth[1][0] == raw[1][0] and smooth[2]["label"] == key and smooth[2]["linewidth"] > 1
        assert smooth[1][1] == pytest.approx(rolling_mean([r[key] for r in rl], RL_SMOOTH))
    sft_lines = drawn[-3:]  # the unweighted train NLL (not the weighted loss), val, val answer tokens
    assert sft_lines[0][1] == [list(range(1, 16)), [1.0 / s for s in range(1, 16)]]
    assert sft_lines[1][1] == [[5.0, 10.0, 15.0], [0.4, 0.2, 2.0 / 15]]
    assert sft_lines[2][1] == [[5.0, 10.0, 15.0], [0.8, 0.4, 4.0 / 15]]
    assert [d[2]["label"] for d in sft_lines] == ["train (batch of the step)", "validation (val split)",
                                                  "validation, answer tokens only"]
