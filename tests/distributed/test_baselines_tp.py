"""A training step of every `algo.name` (GRPO, Reg-GRPO and the §9 baselines of docs/ALGORITHMS.md) at TP=2 equals
one process: loss, combined metrics and every parameter's gradient (torchrun, gloo, CPU). One launch per layout
loops over all algorithms (tests/distributed/scripts/baselines_tp.py)."""

import pytest
import torch

from dvr1.models.tiny import make_tiny_checkpoint
from dvr1.rl.losses import ALGORITHMS
from tests.distributed.launch import SCRIPTS, run_torchrun

pytestmark = pytest.mark.distributed
SCRIPT = SCRIPTS / "baselines_tp.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    ckpt = make_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny")),
                                ["question 0? question 1? <think>x</think><answer>A</answer>"] * 20, seed=1,
                                vocab_size=320)
    out = {}
    for tp in (1, 2):
        d = tmp_path_factory.mktemp(f"tp{tp}")
        run_torchrun(SCRIPT, ckpt, d, tp, nproc=tp, timeout=400)
        out[tp] = torch.load(d / "result.pt")
    return out


def _close(a, b, name, rel=1e-5):
    """Relative error in norm: ||a - b|| <= rel * ||b|| (fp32; reduction order differs between layouts)."""
    assert a.shape == b.shape, name
    err = float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))
    assert err <= rel, f"{name}: relative error {err:.3g} (max abs diff {(a - b).abs().max():.3g})"


@pytest.mark.parametrize("name", ALGORITHMS)
def test_step_at_tp2_equals_one_process(runs, name):
    ref, got = runs[1][name], runs[2][name]
    _close(runs[2]["logp"], runs[1]["logp"], "logp")
    _close(got["loss"], ref["loss"], "loss")
    assert float(ref["loss"].abs()) > 0
    assert got["metrics"].keys() == ref["metrics"].keys()
    for k, v in ref["metrics"].items():
        assert got["metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    assert set(got["grads"]) == set(ref["grads"])
    nonzero = 0
    for k, g in ref["grads"].items():
        _close(got["grads"][k], g, f"{name}: {k}")
        nonzero += int(g.abs().sum() > 0)
    assert nonzero >= len(ref["grads"]) - 1  # every weight gets gradient (a tied head counts once)
    if name in ("dapo", "gspo", "cispo"):  # the clips bind in this batch
        assert ref["metrics"]["clip_frac"] > 0
