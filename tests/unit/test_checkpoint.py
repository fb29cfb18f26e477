"""dvr1.train.checkpoint on a tiny megatron-core GPTModel (single process, CPU): exact round trips and resume.

Round trip: parameters, Adam state, scheduler, RNG streams (python, numpy, torch CPU, megatron tracker) and the dvr1
extra state come back identical in a freshly initialised model + optimizer. Resume: a second optimizer step after
loading equals the uninterrupted run's second step bit for bit, with dropout on (so the RNG restore matters).
Atomicity: a ``.tmp`` directory from a killed save is never read.
"""

import json
import random

import numpy as np
import pytest
import torch

from dvr1.parallel.setup import seed_everything
from dvr1.train.checkpoint import CheckpointError, latest_step, list_steps, load_checkpoint, save_checkpoint
from dvr1.train.optim import build_lr_scheduler, build_optimizer

LR, WD = 1e-2, 0.1


def make(tiny_gpt, seed=0, dropout=0.0):
    model = tiny_gpt(seed=seed, hidden_dropout=dropout, attention_dropout=dropout)
    chunks, opt = build_optimizer(model, lr=LR, weight_decay=WD, clip_grad=1.0)
    return model, chunks, opt, build_lr_scheduler(opt, LR, warmup_steps=3, weight_decay=WD, init_lr=LR / 10)


def train_step(chunks, opt, sched, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 128, (2, 13), generator=g)
    for c in chunks:
        c.zero_grad_buffer()
    opt.zero_grad()
    chunks[0](tokens[:, :-1], torch.arange(12).expand(2, 12), None, labels=tokens[:, 1:]).float().mean().backward()  # .float(): bf16 models too
    for c in chunks:
        c.finish_grad_sync()
    ok, _, _ = opt.step()
    sched.step(1)
    assert ok


def adam_state(opt):
    inner = opt.chained_optimizers[0].optimizer if hasattr(opt, "chained_optimizers") else opt.optimizer
    return [{k: v.clone() for k, v in inner.state[p].items()} for g in inner.param_groups for p in g["params"]]


def next_draws():
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    with get_cuda_rng_tracker().fork():
        tracked = torch.rand(4)
    return random.random(), np.random.rand(3).tolist(), torch.rand(3), tracked


def test_round_trip_restores_params_optimizer_scheduler_rng_and_extra(tiny_gpt, tmp_path):
    model, chunks, opt, sched = make(tiny_gpt, seed=0)
    train_step(chunks, opt, sched, seed=1)
    extra = {"data_position": 17, "reward_history": {"q1": [1.0, 0.0], "q2": [0.5]}}
    path = save_checkpoint(tmp_path, 1, chunks, opt, sched, extra)
    want_draws = next_draws()

    seed_everything(999)
    model2, chunks2, opt2, sched2 = make(tiny_gpt, seed=5)
    assert not torch.equal(next(model2.parameters()), next(model.parameters()))
    got = load_checkpoint(tmp_path, chunks2, opt2, sched2)

    assert path == tmp_path / "ckpt" / "step_1"
    assert got == extra
    for (name, p), q in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, q), name
    for a, b in zip(adam_state(opt), adam_state(opt2)):
        assert a.keys() == b.keys() == {"step", "exp_avg", "exp_avg_sq"}
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert sched2.num_steps == sched.num_steps == 1
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    got_draws = next_draws()
    assert got_draws[0] == want_draws[0] and got_draws[1] == want_draws[1]
    assert torch.equal(got_draws[2], want_draws[2]) and torch.equal(got_draws[3], want_draws[3])
    meta = json.loads((path / "meta.json").read_text())
    assert meta == {"step": 1, "optimizer": "saved", "world_size": 1, "tp_size": 1, "pp_size": 1, "dp_size": 1}


def test_resumed_second_step_equals_uninterrupted(tiny_gpt, tmp_path):
    model, chunks, opt, sched = make(tiny_gpt, seed=0, dropout=0.2)
    train_step(chunks, opt, sched, seed=1)
    save_checkpoint(tmp_path, 1, chunks, opt, sched, {"data_position": 1})
    train_step(chunks, opt, sched, seed=2)
    want = [p.detach().clone() for p in model.parameters()]

    model2, chunks2, opt2, sched2 = make(tiny_gpt, seed=3, dropout=0.2)
    assert load_checkpoint(tmp_path, chunks2, opt2, sched2) == {"data_position": 1}
    train_step(chunks2, opt2, sched2, seed=2)
    for (name, p), w in zip(model2.named_parameters(), want):
        assert torch.equal(p, w), name

    # Without the RNG restore the dropout masks differ, so the same resume is not exact (the test can fail).
    model3, chunks3, opt3, sched3 = make(tiny_gpt, seed=3, dropout=0.2)
    load_checkpoint(tmp_path, chunks3, opt3, sched3, restore_rng=False)
    train_step(chunks3, opt3, sched3, seed=2)
    assert any(not torch.equal(p, w) for p, w in zip(model3.parameters(), want))


def test_killed_save_leaves_tmp_that_is_ignored(tiny_gpt, tmp_path):
    model, chunks, opt, sched = make(tiny_gpt)
    save_checkpoint(tmp_path, 1, chunks, opt, sched, {"at": 1})
    stale = tmp_path / "ckpt" / "step_2.tmp"
    (stale / "dist").mkdir(parents=True)
    (stale / "dist" / "common.pt").write_bytes(b"truncated")

    assert latest_step(tmp_path) == 1
    assert list_steps(tmp_path) == [1]
    assert load_checkpoint(tmp_path, chunks, opt, sched) == {"at": 1}
    missing = r"step_2: no complete checkpoint for step 2 \(missing dist/metadata.json\)"
    with pytest.raises(CheckpointError, match=missing):
        load_checkpoint(tmp_path, chunks, opt, sched, step=2)

    save_checkpoint(tmp_path, 2, chunks, opt, sched, {"at": 2})  # replaces the stale .tmp
    assert not stale.exists()
    assert latest_step(tmp_path) == 2
    assert load_checkpoint(tmp_path, chunks, opt, sched) == {"at": 2}


def test_keep_last_and_explicit_step(tiny_gpt, tmp_path):
    model, chunks, opt, sched = make(tiny_gpt)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, chunks, opt, sched, {"at": step}, keep_last=2)
    assert list_steps(tmp_path) == [2, 3]
    assert (tmp_path / "ckpt" / "latest").read_text() == "3\n"
    assert load_checkpoint(tmp_path, chunks, opt, sched, step=2) == {"at": 2}


def test_never_stepped_optimizer_round_trips_as_fresh(tiny_gpt, tmp_path):
    """Saved before the first step: the Adam state is recorded as fresh and comes back empty."""
    model, chunks, opt, sched = make(tiny_gpt, seed=0)
    save_checkpoint(tmp_path, 0, chunks, opt, sched, {})
    assert json.loads((tmp_path / "ckpt" / "step_0" / "meta.json").read_text())["optimizer"] == "fresh"
    train_step(chunks, opt, sched, seed=1)
    want = [p.detach().clone() for p in model.parameters()]

    model2, chunks2, opt2, sched2 = make(tiny_gpt, seed=4)
    train_step(chunks2, opt2, sched2, seed=9)  # a used optimizer must be reset by the load
    load_checkpoint(tmp_path, chunks2, opt2, sched2)
    assert adam_state(opt2) == [{}] * len(adam_state(opt2))
    train_step(chunks2, opt2, sched2, seed=1)
    for p, w in zip(model2.parameters(), want):
        assert torch.equal(p, w)


def test_no_checkpoint_and_bad_latest(tiny_gpt, tmp_path):
    model, chunks, opt, sched = make(tiny_gpt)
    assert latest_step(tmp_path) is None
    assert load_checkpoint(tmp_path, chunks, opt, sched) is None
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "latest").write_text("abc\n")
    with pytest.raises(CheckpointError, match=r"ckpt/latest: expected a step number, got 'abc'"):
        latest_step(tmp_path)
    (tmp_path / "ckpt" / "latest").write_text("4\n")
    with pytest.raises(CheckpointError, match=r"ckpt/latest: names step 4 but .*ckpt/step_4 does not exist"):
        load_checkpoint(tmp_path, chunks, opt, sched)
    with pytest.raises(ValueError, match=r"save_checkpoint: keep_last=0 must be >= 1 or None"):
        save_checkpoint(tmp_path, 1, chunks, opt, sched, {}, keep_last=0)
    save_checkpoint(tmp_path, 5, [model])  # model only
    with pytest.raises(CheckpointError, match=r"step_5: saved without an optimizer; pass optimizer=None"):
        load_checkpoint(tmp_path, chunks, opt, sched)
    assert load_checkpoint(tmp_path, [model]) == {}


# ---- weights_only, corrupt checkpoints, kills inside a save (issue 19) ----------------------------------------

def test_every_file_loads_weights_only_and_rng_continues(tiny_gpt, tmp_path):
    """The per-rank file (RNG states incl. numpy's cached Gaussian, trainer-like state) and common.pt load with
    torch.load(weights_only=True); after the load every stream continues bit for bit."""
    model, chunks, opt, sched = make(tiny_gpt, seed=0)
    train_step(chunks, opt, sched, seed=1)
    np.random.randn(1)  # leaves numpy's legacy state with a cached Gaussian (has_gauss=1)
    extra = {"sampler": {"order": [3, 1, 2], "generator": torch.Generator().manual_seed(3).get_state()},
             "history": {"window": 4, "values": [0.5, 1.0]}, "engine": {"calls": 2, "seed": 7}, "bad": None}
    path = save_checkpoint(tmp_path, 1, chunks, opt, sched, extra)
    want = (next_draws(), np.random.randn(3).tolist())

    rank = torch.load(path / "extra" / "rank_00000.pt", weights_only=True)
    assert rank["extra_state"]["history"] == extra["history"] and rank["rng"]["numpy"]["has_gauss"] == 1
    torch.load(path / "dist" / "common.pt", weights_only=True)
    seed_everything(5)
    model2, chunks2, opt2, sched2 = make(tiny_gpt, seed=5)
    got = load_checkpoint(tmp_path, chunks2, opt2, sched2)
    assert torch.equal(got["sampler"]["generator"], extra["sampler"]["generator"])
    draws = next_draws()
    assert draws[0] == want[0][0] and draws[1] == want[0][1] and np.random.randn(3).tolist() == want[1]
    assert torch.equal(draws[2], want[0][2]) and torch.equal(draws[3], want[0][3])


def test_save_refuses_state_that_needs_unpickling(tiny_gpt, tmp_path):
    model, chunks, opt, sched = make(tiny_gpt)
    save_checkpoint(tmp_path, 1, chunks, opt, sched, {"at": 1})
    msg = (r"^dvr1.train.checkpoint.save_checkpoint: extra_state must hold only tensors, lists, tuples, dicts, ints, "
           r"floats, bools, strings and None \(not loadable with torch.load\(weights_only=True\): [^\n]*numpy[^\n]*\)$")
    with pytest.raises(ValueError, match=msg):
        save_checkpoint(tmp_path, 2, chunks, opt, sched, {"position": np.zeros(2)})
    assert latest_step(tmp_path) == 1 and list_steps(tmp_path) == [1]


def _two_checkpoints(tiny_gpt, tmp_path):
    """Steps 1 and 2 of a run; returns (chunks, opt, sched) of a fresh model and step 1's parameters."""
    model, chunks, opt, sched = make(tiny_gpt, seed=0)
    train_step(chunks, opt, sched, seed=1)
    save_checkpoint(tmp_path, 1, chunks, opt, sched, {"at": 1})
    at1 = [p.detach().clone() for p in model.parameters()]
    train_step(chunks, opt, sched, seed=2)
    save_checkpoint(tmp_path, 2, chunks, opt, sched, {"at": 2})
    model2, chunks2, opt2, sched2 = make(tiny_gpt, seed=7)
    return model2, chunks2, opt2, sched2, at1


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return len(data) // 2


@pytest.mark.parametrize("name, reason", [
    ("extra/rank_00000.pt", r"truncated or corrupt \(not a complete torch.save zip archive\)"),
    ("dist/__0_0.distcp", r"truncated \(\d+ of at least \d+ bytes\)"),
    ("dist/metadata.json", r"unreadable \(JSONDecodeError: .*\)"),
    ("dist/common.pt", r"truncated or corrupt \(not a complete torch.save zip archive\)"),
    ("dist/.metadata", r"unreadable \(.*\)"),
    ("meta.json", r"unreadable \(JSONDecodeError: .*\)"),
])
def test_truncated_latest_falls_back_to_previous(tiny_gpt, tmp_path, caplog, name, reason):
    import logging
    import re

    model, chunks, opt, sched, at1 = _two_checkpoints(tiny_gpt, tmp_path)
    broken = tmp_path / "ckpt" / "step_2" / name
    half = _truncate(broken)
    with caplog.at_level(logging.WARNING, logger="dvr1.train.checkpoint"):
        assert load_checkpoint(tmp_path, chunks, opt, sched) == {"at": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and re.fullmatch(f"{re.escape(str(broken))}: {reason}; falling back to step 1",
                                               warnings[0]), warnings
    if name.endswith(".distcp"):
        assert f"truncated ({half} of at least" in warnings[0]
    for p, w in zip(model.parameters(), at1):
        assert torch.equal(p, w)
    assert sched.num_steps == 1

    with pytest.raises(CheckpointError, match=f"^{re.escape(str(broken))}: {reason}$"):  # an explicit step: no fallback
        load_checkpoint(tmp_path, chunks, opt, sched, step=2)
    import shutil

    shutil.rmtree(tmp_path / "ckpt" / "step_1")
    msg = f"^{re.escape(str(broken))}: {reason}; no older complete checkpoint to fall back to$"
    with pytest.raises(CheckpointError, match=msg):
        load_checkpoint(tmp_path, chunks, opt, sched)


def test_per_rank_file_with_a_pickled_object_is_refused(tiny_gpt, tmp_path, caplog):
    """A per-rank file that would need unpickling (here a numpy array, as the numpy RNG state used to be) is not
    loaded: the fallback names the file and what torch.load(weights_only=True) refused."""
    model, chunks, opt, sched, at1 = _two_checkpoints(tiny_gpt, tmp_path)
    rank_file = tmp_path / "ckpt" / "step_2" / "extra" / "rank_00000.pt"
    state = torch.load(rank_file, weights_only=True)
    state["extra_state"]["evil"] = np.zeros(1)
    torch.save(state, rank_file)
    assert load_checkpoint(tmp_path, chunks, opt, sched) == {"at": 1}
    import re

    want = (f"{re.escape(str(rank_file))}: unreadable \\(not loadable with torch.load\\(weights_only=True\\): "
            r"[^\n]*numpy[^\n]*\); falling back to step 1")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] and all(
        re.fullmatch(want, r.getMessage()) for r in caplog.records if r.levelname == "WARNING")


class _Killed(BaseException):
    """Stands in for SIGKILL inside the test process: nothing after the fault point runs."""


def _save_killed_at(monkeypatch, point, run_dir, chunks, opt, sched):
    """Save step 2 with the fault hook raising (instead of SIGKILL) at `point` (dvr1/train/faults.py)."""
    from dvr1.train import faults

    monkeypatch.setenv("DVR1_KILL_AT", f"test:2:{point}")
    monkeypatch.setattr(faults, "_die", lambda: (_ for _ in ()).throw(_Killed()))
    faults.position("test", 2)
    try:
        with pytest.raises(_Killed):
            save_checkpoint(run_dir, 2, chunks, opt, sched, {"at": 2})
    finally:
        monkeypatch.delenv("DVR1_KILL_AT")
        faults.position("test", 0)


@pytest.mark.parametrize("point, latest", [("ckpt.begin", 1), ("ckpt.dist", 1), ("ckpt.rank_file", 1),
                                           ("ckpt.meta", 1), ("ckpt.rename", 1), ("ckpt.latest", 2)])
def test_save_killed_at_any_write_never_becomes_latest(tiny_gpt, tmp_path, monkeypatch, point, latest):
    model, chunks, opt, sched = make(tiny_gpt)
    save_checkpoint(tmp_path, 1, chunks, opt, sched, {"at": 1})
    _save_killed_at(monkeypatch, point, tmp_path, chunks, opt, sched)
    if point == "ckpt.rank_file":  # killed mid-write: half a file, in the .tmp directory
        partial = tmp_path / "ckpt" / "step_2.tmp" / "extra" / "rank_00000.pt"
        assert 0 < partial.stat().st_size and pytest.raises(Exception, torch.load, partial, weights_only=True)
    assert latest_step(tmp_path) == latest
    assert list_steps(tmp_path) == ([1] if point in ("ckpt.begin", "ckpt.dist", "ckpt.rank_file", "ckpt.meta")
                                    else [1, 2])
    assert load_checkpoint(tmp_path, chunks, opt, sched) == {"at": latest}
    save_checkpoint(tmp_path, 2, chunks, opt, sched, {"at": 2}, keep_last=1)  # the same save again completes
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest", "step_2"]  # no stale .tmp left
    assert load_checkpoint(tmp_path, chunks, opt, sched) == {"at": 2}


def test_resave_killed_between_swap_falls_back(tiny_gpt, tmp_path, monkeypatch, caplog):
    """Re-saving an existing step killed after the old copy moved aside: `latest` names a missing directory, the
    load falls back to the newest complete step with a warning."""
    model, chunks, opt, sched = make(tiny_gpt)
    for step in (1, 2):
        save_checkpoint(tmp_path, step, chunks, opt, sched, {"at": step})
    _save_killed_at(monkeypatch, "ckpt.swap", tmp_path, chunks, opt, sched)
    assert list_steps(tmp_path) == [1]
    assert load_checkpoint(tmp_path, chunks, opt, sched) == {"at": 1}
    want = (f"{tmp_path / 'ckpt' / 'latest'}: names step 2 but {tmp_path / 'ckpt' / 'step_2'} does not exist; "
            "falling back to step 1")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [want]


def test_kill_spec_errors():
    from dvr1.train.faults import parse_kill_spec

    assert parse_kill_spec("rl:2:update") == "rl:2:update:1" and parse_kill_spec("rl:03:decode:40") == "rl:3:decode:40"
    with pytest.raises(ValueError, match=r"^DVR1_KILL_AT='rl:x:update': expected <stage>:<step>:<point>\[:<n>\], "
                                         r"e\.g\. rl:2:update$"):
        parse_kill_spec("rl:x:update")
    with pytest.raises(ValueError, match=r"^DVR1_KILL_AT='rl:2:upd': unknown point 'upd' \(one of rollout, decode, "):
        parse_kill_spec("rl:2:upd")
