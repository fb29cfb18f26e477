"""A full Reg-GRPO step of the Qwen2.5-VL policy at TP=2, at TP=2 with sequence parallel and at PP=2 equals
TP=1/PP=1 (torchrun, gloo, CPU): per-token log-probs, the loss, every parameter's gradient (gathered and mapped to
HF names), and the rollout (greedy and sampled tokens, pipelined decode at PP=2). With `model.freeze_vision=false`
(issue 16, the same launches): the vision tower's gradients at TP=2 (identical on both TP ranks) and at PP=2 (first
stage) equal TP=1. Packed (`model.packing`, one group per microbatch) at TP=2 and at PP=2 (fused) equals the padded
TP=1 step (log-probs, entropy, loss, every gradient). Sequence parallel at TP=2 and at TP=2 x PP=2 (4 processes),
padded and packed (sequences of 66 to 239 tokens), equals the TP=1 step without SP."""

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


def _run(tmp_path, ckpt, nproc, tp, pp, fused=False, flags="", vision=False):
    """`flags`: the script's FLAGS (comma-separated, see rl_step_parallel.py); `fused` / `vision` add them."""
    flags = ",".join(f for f in (["fused"] if fused else []) + (["vision"] if vision else []) + flags.split(",") if f)
    out = tmp_path / f"tp{tp}pp{pp}{flags.replace(',', '_')}"
    out.mkdir()
    run_torchrun(SCRIPT, ckpt, out, tp, pp, *([flags] if flags else []), nproc=nproc, timeout=400)
    stages = [torch.load(out / f"pp{i}.pt") for i in range(pp)]
    merged = {"grads": {}}
    for s in stages:
        merged["grads"].update(s["grads"])
        for k in ("logp", "entropy", "loss", "logp_train", "seq_len", "vision_grads", "vision_loss",
                  "vision_tp_spread", "packed_shapes"):
            if k in s:
                merged[k] = s[k]
        if "other" in s:  # the other log-prob path: its gradients from every stage, the rest from the last
            other = merged.setdefault("other", {"grads": {}})
            other["grads"].update(s["other"]["grads"])
            other.update({k: v for k, v in s["other"].items() if k != "grads"})
        merged["greedy"], merged["sampled"] = s["greedy"], s["sampled"]
        merged["output_grad_in_main_grad"] = s.get("output_grad_in_main_grad", merged.get("output_grad_in_main_grad"))
    return merged


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ckpt):
    return _run(tmp_path_factory.mktemp("ref"), ckpt, 1, 1, 1, vision=True)


def _close(a, b, name, rel=1e-5):
    """Relative error in norm: ||a - b|| <= rel * ||b|| (fp32; reduction order differs between layouts)."""
    assert a.shape == b.shape, name
    err = float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))
    assert err <= rel, f"{name}: relative error {err:.3g} (max abs diff {(a - b).abs().max():.3g})"


@pytest.mark.parametrize("tp,pp,fused", [(2, 1, False), (1, 2, False), (2, 1, True), (1, 2, True)])
def test_rl_step_equals_single_process(tmp_path, ckpt, reference, tp, pp, fused):
    """The reference is the plain logits path at TP=1/PP=1; `fused` trains through fused_linear_logprobs."""
    got = _run(tmp_path, ckpt, 2, tp, pp, fused, vision=not fused)
    _close(got["logp"], reference["logp"], "logp")
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
    if not fused:
        _check_vision(got, reference)


def _check_vision(got, reference):
    """model.freeze_vision=false: the tower, replicated on the TP ranks of the first stage, gets the TP=1 gradients."""
    _close(got["vision_loss"], reference["vision_loss"], "vision_loss")
    _close(got["vision_loss"], reference["loss"], "vision_loss vs frozen loss")  # same forward, tower in the pass
    ref_v = reference["vision_grads"]
    assert len(ref_v) == 30 and set(got["vision_grads"]) == set(ref_v)  # every tower + merger tensor
    for k, g in ref_v.items():
        assert float(g.abs().sum()) > 0, k
        _close(got["vision_grads"][k], g, k)
    assert got["vision_tp_spread"] == 0.0  # the TP replicas hold identical gradients (megatron's TP average)


def _check_both_paths(got, reference):
    """The logits path (`got`) and the fused path (`got["other"]`) of one launch each equal the reference's
    training pass: log-probs, loss, every gradient."""
    for path, res in (("logits", got), ("fused", got["other"])):
        _close(res["logp_train"], reference["logp_train"], f"{path}: logp")
        _close(res["loss"], reference["loss"], f"{path}: loss")
        assert set(res["grads"]) == set(reference["grads"])
        for k, g in reference["grads"].items():
            assert float(g.abs().sum()) > 0, k
            _close(res["grads"][k], g, f"{path}: {k}")


@pytest.mark.parametrize("nproc,pp", [(2, 1), (4, 2)])
def test_rl_step_sequence_parallel_equals_single_process(tmp_path, ckpt, reference, nproc, pp):
    """TP=2 with parallel.sequence_parallel=true (local spec, megatron_patches.sequence_parallel_norm; video merged
    before the SP scatter) equals TP=1 through both log-prob paths in one launch: the logits path, then fused.
    The norms' gradients only match because finalize_model_grads sums them over TP (each rank saw half the
    tokens); the batch's odd length exercises the padding to a multiple of TP. The rollout runs with SP off.
    (4, 2): TP=2 x PP=2 (4 gloo processes), the 72B example's SP under pipelining: the p2p activations are the
    `[seq/tp, rows, hidden]` shards; the trained tower's gradients (first stage) also equal TP=1."""
    got = _run(tmp_path, ckpt, nproc, 2, pp, flags="sp,both,vision")
    assert got["seq_len"] % 2 == 1  # padded to 2 inside the policy
    _close(got["logp"], reference["logp"], "logp (no-grad pass)")
    norms = [k for k in reference["grads"] if "layernorm" in k or k == "model.norm.weight"]
    assert norms and all(float(reference["grads"][k].abs().sum()) > 0 for k in norms)
    _check_both_paths(got, reference)
    assert got["greedy"] == reference["greedy"]
    assert got["sampled"] == reference["sampled"]
    _check_vision(got, reference)


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    """An untied checkpoint (separate output layer, as 7B/72B) and its TP=1 logits-path reference."""
    path = make_tiny_checkpoint(str(tmp_path_factory.mktemp("untied")),
                                ["question 0? question 1? <think>x</think><answer>A</answer>"] * 20, seed=1,
                                vocab_size=320, tie_word_embeddings=False)
    return path, _run(tmp_path_factory.mktemp("ref_untied"), path, 1, 1, 1)


@pytest.mark.parametrize("flags", ["", "sp"])
def test_fused_untied_output_layer_grads_go_to_main_grad(tmp_path, untied, flags):
    """Untied output layer under megatron DDP at TP=2: the fused backward adds its weight gradient straight into
    main_grad (dvr1.parallel.logprobs.accumulates_into_main_grad); every gradient still equals the reference.
    "sp": the same with sequence parallel on (the 7B/72B examples' setting: untied, fused, SP)."""
    path, ref = untied
    got = _run(tmp_path, path, 2, 2, 1, True, flags=flags)
    assert got["output_grad_in_main_grad"] and not ref["output_grad_in_main_grad"]  # fused path vs logits path
    _close(got["loss"], ref["loss"], "loss")
    assert "lm_head.weight" in ref["grads"] and float(ref["grads"]["lm_head.weight"].abs().sum()) > 0
    for k, g in ref["grads"].items():
        _close(got["grads"][k], g, k)


@pytest.mark.parametrize("tp,pp,fused", [(2, 1, False), (1, 2, True)])
def test_packed_rl_step_equals_padded_single_process(tmp_path, ckpt, reference, tp, pp, fused):
    """Issue 18: packed sequences give the padded numbers at TP=2 and PP=2 (dvr1/parallel/packing.py)."""
    got = _run(tmp_path, ckpt, 2, tp, pp, fused, flags="packed")
    _close(got["logp"], reference["logp"], "logp")
    _close(got["entropy"], reference["entropy"], "entropy")
    _close(got["loss"], reference["loss"], "loss")
    assert set(got["grads"]) == set(reference["grads"])
    for k, g in reference["grads"].items():
        if g.norm() > 0:
            _close(got["grads"][k], g, k)


@pytest.fixture(scope="module")
def varied_reference(tmp_path_factory, ckpt):
    """The padded TP=1 step on the `varied` batch: sequences of 66 to 239 tokens (clips of 6 and 80 video tokens,
    responses of 1 to 100), padded to the longest."""
    return _run(tmp_path_factory.mktemp("ref_varied"), ckpt, 1, 1, 1, flags="varied")


@pytest.mark.parametrize("nproc,pp", [(2, 1), (4, 2)])
def test_packed_sequence_parallel_equals_padded_single_process(tmp_path, ckpt, varied_reference, nproc, pp):
    """Packing with sequence parallel at TP=2 (and TP=2 x PP=2, the 72B example's layout) equals the padded TP=1
    step without SP on sequences of very different lengths with video: log-probs, entropy (no-grad pass), then the
    logits and fused training paths (log-probs, loss, every gradient). Each packed row's length C is the
    microbatch's longest sequence rounded up to a multiple of TP (an odd 145 and 239 here), so megatron's SP
    scatter splits it evenly and the block-diagonal mask and positions cover the filler; shorter sequences share a
    row. Under PP every microbatch has the one p2p shape."""
    ref = varied_reference
    assert ref["seq_len"] == 239 and ref["packed_shapes"] == []  # padded reference, odd longest sequence
    got = _run(tmp_path, ckpt, nproc, 2, pp, flags="sp,packed,varied,both")
    shapes = got["packed_shapes"]
    assert len(shapes) == 6  # two microbatches (groups) in each of the no-grad and the two training passes
    lens = sorted(n for _, s in shapes[:2] for n in s)
    assert lens == [66, 67, 140, 142, 145, 239]
    if pp == 1:  # bins of the microbatch's longest, rounded up to TP: 66 + 67 share a row of 146
        assert [rc for rc, _ in shapes] == [(2, 146), (3, 240)] * 3
    else:  # one [R, C] for every microbatch (the p2p shape): the largest C and the most bins
        assert {rc for rc, _ in shapes} == {(3, 240)}
    _close(got["logp"], ref["logp"], "logp")
    _close(got["entropy"], ref["entropy"], "entropy")
    _check_both_paths(got, ref)
    assert got["greedy"] == ref["greedy"]
