"""A full Reg-GRPO step of the Qwen2.5-VL policy at TP=2 and at PP=2 equals TP=1/PP=1 (torchrun, gloo, CPU):
per-token log-probs and entropy, the loss, every parameter's gradient (gathered and mapped to HF names), and the
rollout (greedy and sampled tokens, pipelined decode at PP=2); packed (`model.packing`) at TP=2 and PP=2 equals the
padded TP=1 step."""

import pytest
import torch

from dvr1.models.tiny import make_tiny_checkpoint
from tests.distributed.launch import SCRIPTS, run_torchrun

pytestmark = pytest.mark.distributed
SCRIPT = SCRIPTS / "rl_step_parallel.py"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    return make_tiny_checkpoint(str(path), ["question 0? question 1? <think>x</think><answer>A</answer>"] * 20,
                                seed=1, vocab_size=320)


def _run(tmp_path, ckpt, nproc, tp, pp, fused=False, packed=False):
    flags = (["fused"] if fused else []) + (["packed"] if packed else [])
    out = tmp_path / f"tp{tp}pp{pp}{''.join(flags)}"
    out.mkdir()
    run_torchrun(SCRIPT, ckpt, out, tp, pp, *flags, nproc=nproc, timeout=400)
    stages = [torch.load(out / f"pp{i}.pt") for i in range(pp)]
    merged = {"grads": {}}
    for s in stages:
        merged["grads"].update(s["grads"])
        for k in ("logp", "entropy", "loss", "seq_lens"):
            if k in s:
                merged[k] = s[k]
        merged["greedy"], merged["sampled"] = s["greedy"], s["sampled"]
        merged["output_grad_in_main_grad"] = s.get("output_grad_in_main_grad", merged.get("output_grad_in_main_grad"))
    return merged


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ckpt):
    return _run(tmp_path_factory.mktemp("ref"), ckpt, 1, 1, 1)


def _close(a, b, name, rel=1e-5):
    """Relative error in norm: ||a - b|| <= rel * ||b|| (fp32; reduction order differs between layouts)."""
    assert a.shape == b.shape, name
    err = float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))
    assert err <= rel, f"{name}: relative error {err:.3g} (max abs diff {(a - b).abs().max():.3g})"


@pytest.mark.parametrize("tp,pp,fused,packed", [(2, 1, False, False), (1, 2, False, False), (2, 1, True, False),
                                               (1, 2, True, False), (2, 1, False, True), (1, 2, True, True)])
def test_rl_step_equals_single_process(tmp_path, ckpt, reference, tp, pp, fused, packed):
    """The reference is the plain padded logits path at TP=1/PP=1; `fused` trains through fused_linear_logprobs;
    `packed` runs the log-prob and training passes packed, one group per microbatch."""
    got = _run(tmp_path, ckpt, 2, tp, pp, fused, packed)
    lens = reference["seq_lens"]
    assert max(lens) >= 2.5 * min(lens)  # sequences of very different lengths
    _close(got["logp"], reference["logp"], "logp")
    _close(got["entropy"], reference["entropy"], "entropy")
    _close(got["loss"], reference["loss"], "loss")
    assert float(reference["loss"]) > 0
    assert set(got["grads"]) == set(reference["grads"])
    nonzero = 0
    for k, g in reference["grads"].items():
        _close(got["grads"][k], g, k)
        nonzero += int(g.abs().sum() > 0)
    assert nonzero >= len(reference["grads"]) - 1  # every weight gets gradient (a tied head counts once)
    assert got["greedy"] == reference["greedy"]
    assert got["sampled"] == reference["sampled"]
    assert not got["output_grad_in_main_grad"]  # a tied head keeps the ordinary gradient path


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    """An untied checkpoint (separate output layer, as 7B/72B) and its TP=1 logits-path reference."""
    path = make_tiny_checkpoint(str(tmp_path_factory.mktemp("untied")),
                                ["question 0? question 1? <think>x</think><answer>A</answer>"] * 20, seed=1,
                                vocab_size=320, tie_word_embeddings=False)
    return path, _run(tmp_path_factory.mktemp("ref_untied"), path, 1, 1, 1)


def test_fused_untied_output_layer_grads_go_to_main_grad(tmp_path, untied):
    """Untied output layer under megatron DDP at TP=2: the fused backward adds its weight gradient straight into
    main_grad (dvr1.parallel.logprobs.accumulates_into_main_grad); every gradient still equals the reference."""
    path, ref = untied
    got = _run(tmp_path, path, 2, 2, 1, True)
    assert got["output_grad_in_main_grad"] and not ref["output_grad_in_main_grad"]  # fused path vs logits path
    _close(got["loss"], ref["loss"], "loss")
    assert "lm_head.weight" in ref["grads"] and float(ref["grads"]["lm_head.weight"].abs().sum()) > 0
    for k, g in ref["grads"].items():
        _close(got["grads"][k], g, k)
