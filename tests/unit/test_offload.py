"""dvr1.train.offload on a tiny megatron-core GPTModel (single process, CPU): trainer state released and restored.

- offload -> onload leaves every Adam tensor, main param and weight bit-identical, and N updates with an offload
  between each equal N updates without (fp32 / bf16, plain / distributed optimizer, with and without the weights);
- while offloaded the state is really released: the grad buffers, Adam moments and fp32 main params (and with
  ``weights`` the trainable weights) have 0-byte storage, and the released bytes are the per-parameter count
  (Megatron-LM's accounting: 4 fp32 grad + 8 Adam + 4 fp32 main params under bf16, + the weights);
- a checkpoint saved (or loaded) while offloaded brings the state back first and is the one saved without offload;
- RLTrainer.step with rollout.offload_trainer_state: grads and optimizer state are released during generate and
  during the vLLM refit, back for the update, and three steps equal three steps without it (a scripted engine).
"""

import types

import pytest
import torch

import megatron_patches
from megatron_patches import tensor_type_alias
from dvr1.config import load_config
from dvr1.data.sampler import PromptSampler
from dvr1.rl.difficulty import DifficultyController, RewardHistory
from dvr1.rollout.base import RolloutOutput
from dvr1.train import rl as rl_mod
from dvr1.train.checkpoint import load_checkpoint, save_checkpoint
from dvr1.train.offload import OffloadError, is_offloaded, offload, onload, released_bytes
from dvr1.train.optim import build_lr_scheduler, build_optimizer
from dvr1.train.rl import RLTrainer
from tests.unit.test_checkpoint import train_step  # one optimizer step of the tiny GPT (shared helper)

LR, WD = 1e-2, 0.1


@pytest.fixture
def type_alias(monkeypatch):
    """The opt-in Tensor.type alias for the bf16 / distributed optimizer on CPU, undone after the test."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    from megatron.core.optimizer.optimizer import Float16OptimizerWithFloat16Params

    for cls in (DistributedOptimizer, Float16OptimizerWithFloat16Params):
        monkeypatch.setattr(cls, "__init__", cls.__init__)  # restored on teardown
        tensor_type_alias._wrap_init(cls)
    names = megatron_patches.applied() + [tensor_type_alias.NAME]
    monkeypatch.setattr(megatron_patches, "applied", lambda: list(names))


def make(tiny_gpt, bf16=False, dist=False, seed=0):
    from megatron.core.transformer.module import Float16Module

    if bf16:
        model = tiny_gpt(seed=seed, params_dtype=torch.bfloat16, bf16=True)
        model = Float16Module(model.config, model)
    else:
        model = tiny_gpt(seed=seed)
    chunks, opt = build_optimizer(model, lr=LR, weight_decay=WD, clip_grad=1.0, bf16=bf16,
                                  use_distributed_optimizer=dist)
    return chunks, opt, build_lr_scheduler(opt, LR, warmup_steps=2, weight_decay=WD, init_lr=LR / 10)


def inner(opt):
    return [sub.optimizer for sub in getattr(opt, "chained_optimizers", [opt])]


def adam_tensors(opt):
    return [v for o in inner(opt) for s in o.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]


def main_params(opt):
    return [p for o in inner(opt) for g in o.param_groups for p in g["params"]]


def snapshot(chunks, opt):
    return {"adam": [t.clone() for t in adam_tensors(opt)], "main": [p.detach().clone() for p in main_params(opt)],
            "weights": [p.detach().clone() for p in chunks[0].parameters()],
            "steps": [s["step"].clone() for o in inner(opt) for s in o.state.values() if "step" in s]}


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert len(a[k]) == len(b[k]), k
        for x, y in zip(a[k], b[k]):
            assert x.dtype == y.dtype and torch.equal(x, y), k


def nbytes(t):
    return t.untyped_storage().nbytes()


CONFIGS = [pytest.param(False, False, id="fp32"), pytest.param(False, True, id="fp32-distopt"),
           pytest.param(True, False, id="bf16"), pytest.param(True, True, id="bf16-distopt")]


@pytest.mark.parametrize("weights", [False, True], ids=["state", "state+weights"])
@pytest.mark.parametrize("bf16,dist", CONFIGS)
def test_offload_onload_is_bit_exact_and_releases_the_state(tiny_gpt, type_alias, bf16, dist, weights):
    ref = make(tiny_gpt, bf16, dist)
    off = make(tiny_gpt, bf16, dist)
    chunks, opt, sched = off
    ddp = chunks[0]
    trainable = [p for p in ddp.parameters() if p.requires_grad]
    n = sum(p.numel() for p in trainable)
    for step in range(3):
        train_step(*ref, seed=step)
        before = snapshot(chunks, opt)
        assert not is_offloaded(opt)
        assert offload(chunks, opt, weights=weights) >= 0
        assert is_offloaded(opt)
        # released: grad buffers (and the main_grad views into them), Adam moments, fp32 main params
        assert all(nbytes(b.grad_data) == 0 for b in ddp.buffers)
        assert all(nbytes(p.main_grad) == 0 for p in trainable)
        assert all(nbytes(t) == 0 for t in adam_tensors(opt))
        if bf16:
            assert all(nbytes(p) == 0 for p in main_params(opt))
        assert all((nbytes(p) == 0) == weights for p in trainable)
        # the per-parameter count, independently: 4 B fp32 grads (the buffer may pad), 8 B Adam once it exists,
        # 4 B fp32 main params under bf16, the weights' own bytes (fp32 4 B or bf16 2 B) with `weights`
        padded = sum(b.grad_data_size for b in ddp.buffers)
        assert n <= padded < n + 4096
        want = 4 * padded + (8 * n if step > 0 else 0) + (4 * n if bf16 else 0)
        if weights:
            want += (padded if dist else n) * (2 if bf16 else 4)  # the distributed optimizer's param buffer is padded
        assert released_bytes(opt) == want
        offload(chunks, opt, weights=weights)  # idempotent: nothing moves twice
        assert released_bytes(opt) == want
        assert onload(opt) >= 0
        assert not is_offloaded(opt) and released_bytes(opt) == 0
        assert_identical(snapshot(chunks, opt), before)
        assert all(b.grad_data.count_nonzero() == 0 for b in ddp.buffers)  # restored zeroed
        train_step(chunks, opt, sched, seed=step)
    assert_identical(snapshot(*ref[:2]), snapshot(chunks, opt))
    assert len(adam_tensors(opt)) == 2 * len(main_params(opt)) > 0


def test_onload_without_offload_is_a_no_op_and_a_plain_module_is_refused(tiny_gpt):
    chunks, opt, sched = make(tiny_gpt)
    train_step(chunks, opt, sched, seed=0)
    before = snapshot(chunks, opt)
    assert onload(opt) >= 0 and not is_offloaded(opt)
    assert_identical(snapshot(chunks, opt), before)
    with pytest.raises(OffloadError, match="GPTModel is not megatron DDP"):
        offload([chunks[0].module], opt)


@pytest.mark.parametrize("when", ["save", "load"])
def test_checkpoint_while_offloaded_onloads_first(tiny_gpt, tmp_path, when):
    chunks, opt, sched = make(tiny_gpt)
    train_step(chunks, opt, sched, seed=0)
    want = snapshot(chunks, opt)
    if when == "save":
        offload(chunks, opt, weights=True)
    save_checkpoint(tmp_path, 1, chunks, opt, sched)
    assert not is_offloaded(opt)
    assert_identical(snapshot(chunks, opt), want)
    chunks2, opt2, sched2 = make(tiny_gpt, seed=1)
    train_step(chunks2, opt2, sched2, seed=5)
    if when == "load":
        offload(chunks2, opt2, weights=True)
    load_checkpoint(tmp_path, chunks2, opt2, sched2, restore_rng=False)
    assert not is_offloaded(opt2)
    assert_identical(snapshot(chunks2, opt2), want)


# ---- the RL step ----------------------------------------------------------------------------------------------------
EOS = 0
ANSWER = "<think>It slides left.</think><answer>B</answer>"


class Builder:
    def prepare(self, record, hint=None, reveal_answer=False, video=None, shuffle=None):
        return types.SimpleNamespace(record=record, request={"record": record})


class Engine:
    """Scripted responses; records whether the trainer state was released when it generated and when it refit."""

    def __init__(self, ddp, opt):
        self.ddp, self.opt, self.seen = ddp, opt, []

    def released(self):
        return (all(nbytes(b.grad_data) == 0 for b in self.ddp.buffers)
                and all(nbytes(t) == 0 for t in adam_tensors(self.opt)))

    def generate(self, requests, sp, desc=""):
        self.seen.append(("generate", self.released()))
        texts = [ANSWER[: 10 + 9 * i] for i in range(sp.n)]
        return [RolloutOutput([[ord(c) for c in t] + [EOS] for t in texts], [[0.0] * (len(t) + 1) for t in texts])
                for _ in requests]

    def sleep(self):
        pass

    def sync_weights(self, model):
        self.seen.append(("sync_weights", self.released()))
        return 0.0


def fake_forward_backward(model, batch, loss_fn, forward_only, compute_entropy, **kw):
    """A real forward/backward of the tiny GPT on tokens drawn from the batch size (the RL loss itself is tested
    elsewhere): what matters here is that the optimizer's update runs on the state the offload gave back."""
    rows = batch.resp_mask.shape[0]
    tokens = torch.randint(0, 128, (rows, 9), generator=torch.Generator().manual_seed(rows))
    loss = model(tokens[:, :-1], torch.arange(8).expand(rows, 8), None, labels=tokens[:, 1:]).float().mean()
    loss.backward()
    model.finish_grad_sync()
    return types.SimpleNamespace(loss=loss.detach(), metrics=[], entropy=torch.zeros_like(batch.resp_mask))


def rl_trainer(tiny_gpt, offloading):
    chunks, opt, sched = make(tiny_gpt)
    t = object.__new__(RLTrainer)
    t.cfg = load_config(None, ["rollout.group_size=2", "rl.prompts_per_step=2", "algo.name=grpo", "algo.beta=0",
                               "da_aug.enabled=false", f"rollout.offload_trainer_state={str(offloading).lower()}"])
    t.model, t.optimizer, t.scheduler, t.reference = chunks[0], opt, sched, None
    t.engine, t.builder, t.tok, t.eos, t.pad = Engine(chunks[0], opt), Builder(), types.SimpleNamespace(), EOS, 1
    records = [types.SimpleNamespace(id=f"r{i}", task="t", problem_type="multiple_choice", answer="B", segments=None,
                                     options=["up", "left", "down", "right"], video=None) for i in range(4)]
    t.sampler = PromptSampler(records, seed=5)
    t.prompts_per_rank = 2
    t.history = RewardHistory(t.cfg.da_aug.window)
    t.controller = DifficultyController(t.cfg.da_aug, t.history)
    t.noise_gen, t.shuffle_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    t.rollouts, t.steps_done, t.mixed_types = {}, 0, False
    return t


def test_rl_step_releases_the_state_during_rollout_and_refit_and_trains_identically(tiny_gpt, monkeypatch):
    monkeypatch.setattr(rl_mod, "forward_backward", fake_forward_backward)
    monkeypatch.setattr(rl_mod, "build_batch", lambda items, pad: types.SimpleNamespace(
        resp_mask=torch.ones(len(items), 5)))
    monkeypatch.setattr(rl_mod, "decode_response", lambda tok, ids, stops: "".join(chr(i) for i in ids if i != EOS))
    plain, offloaded = rl_trainer(tiny_gpt, False), rl_trainer(tiny_gpt, True)
    for _ in range(3):
        m0, m1 = plain.step(), offloaded.step()
        assert "time/offload" not in m0 and "time/onload" not in m0
        assert m1["time/offload"] >= 0 and m1["time/onload"] >= 0
        assert m0["loss"] == m1["loss"] and m0["grad_norm"] == m1["grad_norm"]
    assert plain.engine.seen == [("generate", False), ("sync_weights", False)] * 3
    assert offloaded.engine.seen == [("generate", True), ("sync_weights", True)] * 3
    assert is_offloaded(offloaded.optimizer)  # stays off between steps until the next update (or a checkpoint)
    onload(offloaded.optimizer)
    assert_identical(snapshot([plain.model], plain.optimizer), snapshot([offloaded.model], offloaded.optimizer))
