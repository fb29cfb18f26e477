"""The VidChain job's entry points on a tiny checkpoint and a 5-clip built dense set:

- ``dvr1 eval --task dvc`` writes ``<run_dir>/eval_vidchain_<name>.json`` and prints the table, with the same
  numbers (and decoded answers) as calling `evaluate_vidchain` directly on an independently loaded policy;
- an M-DPO stage stopped after its step-2 checkpoint and resumed to step 4 ends with exactly the parameters of an
  uninterrupted 4-step run (sampling RNG, record draw, Adam state and scheduler are part of the checkpoint), and its
  metrics JSONL (the DPO metrics TRL logs, pairs and gaps per chain step) holds exactly the uninterrupted run's rows;
- the count of greedy outputs that changed between two evaluations (`changed_outputs`) on hand-edited outputs.
"""

import json
import logging

import pytest
import torch

from dvr1.config import load_config
from dvr1.vidchain.cotasks import CHAINS, chain_texts
from dvr1.vidchain.data import build_dense_dataset, read_dense_records

TIOUS = (0.3, 0.5, 0.7, 0.9)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, parallel_state_1):
    """(data_root, HF checkpoint): 2 train / 1 val / 2 test clips; a 2-layer model with a CoTasks tokenizer after 60
    CoTasks SFT steps on the 2 train clips (~5 s), so that its greedy chains parse and its metrics are not all 0."""
    from dvr1.models.export import export_hf
    from dvr1.models.tiny import make_tiny_checkpoint
    from dvr1.train import job
    from dvr1.train.inputs import InputBuilder
    from dvr1.vidchain.sft import ChainInputs, CoTasksSFTTrainer
    from megatron.core.utils import unwrap_model

    root = tmp_path_factory.mktemp("dense")
    build_dense_dataset(str(root), seed=5, n_train=2, n_val=1, n_test=2, size=32, max_events=2)
    train = read_dense_records(root / "train.jsonl")
    texts = []
    for r in train + read_dense_records(root / "val.jsonl"):
        for chain in CHAINS[:2]:
            texts += chain_texts(chain, r.events, r.captions, r.duration)
        texts += chain_texts("ground", r.events[:1], r.captions[:1], r.duration)
    init = make_tiny_checkpoint(str(tmp_path_factory.mktemp("init")), texts * 4, seed=3, vocab_size=400,
                                text={"num_hidden_layers": 2})
    cfg = load_config(None, ["log.wandb=false"])
    policy = job.build_policy(cfg, init, parallel_state_1)
    model, opt, sched = job.optimizer_for(policy, 3e-3, 0.0, 1.0, 5, cfg)
    tok = job.tokenizer(init)
    trainer = CoTasksSFTTrainer(model, opt, sched, ChainInputs(InputBuilder(policy, tok, cfg.video)), train,
                                list(CHAINS), 2, seed=0)
    for _ in range(60):
        trainer.step()
    sft = str(tmp_path_factory.mktemp("sft") / "hf")
    export_hf(unwrap_model(model), init, sft)
    return str(root), sft


def _overrides(run_dir, data_root, **vc):
    base = {"max_new_tokens": 24, "meteor": "true"}
    base.update(vc)
    return [f"run_dir={run_dir}", "log.wandb=false", "log.progress=false", f"vidchain.data_root={data_root}",
            *(f"vidchain.{k}={v}" for k, v in base.items())]


def test_eval_dvc_cli_equals_evaluate_vidchain(tmp_path, tiny, parallel_state_1, capsys):
    from dvr1 import cli
    from dvr1.models.qwen2_5_vl import Qwen25VLPolicy, load_hf_config, load_hf_weights
    from dvr1.rollout.native import NativeRolloutEngine
    from dvr1.train.inputs import InputBuilder
    from dvr1.vidchain.job import evaluate_vidchain, format_results
    from dvr1.vidchain.metrics import default_scorers
    from dvr1.vidchain.sft import ChainInputs
    from transformers import AutoTokenizer

    data_root, ckpt = tiny
    assert cli._parser().parse_args(["eval", "--model", "m"]).task == "qa"  # default: today's QA eval
    ov = _overrides(tmp_path / "run", data_root)
    root, handlers = logging.getLogger(), logging.getLogger().handlers[:]
    try:
        assert cli.main(["eval", "--task", "dvc", "--model", ckpt, "-c", "examples/vidchain_tiny.yaml", "--name",
                         "tiny", "--split", "train", *ov]) == 0
    finally:  # the CLI points logging at this test's captured stderr; give the session its handlers back
        for h in root.handlers[:]:
            root.removeHandler(h)
            h.close()
        for h in handlers:
            root.addHandler(h)
    got = json.loads((tmp_path / "run" / "eval_vidchain_tiny.json").read_text())

    # the same evaluation by hand: policy from the HF files, the train split, pycocoevalcap METEOR + CIDEr
    cfg = load_config("examples/vidchain_tiny.yaml", ov)
    policy = Qwen25VLPolicy(load_hf_config(ckpt))
    load_hf_weights(policy, ckpt)
    policy.requires_grad_(False)
    policy.eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    recs = read_dense_records(f"{data_root}/train.jsonl")
    want = evaluate_vidchain(NativeRolloutEngine(policy, seed=0), ChainInputs(InputBuilder(policy, tok, cfg.video)),
                             tok, recs, default_scorers(meteor=True), max_new_tokens=24, split="train")
    want = json.loads(json.dumps(want))
    assert got == want and got["split"] == "train"
    assert got["n"] == 2 and [s["id"] for s in got["samples"]] == [r.id for r in recs]
    assert all(len(s["answers"]) == 3 for s in got["samples"])
    # every record's greedy answers (chain turns, one grounding answer per event) are kept for `changed_outputs`
    assert [o["id"] for o in got["outputs"]] == [r.id for r in recs]
    assert [o["chain"] for o in got["outputs"]] == [s["answers"] for s in got["samples"]]
    assert [len(o["grounding"]) for o in got["outputs"]] == [len(r.events) for r in recs]
    # the SFT'd model answers in the chain format on its training clips: the metrics are real, not all 0
    assert got["parse_rate"] > 0 and got["SODA_c"] > 0 and got["dvc"]["METEOR"] > 0 and got["grounding"]["mIoU"] > 0
    assert set(got["dvc"]) == {f"{k}@{t}" for k in ("METEOR", "CIDEr", "Precision", "Recall") for t in TIOUS} | {
        "METEOR", "CIDEr", "Precision", "Recall"}
    assert set(got["grounding"]) == {"mIoU", "R1@0.3", "R1@0.5", "R1@0.7"}
    for k in ("METEOR", "CIDEr"):
        assert got["dvc"][k] == pytest.approx(sum(got["dvc"][f"{k}@{t}"] for t in TIOUS) / 4)
    assert format_results({"tiny": got}) in capsys.readouterr().out


def test_eval_split_chooses_the_records_and_guards_the_sft_eval(tmp_path, tiny, parallel_state_1):
    """`vidchain.eval_split=val` is the split `dvr1 eval --task dvc` (no --split) and `dvr1 vidchain` evaluate on; an
    SFT eval of another split given to `dvr1 vidchain --sft-eval` is refused before any M-DPO step."""
    from dvr1.vidchain.job import run, run_eval

    data_root, ckpt = tiny
    cfg = load_config("examples/vidchain_tiny.yaml", _overrides(tmp_path, data_root, meteor="false")
                      + ["vidchain.eval_split=val"])
    res = run_eval(cfg, parallel_state_1, ckpt, "v")
    val = read_dense_records(f"{data_root}/val.jsonl")
    assert res["split"] == "val" and [o["id"] for o in res["outputs"]] == [r.id for r in val]
    assert json.loads((tmp_path / "eval_vidchain_v.json").read_text())["split"] == "val"
    test_eval = tmp_path / "sft_test.json"
    test_eval.write_text(json.dumps({**res, "split": "test"}))
    root, handlers = logging.getLogger(), logging.getLogger().handlers[:]
    try:
        with pytest.raises(ValueError) as e:
            run(cfg, cfg.vidchain, init=ckpt, sft_eval=str(test_eval))
    finally:  # run() points logging at its run directory; give the session its handlers back
        for h in root.handlers[:]:
            root.removeHandler(h)
            h.close()
        for h in handlers:
            root.addHandler(h)
    assert str(e.value) == (f"dvr1 vidchain: --sft-eval {test_eval}: evaluated on the test split; this run "
                            "evaluates on vidchain.eval_split=val")
    assert not (tmp_path / "vidchain_mdpo").exists()


def _mdpo_stage(cfg, ckpt, steps):
    """Fresh policy / reference / optimizer / engine / trainer (as after a restart), then `_train_loop` to `steps`."""
    from dvr1.train import job
    from dvr1.train.inputs import InputBuilder
    from dvr1.vidchain.job import records
    from dvr1.vidchain.mdpo import MDPOTrainer
    from dvr1.vidchain.metrics import default_scorers
    from dvr1.vidchain.sft import ChainInputs
    from megatron.core.utils import unwrap_model

    o = cfg.vidchain
    pinfo = job.init(cfg)
    policy = job.build_policy(cfg, ckpt, pinfo)
    reference = job.build_policy(cfg, ckpt, pinfo, trainable=False)
    with torch.no_grad():  # a reference that differs from the initial policy (as for any later M-DPO step)
        g = torch.Generator().manual_seed(2)
        for p in reference.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model, opt, sched = job.optimizer_for(policy, o.mdpo_lr, 0.0, 1.0, 0, cfg)
    tok = job.tokenizer(ckpt)
    trainer = MDPOTrainer(model, opt, sched, reference, job.rollout_engine(cfg, policy),
                          ChainInputs(InputBuilder(policy, tok, cfg.video)), tok, records(o, "train"), o,
                          meteor=default_scorers(meteor=False)["CIDEr"], seed=cfg.seed + 17)
    job._train_loop(cfg, "vidchain_mdpo", trainer, model, opt, sched, steps, 1, 2, ckpt)
    return {k: v.detach().clone() for k, v in unwrap_model(model).state_dict().items() if torch.is_tensor(v)}


def test_mdpo_resume_equals_uninterrupted(tmp_path, tiny, parallel_state_1):
    data_root, ckpt = tiny
    ov = _overrides(tmp_path, data_root, records_per_step=1, k_samples=3, temperature=1.0, mdpo_lr=1e-3,
                    mdpo_chains="[count_seg_cap]", max_pairs_per_step=4, max_new_tokens=6)

    cfg_a = load_config("examples/vidchain_tiny.yaml", ov + [f"run_dir={tmp_path}/a"])
    init = _mdpo_stage(cfg_a, ckpt, 0)  # 0 steps: the initial weights (exported, no update)
    full = _mdpo_stage(cfg_a, ckpt, 4)  # resumes nothing (no checkpoint at step 0): an uninterrupted 4-step run
    cfg_b = load_config("examples/vidchain_tiny.yaml", ov + [f"run_dir={tmp_path}/b"])
    _mdpo_stage(cfg_b, ckpt, 2)  # "killed" after its step-2 checkpoint
    resumed = _mdpo_stage(cfg_b, ckpt, 4)

    rows_a = [json.loads(line) for line in open(tmp_path / "a" / "metrics" / "vidchain_mdpo.jsonl")]
    rows_b = [json.loads(line) for line in open(tmp_path / "b" / "metrics" / "vidchain_mdpo.jsonl")]
    used = [r["pairs_used"] for r in rows_a]
    assert len(used) == 4 and all(u > 0 for u in used)  # every step of the uninterrupted run made a DPO update
    # the resumed run logged each step once, with the uninterrupted run's numbers (the DPO metrics included)
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    assert rows_b == rows_a
    dpo_keys = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected"}
    for r in rows_a:
        assert dpo_keys | {"pairs", "gap", "pairs/count", "pairs/segments", "pairs/captions"} <= set(r)
        assert r["rewards/margins"] == pytest.approx(r["rewards/chosen"] - r["rewards/rejected"], abs=1e-6)
        assert 0.0 <= r["rewards/accuracies"] <= 1.0 and r["logps/chosen"] < 0 and r["logps/rejected"] < 0
        assert r["pairs"] == r["pairs/count"] + r["pairs/segments"] + r["pairs/captions"] >= r["pairs_used"]
    assert any(r["rewards/chosen"] != 0.0 for r in rows_a)  # π_ref != π_θ: the rewards are not trivially 0
    assert set(resumed) == set(full)
    moved = sum(float((full[k] - init[k]).abs().max()) > 0 for k in full)
    assert moved > 10
    for k in full:
        assert torch.equal(resumed[k], full[k]), (k, float((resumed[k] - full[k]).abs().max()))


def test_changed_outputs_counts_by_hand():
    from dvr1.vidchain.job import changed_outputs, format_changed

    before = {"outputs": [{"id": "a", "chain": ["2", "00-10, 20-30", "1. x\n2. y"], "grounding": ["00-10", "20-30"]},
                          {"id": "b", "chain": ["1", "00-99", "1. z"], "grounding": ["00-99"]}]}
    after = json.loads(json.dumps(before))
    assert changed_outputs(before, after) == {"records": 2, "records_changed": 0, "chain": 6, "chain_changed": 0,
                                              "grounding": 3, "grounding_changed": 0}
    after["outputs"][0]["chain"][2] = "1. x\n2. w"  # record a: one caption turn
    after["outputs"][0]["grounding"][1] = "25-30"  # record a: one grounding answer
    c = changed_outputs(before, after)
    assert c == {"records": 2, "records_changed": 1, "chain": 6, "chain_changed": 1, "grounding": 3,
                 "grounding_changed": 1}
    assert format_changed(c).startswith("Greedy outputs changed by M-DPO on the test split: 1 of 2 records; 1 of 6")
    assert format_changed(c, "val").startswith("Greedy outputs changed by M-DPO on the val split: 1 of 2")
    with pytest.raises(ValueError, match="not over the same records"):
        changed_outputs(before, {"outputs": before["outputs"][::-1]})
    with pytest.raises(ValueError, match="need per-record 'outputs'"):
        changed_outputs({"n": 2}, after)


def test_ensure_model_passes_the_warmups_and_rejects_the_qa_drills(tmp_path, tiny, monkeypatch):
    """The tiny VidChain checkpoint gets the run's copy and perception warm-ups (a key that were dropped would make
    the knob a silent no-op); the option drills, which need video-QA options, are a one-line error."""
    from dvr1.config import ConfigError
    from dvr1.models import tiny as tiny_mod
    from dvr1.vidchain.job import ensure_model, load

    data_root, _ = tiny
    seen = {}
    monkeypatch.setattr(tiny_mod, "make_tiny_checkpoint", lambda path, texts, **kw: seen.update(kw, texts=texts))
    ov = _overrides(tmp_path / "run", data_root)
    cfg, opts = load("examples/vidchain_tiny.yaml", ov + ["model.tiny_copy_steps=7", "model.tiny_vision_steps=5",
                                                         "model.tiny_vision_counts=true", "vidchain.size=32",
                                                         "model.tiny_caption_steps=4", "model.tiny_caption_lr=0.01",
                                                         "model.tiny_caption_vision_lr=0.002", "vidchain.max_events=2"])
    assert ensure_model(cfg, opts) == str(tmp_path / "run" / "vidchain_tiny_init")
    assert seen["copy_steps"] == 7 and seen["vision_steps"] == 5 and seen["seed"] == 0
    assert seen["progress"] is False  # log.progress=false: no warm-up bars either
    sample = seen["vision_sample"]
    assert sample.keywords["counts"] is True and sample.keywords["size"] == 32
    assert (seen["caption_steps"], seen["caption_lr"], seen["caption_vision_lr"], seen["mrope_rule"]) == (
        4, 0.01, 0.002, "qwen")
    assert seen["caption_sample"].keywords == {"size": 32, "num_frames": 8, "min_pixels": 3136, "max_pixels": 12544,
                                               "fps": 8.0, "max_events": 2}
    assert seen["texts"] and all(isinstance(t, str) for t in seen["texts"])
    for key in ("tiny_answer_steps", "tiny_reading_steps"):
        cfg, opts = load("examples/vidchain_tiny.yaml", ov + [f"model.{key}=3"])
        with pytest.raises(ConfigError, match=rf"^model\.{key}=3: that drill reads the option lists of video-QA "
                                              r"records; VidChain's dense-captioning records have none \(set it to 0\)$"):
            ensure_model(cfg, opts)
