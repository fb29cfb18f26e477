"""Dynamic sampling resumes exactly (issue 17; docs/ALGORITHMS.md §9): a tiny RL run with rl.dynamic_sampling,
T-GRPO and the overlong punishment, SIGKILLed inside step 2's second sampling round (after the sampler drew the extra
prompts, before anything of step 2 is saved) and rerun with the same command, ends with the metrics and final
weights of the uninterrupted run, bit for bit. The barely trained tiny policy answers nothing correctly, so every round
drops every group and each step runs to the round bound: the extra draws, the engine's RNG and T-GRPO's frame
permutations all have to come back from the step-1 checkpoint. Machinery: tests/e2e/test_chaos.py
(`DVR1_KILL_AT`, dvr1/train/faults.py)."""

import signal

import pytest
import torch

from tests.e2e.test_chaos import _latest, _metrics, _run
from tests.e2e.test_main_job import SMOKE, _final_weights, dvr1, smoke_data  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e


def test_dynamic_sampling_killed_mid_round_resumes_bit_identical(smoke_data, tmp_path):  # noqa: F811
    root, data = smoke_data
    init = tmp_path / "init"
    # a short SFT: the policy answers nothing correctly yet, but some responses end before the budget, so the
    # overlong punishment varies within a group and the update has a gradient
    dvr1("sft", "-c", SMOKE, f"data.root={data}", f"run_dir={init}", "sft.steps=20", "sft.warmup=2")
    args = ["-c", SMOKE, f"data.root={data}", "rl.steps=2", "rl.save_every=1", "rl.dynamic_sampling=true",
            "rl.dynamic_sampling_max_rounds=3", "reward.overlong=true", "reward.overlong_cache=8",
            "reward.temporal_contrast=true"]
    tail = ["--init", str(init / "sft" / "hf")]
    ref = tmp_path / "ref"
    rc, err = _run(args + [f"run_dir={ref}"] + tail, {}, tmp_path)
    assert rc == 0, err[-3000:]
    m = _metrics(ref)
    assert [r["dyn/rounds"] for r in m] == [3, 3] and all(r["dyn/bound_hit"] == 1.0 for r in m), m
    assert all(r["grad_norm"] > 0 for r in m), m  # the overlong punishment gives the topped-up group a gradient

    run = tmp_path / "run"
    rc, err = _run(args + [f"run_dir={run}"] + tail, {"DVR1_KILL_AT": "rl:2:rollout:2"}, tmp_path)
    assert rc == -signal.SIGKILL, err[-3000:]
    assert _latest(run) == 1
    rc, err = _run(args + [f"run_dir={run}"] + tail, {}, tmp_path)
    assert rc == 0 and "rl: resumed from step 1 " in err, err[-3000:]
    assert _metrics(run) == m
    want, got = _final_weights(ref), _final_weights(run)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
