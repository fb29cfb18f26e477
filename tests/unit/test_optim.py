"""dvr1.train.optim's LR knobs on a tiny megatron-core GPTModel (single process, CPU): the cosine schedule equals
its closed form in every param group, a decoupled group (the vision tower's, in the policy; here decoder layer 1)
gets its own peak / final LR through megatron's config_overrides while keeping the standard no-weight-decay rule, an
optimizer step applies each group's LR exactly as torch AdamW with those groups, and a resumed cosine run continues
at the right LR with bit-identical weights. The Qwen2.5-VL policy's vision groups: tests/unit/test_freeze_vision.py.
"""

import math

import pytest
import torch

from dvr1.train.checkpoint import load_checkpoint, save_checkpoint
from dvr1.train.optim import OptimizerSetupError, build_lr_scheduler, build_optimizer
from tests.unit.test_checkpoint import train_step

LR, MIN, DEC, DEC_MIN, WD = 1e-2, 1e-3, 4e-3, 4e-4, 0.1
WARMUP, DECAY = 3, 11
DECOUPLED = ("decoder.layers.1.*",)


def closed_form(k, peak, final, warmup=WARMUP, decay=DECAY):
    """The LR of the step with 0-based index k: linear warmup from 0, then cosine to `final` at k = decay."""
    if k <= warmup:
        return peak * k / warmup
    if k > decay:
        return final
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * (k - warmup) / (decay - warmup)))


def make(tiny_gpt, seed=0, style="cosine", decoupled_lr=DEC, clip_grad=1.0):
    model = tiny_gpt(seed=seed)
    chunks, opt = build_optimizer(model, lr=LR, weight_decay=WD, min_lr=MIN if style == "cosine" else 0.0,
                                  clip_grad=clip_grad,
                                  decoupled_names=DECOUPLED, decoupled_lr=decoupled_lr, decoupled_min_lr=DEC_MIN)
    sched = build_lr_scheduler(opt, LR, warmup_steps=WARMUP, weight_decay=WD, style=style, decay_steps=DECAY,
                               min_lr=MIN if style == "cosine" else 0.0)
    return model, chunks, opt, sched


def in_layer_1(name):
    return name.startswith("decoder.layers.1.")


def test_decoupled_params_get_their_own_groups_with_standard_weight_decay(tiny_gpt):
    model, _, opt, _ = make(tiny_gpt)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {}
    for g in opt.param_groups:
        for p in g["params"]:
            groups[names[id(p)]] = g
    assert set(groups) == set(names.values())  # every param once (DDP's "module." prefix matched)
    assert any(in_layer_1(n) for n in groups) and any(not in_layer_1(n) for n in groups)
    for n, g in groups.items():
        assert g["is_decoupled_lr"] == in_layer_1(n), n
        assert (g["max_lr"], g["min_lr"]) == ((DEC, DEC_MIN) if in_layer_1(n) else (LR, MIN)), n
        p = dict(model.named_parameters())[n]
        no_wd = p.dim() == 1 or n.endswith(".bias")  # megatron's standard rule, kept for the decoupled params
        assert g["wd_mult"] == (0.0 if no_wd else 1.0), n
        assert g["weight_decay"] == pytest.approx(0.0 if no_wd else WD), n
    assert len(opt.param_groups) == 4


def test_cosine_lr_equals_the_closed_form_in_both_groups(tiny_gpt):
    _, _, opt, sched = make(tiny_gpt)
    seen = []
    for _ in range(DECAY + 2):
        seen.append({g["is_decoupled_lr"]: g["lr"] for g in opt.param_groups})
        sched.step(1)
    for k, lrs in enumerate(seen):
        assert lrs[False] == pytest.approx(closed_form(k, LR, MIN), rel=1e-12, abs=0), k
        assert lrs[True] == pytest.approx(closed_form(k, DEC, DEC_MIN), rel=1e-12, abs=0), k
    # the points named in the brief, by hand: start of warmup, end of warmup, mid-decay, last step, after it
    assert seen[0] == {False: 0.0, True: 0.0}
    assert seen[WARMUP] == pytest.approx({False: LR, True: DEC})
    assert seen[7][False] == pytest.approx(MIN + (LR - MIN) * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert seen[7][True] == pytest.approx((DEC + DEC_MIN) / 2)  # k=7 is half-way through the 8 decay steps
    assert seen[DECAY - 1][True] == pytest.approx(DEC_MIN + (DEC - DEC_MIN) * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert seen[DECAY] == pytest.approx({False: MIN, True: DEC_MIN})
    assert seen[DECAY + 1] == pytest.approx({False: MIN, True: DEC_MIN})


def test_constant_schedule_and_default_groups_are_unchanged(tiny_gpt):
    """No decoupled LR: megatron's two default groups as before; the constant schedule's warmup then lr (the
    values of the code before the option, tests/unit/test_megatron_patches.py); a decoupled group at the same LR
    steps the weights bit-identically without clipping (with it, the global grad norm sums the groups in another
    order: equal to ~1e-6 after 5 steps)."""
    _, opt = build_optimizer(tiny_gpt(), lr=LR, weight_decay=WD)
    assert len(opt.param_groups) == 2 and not any(g["is_decoupled_lr"] for g in opt.param_groups)
    assert all((g["max_lr"], g["min_lr"], g["default_config"]) == (LR, 0.0, True) for g in opt.param_groups)
    sched = build_lr_scheduler(opt, LR, warmup_steps=WARMUP, weight_decay=WD, init_lr=LR / 10)
    for k in range(6):
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([LR / 10 + (LR - LR / 10) * min(k, 3) / 3] * 2)
        sched.step(1)

    runs = []
    for decoupled_lr in (None, LR):
        model, chunks, opt, sched = make(tiny_gpt, style="constant", decoupled_lr=decoupled_lr, clip_grad=0.0)
        assert len(opt.param_groups) == (2 if decoupled_lr is None else 4)
        for s in range(WARMUP + 2):
            train_step(chunks, opt, sched, seed=s)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_a_step_applies_each_groups_lr_as_torch_adamw(tiny_gpt):
    """The first update after the warmup (cosine, k = WARMUP: peak LRs) equals torch AdamW with the same four
    groups (LM / decoupled x weight decay / none) and their LRs."""
    model, chunks, opt, sched = make(tiny_gpt)
    for _ in range(WARMUP):
        sched.step(1)
    ref = tiny_gpt()
    named = list(ref.named_parameters())

    def group(dec, wd):
        ps = [p for n, p in named if in_layer_1(n) == dec and (p.dim() == 1 or n.endswith(".bias")) != wd]
        return {"params": ps, "lr": DEC if dec else LR, "weight_decay": WD if wd else 0.0}

    ref_opt = torch.optim.AdamW([group(d, w) for d in (False, True) for w in (False, True)], betas=(0.9, 0.999),
                                eps=1e-8)
    train_step(chunks, opt, sched, seed=5)
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 128, (2, 13), generator=g)
    ref(tokens[:, :-1], torch.arange(12).expand(2, 12), None, labels=tokens[:, 1:]).mean().backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    ref_opt.step()
    moved = {False: 0.0, True: 0.0}
    for (n, p), q, p0 in zip(named, model.parameters(), tiny_gpt().parameters()):
        torch.testing.assert_close(q.detach(), p.detach(), rtol=0, atol=1e-6, msg=n)
        moved[in_layer_1(n)] = max(moved[in_layer_1(n)], float((q.detach() - p0).abs().max()))
    # Adam's first update is about lr per weight: the decoupled layer moved by its own LR, not the LM's
    assert moved[True] == pytest.approx(DEC, rel=0.05) and moved[False] == pytest.approx(LR, rel=0.05)


def test_resumed_cosine_run_continues_at_the_right_lr(tiny_gpt, tmp_path):
    """Save at step 5 (mid-decay), keep going 3 steps; a fresh model + optimizer + scheduler loaded from step 5 takes
    the same 3 steps at the same per-group LRs and ends bit-identical (each group's Adam state and max/min LR back
    in its own group, though the groups differ only by is_decoupled_lr)."""
    model, chunks, opt, sched = make(tiny_gpt)
    for s in range(5):
        train_step(chunks, opt, sched, seed=s)
    save_checkpoint(tmp_path, 5, chunks, opt, sched, {})
    want_lrs = []
    for s in range(5, 8):
        want_lrs.append(sorted((g["is_decoupled_lr"], g["wd_mult"], g["lr"]) for g in opt.param_groups))
        train_step(chunks, opt, sched, seed=s)
    want = [p.detach().clone() for p in model.parameters()]

    model2, chunks2, opt2, sched2 = make(tiny_gpt, seed=7)
    load_checkpoint(tmp_path, chunks2, opt2, sched2)
    assert sched2.num_steps == 5 and sched2.lr_decay_style == "cosine" and sched2.lr_decay_steps == DECAY
    names = {id(p): n for n, p in model2.named_parameters()}
    for g in opt2.param_groups:  # every group still holds its own params and LR bounds
        assert {in_layer_1(names[id(p)]) for p in g["params"]} == {g["is_decoupled_lr"]}
        assert (g["max_lr"], g["min_lr"]) == ((DEC, DEC_MIN) if g["is_decoupled_lr"] else (LR, MIN))
    for i, s in enumerate(range(5, 8)):
        got = sorted((g["is_decoupled_lr"], g["wd_mult"], g["lr"]) for g in opt2.param_groups)
        assert got == want_lrs[i]
        assert [lr for dec, _, lr in got] == pytest.approx(
            [closed_form(s, DEC if dec else LR, DEC_MIN if dec else MIN) for dec, _, _ in got], rel=1e-12)
        train_step(chunks2, opt2, sched2, seed=s)
    for a, b in zip(want, model2.parameters()):
        assert torch.equal(a, b.detach())


def test_setup_errors_name_the_argument(tiny_gpt):
    where = "dvr1.train.optim"
    with pytest.raises(OptimizerSetupError) as e:
        build_optimizer(tiny_gpt(), lr=LR, decoupled_names=DECOUPLED, decoupled_lr=DEC, decoupled_min_lr=2 * DEC)
    assert str(e.value) == f"{where}.build_optimizer: decoupled_min_lr={2 * DEC} must be in [0, decoupled_lr={DEC}]"
    with pytest.raises(OptimizerSetupError) as e:
        build_optimizer(tiny_gpt(), lr=LR, min_lr=-1.0)
    assert str(e.value) == f"{where}.build_optimizer: min_lr=-1.0 must be in [0, lr={LR}]"
    with pytest.raises(OptimizerSetupError) as e:
        build_optimizer(tiny_gpt(), lr=LR, decoupled_lr=-1.0)
    assert str(e.value) == f"{where}.build_optimizer: decoupled_lr=-1.0 must be >= 0"

    _, opt = build_optimizer(tiny_gpt(), lr=LR, min_lr=MIN)
    with pytest.raises(OptimizerSetupError) as e:
        build_lr_scheduler(opt, LR, warmup_steps=5, style="cosine", decay_steps=5, min_lr=MIN)
    assert str(e.value) == f"{where}.build_lr_scheduler: decay_steps=5 must be > warmup_steps=5"
    with pytest.raises(OptimizerSetupError) as e:
        build_lr_scheduler(opt, LR, style="linear")
    assert str(e.value) == f"{where}.build_lr_scheduler: style='linear' must be one of constant, cosine"
    with pytest.raises(OptimizerSetupError) as e:  # the scheduler's bounds must be the default groups'
        build_lr_scheduler(opt, LR, style="cosine", decay_steps=10, min_lr=0.0)
    assert str(e.value) == (f"{where}.build_lr_scheduler: lr={LR}, min_lr=0.0 differ from the optimizer's default "
                            f"param groups (max_lr={LR}, min_lr={MIN})")
