"""`model.freeze_vision` (issue 16): the default keeps the vision tower frozen and the SFT step exactly as before;
`false` trains the tower with gradients equal to Hugging Face's model, invalidates the embedding cache after every
update, checkpoints and resumes it exactly, and the HF export / megatron->HF conversion carry the trained tower
(transformers loads it and gives the policy's logits); `sft.vision_lr` / `rl.vision_lr` put the tower in its own
param groups on the stage's schedule (generic schedule tests: tests/unit/test_optim.py). TP=2 / PP=2 gradients:
tests/distributed/test_rl_step_parallel.py; the vLLM refit: tests/distributed/test_vllm_sync.py.
"""

import os

import pytest
import torch

from dvr1.config import freeze_vision, load_config
from dvr1.models.tiny import make_tiny_checkpoint
from tests.unit.test_sft_val import moving_square_clip  # the moving-square clips (shared helper)

TEXTS = ["Which way does the square move? A. left B. right <think>I look.</think><answer>A</answer>"] * 20
# measured with the code before model.freeze_vision existed (commit 3d27fbe, the same two SFT steps, CPU fp32): the
# default (frozen) SFT steps' loss and grad norm must not move
FROZEN_BEFORE = [{"loss": 6.000179290771484, "grad_norm": 12.165242847757781},
                 {"loss": 5.2905192375183105, "grad_norm": 6.684771970684477}]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fv")
    ckpt = make_tiny_checkpoint(str(root / "tiny"), TEXTS, seed=3, vocab_size=320, text={"num_hidden_layers": 2})
    recs = [moving_square_clip(root, f"clip{i}", i, brightness_step=60, record_id=f"r{i}") for i in range(4)]
    return ckpt, recs


def _cfg(freeze: bool, *extra):
    over = ["log.wandb=false", "sft.batch_size=2", "sft.warmup=0", "sft.lr=1e-3", "video.num_frames=4",
            "video.min_pixels=3136", "video.max_pixels=3136", *extra]
    if not freeze:  # the frozen run uses the defaults only, so the same script runs on the code before the option
        over.append("model.freeze_vision=false")
    return load_config(None, over)


def _setup(data, freeze: bool, *extra):
    """(cfg, policy, DDP model, optimizer, scheduler, builder, SFTTrainer) of a fresh run, reseeded."""
    from transformers import AutoTokenizer

    from dvr1.parallel.setup import parallel_info, seed_everything
    from dvr1.train import job
    from dvr1.train.inputs import InputBuilder
    from dvr1.train.sft import SFTTrainer

    ckpt, recs = data
    cfg = _cfg(freeze, *extra)
    seed_everything(0)
    kw = {} if freeze else {"train_vision": not freeze_vision(cfg, "sft")}
    policy = job.build_policy(cfg, ckpt, parallel_info(), **kw)
    model, opt, sched = job.stage_optimizer(cfg, policy, "sft")  # sft.weight_decay 0, clip 1.0: as before
    tok = AutoTokenizer.from_pretrained(ckpt)
    builder = InputBuilder(policy, tok, cfg.video)
    return cfg, policy, model, opt, sched, builder, SFTTrainer(cfg, model, opt, sched, builder, tok, recs)


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_stage_overrides_default_to_model_freeze_vision():
    cfg = load_config(None, [])
    assert freeze_vision(cfg, "sft") and freeze_vision(cfg, "rl")
    cfg = load_config(None, ["model.freeze_vision=false", "rl.freeze_vision=true"])
    assert not freeze_vision(cfg, "sft") and freeze_vision(cfg, "rl")
    cfg = load_config(None, ["sft.freeze_vision=false"])
    assert not freeze_vision(cfg, "sft") and freeze_vision(cfg, "rl")


def test_default_keeps_the_tower_frozen_and_the_sft_step_unchanged(parallel_state_1, data):
    _, policy, _, opt, _, builder, trainer = _setup(data, True)
    assert not any(p.requires_grad for p in policy.visual.parameters())
    assert all(p.requires_grad for p in policy.lm.parameters())
    n_opt = sum(len(g["params"]) for g in opt.param_groups)
    assert n_opt == len(list(policy.lm.parameters()))
    assert set(policy.sharded_state_dict()) == {k for k in policy.sharded_state_dict() if k.startswith("lm.")}
    vis0, lm0 = _params(policy.visual), _params(policy.lm)
    for before in FROZEN_BEFORE:
        m = trainer.step()
        assert m["loss"] == pytest.approx(before["loss"], rel=1e-5)
        assert m["grad_norm"] == pytest.approx(before["grad_norm"], rel=1e-5)
    assert all(torch.equal(p, vis0[n]) for n, p in policy.visual.named_parameters())  # the tower did not move
    assert any(not torch.equal(p, lm0[n]) for n, p in policy.lm.named_parameters())
    # a frozen tower's embeddings are cached once per clip and handed out again
    p1 = builder.prepare(trainer.sampler.records[0])
    assert p1.request.pixel_values_videos is None
    assert builder.prepare(trainer.sampler.records[0]).request.video_embeds is p1.request.video_embeds


def test_trained_tower_gradients_equal_hugging_face(parallel_state_1, data):
    """One SFT loss through the megatron policy with the tower trained: the vision tower's (and the embedding's)
    gradients equal transformers' Qwen2_5_VLForConditionalGeneration on the same sequences, positions given."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from dvr1.parallel.forward import forward_backward
    from dvr1.train.inputs import build_batch

    ckpt, recs = data
    _, policy, model, opt, _, builder, trainer = _setup(data, False)
    assert all(p.requires_grad for p in policy.visual.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(policy.parameters()))
    items = [(builder.prepare(r, embed=False), trainer.target_ids(r)) for r in recs[:3]]
    # two rows share one clip object: the tower encodes it once and both rows get gradient through it
    items.append((items[0][0], trainer.target_ids(recs[1])))
    assert all(p.request.video_embeds is None and p.request.pixel_values_videos is not None for p, _ in items)
    batch = build_batch(items, trainer.pad)
    assert batch.vision_inputs()[1].shape == (3, 3)
    n_tok = batch.resp_mask.sum()
    model.zero_grad_buffer()
    forward_backward(model, batch, lambda lp, _e, rows: (-(lp * batch.resp_mask[rows]).sum() / n_tok, {}),
                     forward_only=False)
    got = {f"visual.{n}": p.main_grad.clone() for n, p in policy.visual.named_parameters()}
    got["embed"] = policy.lm.embedding.word_embeddings.weight.main_grad.clone()

    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32)
    for i, (p, resp) in enumerate(items):
        ids = torch.cat([p.request.prompt_ids, torch.tensor(resp)]).view(1, -1)
        L = p.request.prompt_ids.numel()
        logits = hf(input_ids=ids, position_ids=batch.position_ids[:, i:i + 1, :ids.shape[1]],
                    pixel_values_videos=p.request.pixel_values_videos, video_grid_thw=p.request.video_grid_thw,
                    second_per_grid_ts=torch.tensor([p.second_per_grid])).logits[0]
        lp = torch.log_softmax(logits[L - 1:-1], -1).gather(1, ids[0, L:, None])
        (-lp.sum() / n_tok).backward()
    ref = {f"visual.{n}": p.grad for n, p in hf.model.visual.named_parameters()}
    ref["embed"] = hf.model.language_model.embed_tokens.weight.grad
    assert set(got) == set(ref)
    for k, g in ref.items():
        err = float((got[k].double() - g.double()).norm() / g.double().norm())
        assert err <= 1e-5, (k, err)
        assert float(g.abs().sum()) > 0, k


def test_embedding_cache_is_not_reused_after_a_vision_update(parallel_state_1, data):
    _, policy, _, _, _, builder, trainer = _setup(data, False)
    rec = trainer.sampler.records[0]
    e0 = builder.prepare(rec).request.video_embeds
    p = builder.prepare(rec)
    assert p.request.video_embeds is e0  # same tower version: cached
    v = policy.vision_version
    trainer.step()
    assert policy.vision_version == v + 1  # the optimizer step bumped it
    p1 = builder.prepare(rec)
    with torch.no_grad():
        fresh = policy.encode_video(p1.request.pixel_values_videos, p1.request.video_grid_thw)
    assert not p1.request.video_embeds.requires_grad
    assert torch.equal(p1.request.video_embeds, fresh)  # the updated tower's embedding ...
    assert (p1.request.video_embeds - e0).abs().max() > 1e-4  # ... which the stale cache entry is not
    assert len(builder._embeds) == 1  # stale entries were dropped


def _dist_keys(step_dir):
    from megatron.core import dist_checkpointing

    return set(dist_checkpointing.load_tensors_metadata(str(step_dir / "dist")))


def test_checkpoint_resume_export_and_conversion_carry_the_trained_tower(parallel_state_1, data, tmp_path):
    from safetensors.torch import load_file
    from transformers import Qwen2_5_VLForConditionalGeneration

    from dvr1.models.convert import convert_megatron_to_hf
    from dvr1.models.export import export_hf
    from dvr1.models.safetensors_io import SafetensorsFiles
    from dvr1.train.checkpoint import load_checkpoint, save_checkpoint

    ckpt, _ = data
    _, policy, model, opt, sched, builder, trainer = _setup(data, False)
    vis0 = _params(policy.visual)
    trainer.step()
    save_checkpoint(tmp_path / "run", 1, [model], opt, sched, {"trainer": trainer.state_dict()})
    assert {k for k in _dist_keys(tmp_path / "run" / "ckpt" / "step_1") if k.startswith("visual.")} == \
        {f"visual.{n}" for n in policy.visual.state_dict()}
    trainer.step()
    after2 = _params(policy)
    assert any((after2[f"visual.{n}"] - p).abs().max() > 0 for n, p in vis0.items())

    # resume from step 1 into a fresh run: step 2 again gives bit-identical weights (tower + Adam state restored)
    _, policy_b, model_b, opt_b, sched_b, _, trainer_b = _setup(data, False)
    extra = load_checkpoint(tmp_path / "run", [model_b], opt_b, sched_b)
    trainer_b.load_state_dict(extra["trainer"])
    trainer_b.step()
    for n, p in policy_b.named_parameters():
        assert torch.equal(p.detach(), after2[n]), n

    # HF export of the trained policy: its tower, bit for bit; transformers gives the policy's logits
    out = export_hf(policy, ckpt, str(tmp_path / "hf"))
    saved = load_file(os.path.join(out, "model.safetensors"))
    for n, p in policy.visual.state_dict().items():
        assert torch.equal(saved[f"visual.{n}"], p), n
    p = builder.prepare(trainer.sampler.records[1])
    ids, pos = p.request.prompt_ids.view(1, -1), p.request.position_ids.view(3, 1, -1)
    pv, grid = builder._encode(builder.video(p.record).video, embed=False)[2], p.request.video_grid_thw
    kw = dict(input_ids=ids, position_ids=pos, pixel_values_videos=pv, video_grid_thw=grid,
              second_per_grid_ts=torch.tensor([p.second_per_grid]))
    with torch.no_grad():
        mine = policy(ids, pos, pixel_values_videos=pv, video_grid_thw=grid)
        exported = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
        hf = exported(**kw).logits
        stale = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
        stale.model.language_model.load_state_dict(exported.model.language_model.state_dict())
        stale_tower = stale(**kw).logits  # the trained language model with the untrained tower
    assert torch.allclose(mine, hf, atol=1e-4, rtol=0), (mine - hf).abs().max()
    assert (stale_tower - hf).abs().max() > 1e-3  # the exported tower is what makes them equal

    # megatron -> HF conversion of the training checkpoint takes the tower from it, not from hf_dir
    conv = convert_megatron_to_hf(str(tmp_path / "run"), str(tmp_path / "conv"), hf_dir=ckpt, progress=False)
    files = SafetensorsFiles(conv)
    _, policy_1, model_1, _, _, _, _ = _setup(data, False)
    load_checkpoint(tmp_path / "run", [model_1], step=1, restore_rng=False)
    for n, p in policy_1.visual.state_dict().items():
        assert torch.equal(files.get(f"visual.{n}"), p), n
    assert any(not torch.equal(files.get(f"visual.{n}"), p) for n, p in vis0.items())


def test_frozen_checkpoint_holds_no_tower(parallel_state_1, data, tmp_path):
    from dvr1.train.checkpoint import save_checkpoint

    _, _, model, opt, sched, _, _ = _setup(data, True)
    save_checkpoint(tmp_path, 0, [model], opt, sched, {})
    assert not any(k.startswith("visual.") for k in _dist_keys(tmp_path / "ckpt" / "step_0"))


def _closed_form(k, peak, final, warmup, decay):
    """The cosine schedule's LR at 0-based step k (dvr1.train.optim.build_lr_scheduler)."""
    import math

    if k <= warmup:
        return peak * k / warmup
    if k > decay:
        return final
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * (k - warmup) / (decay - warmup)))


VISION_LR = ["sft.vision_lr=5e-4", "sft.lr_schedule=cosine", "sft.min_lr_ratio=0.1", "sft.steps=6", "sft.warmup=2"]


def _group_of(opt, params):
    """{name: its param group's (is_decoupled_lr, max_lr, min_lr)} for the named params."""
    where = {id(p): g for g in opt.param_groups for p in g["params"]}
    return {n: (where[id(p)]["is_decoupled_lr"], where[id(p)]["max_lr"], where[id(p)]["min_lr"]) for n, p in params}


def test_vision_lr_gives_the_tower_its_own_param_groups_and_schedule(parallel_state_1, data, tmp_path):
    """sft.vision_lr: the tower + merger params, and only they, are in the decoupled groups (the DDP chunk names
    them "module.visual.*"); both groups follow the warmup + cosine closed form with their own peak and
    min_lr_ratio * peak; the tower trains; a resume from a checkpoint continues at the same per-group LRs."""
    from dvr1.train.checkpoint import load_checkpoint, save_checkpoint

    cfg, policy, model, opt, sched, _, trainer = _setup(data, False, *VISION_LR)
    assert any(n.startswith("module.visual.merger.") for n, _ in model.named_parameters())
    groups = _group_of(opt, policy.named_parameters())
    assert set(groups) == {n for n, _ in policy.named_parameters()}
    for n, got in groups.items():
        assert got == ((True, 5e-4, pytest.approx(5e-5)) if n.startswith("visual.") else (False, 1e-3, 1e-4)), n
    assert {g["wd_mult"] for g in opt.param_groups if g["is_decoupled_lr"]} == {0.0, 1.0}  # biases/norms: no wd

    def lrs():
        return {g["is_decoupled_lr"]: g["lr"] for g in opt.param_groups}

    seen = [lrs()]
    vis0 = _params(policy.visual)
    for _ in range(2):
        trainer.step()
        seen.append(lrs())
    save_checkpoint(tmp_path, 2, [model], opt, sched, {"trainer": trainer.state_dict()})
    assert any(not torch.equal(p, vis0[n]) for n, p in policy.visual.named_parameters())  # the tower trained
    for _ in range(6):
        sched.step(1)
        seen.append(lrs())
    for k, got in enumerate(seen):
        assert got[False] == pytest.approx(_closed_form(k, 1e-3, 1e-4, 2, 6), rel=1e-12), k
        assert got[True] == pytest.approx(_closed_form(k, 5e-4, 5e-5, 2, 6), rel=1e-12), k
    assert seen[6] == pytest.approx({False: 1e-4, True: 5e-5})  # min_lr_ratio * peak after the stage's 6 steps

    _, policy_b, model_b, opt_b, sched_b, _, _ = _setup(data, False, *VISION_LR)
    load_checkpoint(tmp_path, [model_b], opt_b, sched_b)
    assert sched_b.num_steps == 2
    assert {g["is_decoupled_lr"]: g["lr"] for g in opt_b.param_groups} == seen[2]
    assert _group_of(opt_b, policy_b.named_parameters()) == groups


def test_vision_lr_of_a_frozen_tower_makes_no_group(parallel_state_1, data, caplog):
    _, policy, _, opt, _, _, _ = _setup(data, True, *VISION_LR)
    assert not any(g["is_decoupled_lr"] for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(policy.lm.parameters()))
    assert "vision_lr=0.0005 is unused: the vision tower is frozen" in caplog.text


def test_rl_stage_schedules_its_optimizer_updates(parallel_state_1, data):
    """RL: no warmup, the cosine runs over rl.steps * algo.ppo_epochs updates; rl.vision_lr is the tower's peak."""
    from dvr1.parallel.setup import parallel_info
    from dvr1.train import job

    ckpt, _ = data
    cfg = _cfg(False, "rl.lr_schedule=cosine", "rl.steps=5", "algo.ppo_epochs=2", "rl.vision_lr=3e-4",
               "rl.min_lr_ratio=0.5")
    policy = job.build_policy(cfg, ckpt, parallel_info(), train_vision=not freeze_vision(cfg, "rl"))
    _, opt, sched = job.stage_optimizer(cfg, policy, "rl")
    assert (sched.lr_warmup_steps, sched.lr_decay_steps, sched.lr_decay_style) == (0, 10, "cosine")
    assert {g["is_decoupled_lr"]: g["lr"] for g in opt.param_groups} == {False: cfg.rl.lr, True: 3e-4}
    sched.step(10)
    assert {g["is_decoupled_lr"]: g["lr"] for g in opt.param_groups} == pytest.approx({False: cfg.rl.lr / 2,
                                                                                       True: 1.5e-4})
