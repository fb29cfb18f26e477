"""Checkpoints move between TP=1/PP=1 and TP=2/PP=2 with identical weights and logits (torchrun, 4 ranks, gloo).

In this process (TP=1/PP=1): tiny tied (GQA 2) and untied (GQA 1) checkpoints, each converted HF -> megatron for
TP=2/PP=2 by one process (dvr1.models.convert), and saved by megatron at TP=1/PP=1 (dvr1.train.checkpoint). The
torchrun job (tests/distributed/scripts/convert_tp_pp.py, see its docstring) loads both at TP=2/PP=2, runs the
forward, and saves megatron's own TP=2/PP=2 checkpoint, which is then loaded back here at TP=1/PP=1.

Asserted: every parameter loaded at the other layout is bit-identical to loading the HF weights directly at that
layout, so logits are identical (torch.equal) to that direct load's; all equal transformers' within 1e-4 (fp32) and
TP=2/PP=2 vs TP=1/PP=1 within 1e-5 (reduction order); the converter's DCP metadata equals megatron's TP=2/PP=2 save.
"""

import json
import os

import pytest
import torch

from dvr1.models.convert import convert_hf_to_megatron, load_megatron_checkpoint
from dvr1.models.qwen2_5_vl import Qwen25VLPolicy, load_hf_config, load_hf_weights
from tests.distributed.launch import SCRIPTS, run_torchrun
from tests.distributed.scripts.convert_common import dcp_summary, hf_logits, make_variant, model_inputs, policy_logits

pytestmark = pytest.mark.distributed

NAMES = ["tied_gqa2", "untied_gqa1"]


def _tp1_policy(hf, ckpt=None):
    policy = Qwen25VLPolicy(load_hf_config(hf))
    if ckpt is None:
        load_hf_weights(policy, hf)
    else:
        load_megatron_checkpoint(policy, ckpt, hf_dir=hf)
    return policy.eval()


@pytest.fixture(scope="module")
def job(tmp_path_factory, parallel_state_1):
    from dvr1.train.checkpoint import save_checkpoint

    out = tmp_path_factory.mktemp("convert_tp_pp")
    spec, ref = {}, {}
    for name in NAMES:
        hf = make_variant(str(out / name / "hf"), name)
        d = {k: str(out / name / k) for k in ("conv22", "run11", "run22")}
        d["hf"] = hf
        convert_hf_to_megatron(hf, d["conv22"], tp=2, pp=2, progress=False)
        policy = _tp1_policy(hf)
        save_checkpoint(d["run11"], 0, [policy])
        x = model_inputs(load_hf_config(hf))
        ref[name] = {"hf": hf_logits(hf, x), "tp1": policy_logits(policy, x), "x": x,
                     "state": policy.state_dict()}
        spec[name] = d
    (out / "inputs.json").write_text(json.dumps(spec))
    run_torchrun(SCRIPTS / "convert_tp_pp.py", out, nproc=4, timeout=400)
    results = json.loads((out / "results.json").read_text())
    logits = {name: torch.load(out / f"{name}_logits.pt") for name in NAMES}
    return spec, ref, results, logits


@pytest.mark.parametrize("name", NAMES)
def test_loads_at_tp2_pp2_are_bit_identical_to_direct_hf_load(job, name):
    r = job[2][name]
    assert r["conv_compared"] > 40 and r["from11_compared"] == r["conv_compared"]
    assert r["conv_mismatched"] == 0
    assert r["from11_mismatched"] == 0


@pytest.mark.parametrize("name", NAMES)
def test_tp2_pp2_logits(job, name):
    _, ref, _, logits = job
    got = logits[name]
    assert torch.equal(got["conv"], got["ref"])     # converted for TP=2/PP=2 by one process
    assert torch.equal(got["from11"], got["ref"])   # saved at TP=1/PP=1, loaded at TP=2/PP=2
    assert got["ref"].shape == ref[name]["hf"].shape
    assert (got["ref"] - ref[name]["hf"]).abs().max().item() <= 1e-4
    assert (got["ref"] - ref[name]["tp1"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_saved_at_tp2_pp2_loads_at_tp1(job, name):
    spec, ref, _, _ = job
    policy = _tp1_policy(spec[name]["hf"], spec[name]["run22"])
    state = policy.state_dict()
    want = ref[name]["state"]
    keys = [k for k, v in want.items() if isinstance(v, torch.Tensor)]
    assert [k for k in keys if not torch.equal(state[k], want[k])] == []
    assert torch.equal(policy_logits(policy, ref[name]["x"]), ref[name]["tp1"])


@pytest.mark.parametrize("name", NAMES)
def test_converter_writes_megatrons_tp2_pp2_layout(job, name):
    spec = job[0][name]
    mine, theirs = (os.path.join(spec[k], "ckpt", "step_0", "dist") for k in ("conv22", "run22"))
    assert dcp_summary(mine) == dcp_summary(theirs)
    assert torch.load(os.path.join(mine, "common.pt")) == torch.load(os.path.join(theirs, "common.pt"))
