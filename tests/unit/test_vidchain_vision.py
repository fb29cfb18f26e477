"""VidChain on a policy that sees (issue 20): the vidchain job's CoTasks SFT and M-DPO stages
(`dvr1.vidchain.job.sft_stage` / `mdpo_stage`) honour `sft.freeze_vision` / `rl.freeze_vision` /
`model.freeze_vision` through `dvr1.config.freeze_vision`, with `vidchain.sft_vision_lr` / `mdpo_vision_lr`.

- default (frozen): two CoTasks SFT steps give exactly the loss / grad norm measured before the option existed, and
  the tower does not move;
- `model.freeze_vision=false`: one CoTasks SFT step (through `_train_loop`, as the job runs it) changes the tower and
  merger, its rows carry pixel values (the pass encodes them), the vision LR reaches the tower's param groups, and the
  exported HF checkpoint's ``visual.*`` tensors are the trained ones bit for bit;
- `ChainInputs` takes its embeddings from `InputBuilder`'s tower-version-keyed cache: after an update of the tower the
  next prompt's embeddings are the updated tower's, not the cached ones (the old per-record-id cache fails this);
- M-DPO keeps the tower frozen by default and trains it with `rl.freeze_vision=false`.
"""

import os

import pytest
import torch

from dvr1.config import load_config
from dvr1.vidchain.cotasks import CHAINS, chain_texts
from dvr1.vidchain.data import build_dense_dataset, read_dense_records

# measured at commit 49023d5 (before the vidchain stages could train the tower): the same fixture, seed_everything(0),
# `optimizer_for(policy, 3e-3, 0.0, 1.0, 0, cfg)`, CoTasksSFTTrainer(chains=CHAINS, batch_size=2, seed=0), CPU fp32
FROZEN_BEFORE = [{"loss": 6.178737163543701, "grad_norm": 8.738691160898547},
                 {"loss": 5.281002044677734, "grad_norm": 5.279033669851591}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(data_root, train records, HF checkpoint): 2 train / 1 val / 2 test clips of 32 px, a 2-layer tiny model."""
    from dvr1.models.tiny import make_tiny_checkpoint

    d = tmp_path_factory.mktemp("vcv")
    build_dense_dataset(str(d / "dense"), seed=5, n_train=2, n_val=1, n_test=2, size=32, max_events=2)
    train = read_dense_records(d / "dense" / "train.jsonl")
    texts = []
    for r in train:
        for chain in CHAINS[:2]:
            texts += chain_texts(chain, r.events, r.captions, r.duration)
        texts += chain_texts("ground", r.events[:1], r.captions[:1], r.duration)
    init = make_tiny_checkpoint(str(d / "init"), texts * 4, seed=3, vocab_size=400, text={"num_hidden_layers": 2})
    return str(d / "dense"), train, init


def _cfg(tmp_path, data_root, *extra):
    return load_config(None, ["log.wandb=false", "log.progress=false", f"run_dir={tmp_path}",
                              f"vidchain.data_root={data_root}", "vidchain.sft_lr=3e-3", "vidchain.sft_warmup=0",
                              "vidchain.sft_batch_size=2", f"vidchain.sft_chains=[{','.join(CHAINS)}]",
                              "vidchain.mdpo_chains=[count_seg_cap]", "vidchain.records_per_step=1",
                              "vidchain.k_samples=3", "vidchain.temperature=1.0", "vidchain.max_pairs_per_step=4",
                              "vidchain.max_new_tokens=6", "vidchain.meteor=false", *extra])


def _sft(cfg, init, train, pinfo):
    from dvr1.parallel.setup import seed_everything
    from dvr1.vidchain.job import sft_stage

    seed_everything(0)
    return sft_stage(cfg, pinfo, init, train)


def _tower(trainer):
    from megatron.core.utils import unwrap_model

    return {n: p.detach().clone() for n, p in unwrap_model(trainer.model).visual.named_parameters()}


def test_frozen_default_cotasks_sft_is_unchanged(tmp_path, tiny, parallel_state_1):
    data_root, train, init = tiny
    trainer, _, _, _ = _sft(_cfg(tmp_path, data_root), init, train, parallel_state_1)
    before = _tower(trainer)
    rng = trainer.rng.getstate()
    items = trainer.items()
    trainer.rng.setstate(rng)
    assert all(p.request.pixel_values_videos is None and p.request.video_embeds is not None for p, _ in items)
    got = [trainer.step() for _ in range(2)]
    for g, want in zip(got, FROZEN_BEFORE):
        assert g["loss"] == pytest.approx(want["loss"], rel=1e-6)
        assert g["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-6)
    for n, p in _tower(trainer).items():
        assert torch.equal(p, before[n]), n


def test_trained_tower_cotasks_sft_step_trains_it_and_the_export_carries_it(tmp_path, tiny, parallel_state_1):
    from safetensors.torch import load_file
    from megatron.core.utils import unwrap_model

    from dvr1.train import job

    data_root, train, init = tiny
    cfg = _cfg(tmp_path, data_root, "model.freeze_vision=false", "vidchain.sft_vision_lr=1e-3")
    trainer, model, opt, sched = _sft(cfg, init, train, parallel_state_1)
    policy = unwrap_model(model)
    assert policy.vision_trainable
    lrs = {g["lr"] for g in opt.param_groups if any(p is q for p in g["params"] for q in policy.visual.parameters())}
    assert lrs == {1e-3}  # the tower's own groups take vidchain.sft_vision_lr (no warmup), the LM's vidchain.sft_lr
    assert {g["lr"] for g in opt.param_groups} == {1e-3, 3e-3}
    before = _tower(trainer)
    rng = trainer.rng.getstate()
    items = trainer.items()
    trainer.rng.setstate(rng)
    # the rows carry the clip's pixels and no no-grad embeddings: the training pass encodes them with gradients
    assert all(p.request.pixel_values_videos is not None and p.request.video_embeds is None for p, _ in items)

    out = job._train_loop(cfg, "vidchain_sft", trainer, model, opt, sched, 1, 1, 1, init)
    after = _tower(trainer)
    moved = [n for n in after if (after[n] - before[n]).abs().max() > 0]
    assert len(moved) > len(after) // 2, f"{len(moved)} of {len(after)} tower tensors moved"
    assert any(n.startswith("merger.") for n in moved) and any(n.startswith("blocks.") for n in moved)
    saved = load_file(os.path.join(out, "model.safetensors"))
    for n, p in policy.visual.state_dict().items():
        assert torch.equal(saved[f"visual.{n}"], p), n
    assert any(not torch.equal(saved[f"visual.{n}"], p) for n, p in before.items())  # not the initial tower


def test_chain_inputs_do_not_reuse_embeddings_after_a_tower_update(tmp_path, tiny, parallel_state_1):
    data_root, train, init = tiny
    cfg = _cfg(tmp_path, data_root, "model.freeze_vision=false")
    trainer, _, _, _ = _sft(cfg, init, train, parallel_state_1)
    inputs, rec = trainer.inputs, train[0]
    turns = inputs.turns(rec, "count_seg_cap")
    e0 = inputs.prepare(rec, turns, 0).request.video_embeds
    assert inputs.prepare(rec, turns, 1).request.video_embeds is e0  # same tower version: one encoding per clip
    trainer.step()  # updates the tower
    p1 = inputs.prepare(rec, turns, 0)
    with torch.no_grad():
        fresh = trainer.inputs.builder.policy.encode_video(p1.request.pixel_values_videos, p1.request.video_grid_thw)
    assert torch.equal(p1.request.video_embeds, fresh)  # the updated tower's embedding ...
    assert (p1.request.video_embeds - e0).abs().max() > 1e-4  # ... which the cached one is not


@pytest.fixture(scope="module")
def sft_hf(tiny, tmp_path_factory, parallel_state_1):
    """A frozen-tower CoTasks-SFT checkpoint after 40 steps: its sampled chains parse sometimes, so pairs form."""
    from dvr1.models.export import export_hf
    from megatron.core.utils import unwrap_model

    data_root, train, init = tiny
    d = tmp_path_factory.mktemp("sft")
    trainer, model, _, _ = _sft(_cfg(d, data_root), init, train, parallel_state_1)
    for _ in range(40):
        trainer.step()
    return export_hf(unwrap_model(model), init, str(d / "hf"))


@pytest.mark.parametrize("frozen", [True, False])
def test_mdpo_trains_the_tower_only_when_configured(tmp_path, tiny, sft_hf, parallel_state_1, frozen):
    from dvr1.vidchain.job import mdpo_stage
    from dvr1.vidchain.metrics import default_scorers
    from megatron.core.utils import unwrap_model

    data_root, train, _ = tiny
    cfg = _cfg(tmp_path, data_root, "vidchain.mdpo_lr=1e-3", *(() if frozen else ("rl.freeze_vision=false",)))
    trainer, _, _, _ = mdpo_stage(cfg, parallel_state_1, sft_hf, train, default_scorers(meteor=False)["CIDEr"])
    before = _tower(trainer)
    used = sum(trainer.step()["pairs_used"] for _ in range(2))
    assert used > 0
    moved = sum(bool((p - before[n]).abs().max() > 0) for n, p in _tower(trainer).items())
    assert unwrap_model(trainer.model).vision_trainable is not frozen
    assert (moved == 0) if frozen else (moved > len(before) // 2)
