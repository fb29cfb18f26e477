"""dvr1.parallel.logprobs on a single shard (TP=1) against plain-PyTorch log_softmax + gather.

The TP split is tested in tests/distributed/test_logprobs_tp.py (it needs a real process group).
"""

import sys
import types

import pytest
import torch

from dvr1.parallel.logprobs import fused_linear_logprobs, vocab_parallel_logprobs


def ref_logprobs(logits, target):
    """Independent reference: fp32 log_softmax over the full vocabulary, gathered at the target."""
    return torch.log_softmax(logits.float(), -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)


def ref_entropy(logits):
    lp = torch.log_softmax(logits.float(), -1)
    return -(lp.exp() * lp).sum(-1)


def make(shape=(6, 3), vocab=97, dtype=torch.float32, seed=0, scale=4.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, vocab, generator=gen) * scale).to(dtype)
    target = torch.randint(0, vocab, shape, generator=gen)
    weights = torch.rand(shape, generator=gen) + 0.5  # a non-uniform per-token upstream gradient
    return logits, target, weights


def grads_of(fn, logits, weights):
    x = logits.detach().clone().requires_grad_(True)
    out = fn(x)
    (out * weights).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_fp32_values_and_grads_match_log_softmax(chunk_size):
    logits, target, w = make()
    got, g_got = grads_of(lambda x: vocab_parallel_logprobs(x, target, chunk_size=chunk_size)[0], logits, w)
    ref, g_ref = grads_of(lambda x: ref_logprobs(x, target), logits, w)
    assert got.dtype == torch.float32 and got.shape == target.shape
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-6, atol=1e-6)


def test_bf16_logits_fp32_math():
    logits32, target, w = make(dtype=torch.float32)
    logits = logits32.to(torch.bfloat16)
    got, g_got = grads_of(lambda x: vocab_parallel_logprobs(x, target, chunk_size=5)[0], logits, w)
    assert got.dtype == torch.float32 and g_got.dtype == torch.bfloat16
    # Same bf16 values, fp32 math: equal to the fp32 reference on the upcast logits to 1e-6.
    ref, g_ref = grads_of(lambda x: ref_logprobs(x, target), logits, w)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    # The gradient is returned in bf16 (the logits' dtype): one bf16 rounding of g * (onehot - p).
    torch.testing.assert_close(g_got, g_ref, rtol=2 ** -8, atol=1e-6)
    # Against the un-rounded fp32 logits the error is the bf16 rounding of logits (|z| <= ~20, ulp 2^-8 * |z|):
    # stated tolerance 0.1 absolute on log-probs.
    ref32 = ref_logprobs(logits32, target)
    assert (got - ref32).abs().max() < 0.1
    assert (got - ref32).abs().max() > 0  # the rounding is real, so the check above is not vacuous


def test_entropy_matches_reference_and_has_no_grad():
    logits, target, _ = make(scale=2.0)
    x = logits.clone().requires_grad_(True)
    lp, ent = vocab_parallel_logprobs(x, target, compute_entropy=True, chunk_size=7)
    torch.testing.assert_close(ent, ref_entropy(logits), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lp, ref_logprobs(logits, target), rtol=1e-6, atol=1e-6)
    assert lp.requires_grad and not ent.requires_grad
    # a peaked distribution: entropy near 0, a flat one: log(V)
    peaked = torch.full((2, 11), -50.0)
    peaked[:, 3] = 50.0
    flat = torch.zeros(2, 11)
    tgt = torch.tensor([3, 3])
    assert vocab_parallel_logprobs(peaked, tgt, compute_entropy=True)[1].abs().max() < 1e-6
    torch.testing.assert_close(vocab_parallel_logprobs(flat, tgt, compute_entropy=True)[1],
                               torch.full((2,), float(torch.log(torch.tensor(11.0)))))


def test_without_entropy_returns_none():
    logits, target, _ = make()
    assert vocab_parallel_logprobs(logits, target)[1] is None


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 17, 18, 1000])
def test_chunked_equals_unchunked(chunk_size):
    logits, target, w = make(shape=(18,), vocab=53)
    full, g_full = grads_of(lambda x: vocab_parallel_logprobs(x, target)[0], logits, w)
    part, g_part = grads_of(lambda x: vocab_parallel_logprobs(x, target, chunk_size=chunk_size)[0], logits, w)
    torch.testing.assert_close(part, full, rtol=0, atol=1e-7)
    torch.testing.assert_close(g_part, g_full, rtol=0, atol=1e-7)
    e_full = vocab_parallel_logprobs(logits, target, compute_entropy=True)[1]
    e_part = vocab_parallel_logprobs(logits, target, compute_entropy=True, chunk_size=chunk_size)[1]
    torch.testing.assert_close(e_part, e_full, rtol=0, atol=1e-6)


def test_gradcheck_fp64():
    logits, target, _ = make(shape=(5,), vocab=9, dtype=torch.float64, scale=1.0)
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: vocab_parallel_logprobs(z, target, chunk_size=2)[0], (x,))


def test_extreme_logits_are_finite():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    lp, ent = vocab_parallel_logprobs(logits, torch.tensor([1, 2]), compute_entropy=True)
    torch.testing.assert_close(lp, torch.tensor([-2e4, -float(torch.log(torch.tensor(3.0)))]))
    assert torch.isfinite(ent).all()


# ---------------------------------------------------------------- fused output layer


def fused_case(n_shape=(5, 4), h=16, vocab=61, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*n_shape, h, generator=gen).to(dtype)
    weight = (torch.randn(vocab, h, generator=gen) * 0.5).to(dtype)
    target = torch.randint(0, vocab, n_shape, generator=gen)
    wts = torch.rand(n_shape, generator=gen) + 0.5
    return hidden, weight, target, wts


def run_fused(fn, hidden, weight, wts):
    hh = hidden.clone().requires_grad_(True)
    ww = weight.clone().requires_grad_(True)
    out = fn(hh, ww)
    (out * wts).sum().backward()
    return out.detach(), hh.grad, ww.grad


@pytest.mark.parametrize("chunk_size", [None, 1024, 3, 20])
def test_fused_linear_matches_reference(chunk_size):
    hidden, weight, target, wts = fused_case()
    got = run_fused(lambda hh, ww: fused_linear_logprobs(hh, ww, target, chunk_size=chunk_size)[0],
                    hidden, weight, wts)
    ref = run_fused(lambda hh, ww: ref_logprobs(hh @ ww.t(), target), hidden, weight, wts)
    assert got[0].shape == target.shape and got[1].shape == hidden.shape and got[2].shape == weight.shape
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_kept_last_chunk(dtype):
    """With a backward to come, forward keeps the last chunk's logits (reduced in 64-row blocks: 100 rows -> 64 + 36)
    and backward starts from them: values, entropy and both gradients equal the reference and the no-grad forward."""
    hidden, weight, target, wts = fused_case(n_shape=(200,), h=24, vocab=97, dtype=dtype)
    hh, ww = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp, ent = fused_linear_logprobs(hh, ww, target, chunk_size=100, compute_entropy=True)
    (lp * wts).sum().backward()
    with torch.no_grad():
        lp0, ent0 = fused_linear_logprobs(hidden, weight, target, chunk_size=100, compute_entropy=True)
    assert torch.equal(lp.detach(), lp0) and torch.equal(ent, ent0)  # same reduction with or without keeping
    ref = run_fused(lambda a, b: ref_logprobs(a.float() @ b.float().t(), target), hidden, weight, wts)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(lp.detach(), ref[0], rtol=tol, atol=tol)
    torch.testing.assert_close(ent, ref_entropy(hidden.float() @ weight.float().t()), rtol=tol, atol=tol)
    gtol = tol if dtype == torch.float32 else 5e-2  # bf16 weight gradient: bf16 accumulation of 2 chunks vs fp32
    torch.testing.assert_close(hh.grad.float(), ref[1].float(), rtol=gtol, atol=gtol)
    torch.testing.assert_close(ww.grad.float(), ref[2].float(), rtol=gtol, atol=gtol)


def test_fused_linear_2d_hidden_and_entropy():
    hidden, weight, target, _ = fused_case(n_shape=(13,))
    lp, ent = fused_linear_logprobs(hidden, weight, target, chunk_size=4, compute_entropy=True)
    logits = hidden @ weight.t()
    torch.testing.assert_close(lp, ref_logprobs(logits, target), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ref_entropy(logits), rtol=1e-5, atol=1e-5)


def test_fused_linear_only_weight_or_only_hidden_grad():
    hidden, weight, target, wts = fused_case()
    ww = weight.clone().requires_grad_(True)
    (fused_linear_logprobs(hidden, ww, target, chunk_size=3)[0] * wts).sum().backward()
    ww_ref = weight.clone().requires_grad_(True)
    (ref_logprobs(hidden @ ww_ref.t(), target) * wts).sum().backward()
    torch.testing.assert_close(ww.grad, ww_ref.grad, rtol=1e-5, atol=1e-5)
    hh = hidden.clone().requires_grad_(True)
    (fused_linear_logprobs(hh, weight, target, chunk_size=3)[0] * wts).sum().backward()
    hh_ref = hidden.clone().requires_grad_(True)
    (ref_logprobs(hh_ref @ weight.t(), target) * wts).sum().backward()
    torch.testing.assert_close(hh.grad, hh_ref.grad, rtol=1e-5, atol=1e-5)


def test_fused_linear_bf16():
    hidden, weight, target, wts = fused_case(dtype=torch.bfloat16)
    got = run_fused(lambda hh, ww: fused_linear_logprobs(hh, ww, target, chunk_size=6)[0], hidden, weight, wts)
    ref = run_fused(lambda hh, ww: ref_logprobs(hh @ ww.t(), target), hidden, weight, wts)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.bfloat16 and got[2].dtype == torch.bfloat16
    # Same bf16 GEMM for the logits, fp32 reduction: values agree closely; grads to bf16 resolution (2^-8).
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got[2], ref[2], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_accumulates_into_megatron_main_grad(dtype):
    """weight_grad_to_main_grad with a megatron-DDP weight (main_grad + grad_added_to_main_grad): the weight gradient
    is ADDED into the fp32 main_grad across calls (two microbatches) and flagged for DDP's hook; autograd gets a
    dummy. Without the flag (a tied embedding) the gradient takes the ordinary .grad path."""
    from dvr1.parallel.logprobs import has_main_grad

    hidden, weight, target, wts = fused_case(dtype=dtype)
    ref_w = weight.float().clone().requires_grad_(True)
    (ref_logprobs(hidden.float() @ ref_w.t(), target) * wts).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2

    def ddp_weight():
        w = torch.nn.Parameter(weight.clone())
        w.main_grad = torch.full(weight.shape, 0.25)  # fp32, as DDP's buffer, with something already accumulated
        w.grad_added_to_main_grad = False
        return w

    w = ddp_weight()
    assert has_main_grad(w) and not has_main_grad(torch.nn.Parameter(weight.clone()))
    for _ in range(2):  # two microbatches accumulate
        (fused_linear_logprobs(hidden, w, target, chunk_size=3, weight_grad_to_main_grad=True)[0] * wts).sum() \
            .backward()
        assert w.grad_added_to_main_grad and w.grad is not None and w.grad.shape == weight.shape
        w.grad = None  # what DDP's hook does when grad_added_to_main_grad is set
    torch.testing.assert_close(w.main_grad, 0.25 + 2 * ref_w.grad, rtol=tol, atol=tol)

    tied = ddp_weight()
    (fused_linear_logprobs(hidden, tied, target, chunk_size=3)[0] * wts).sum().backward()
    assert not tied.grad_added_to_main_grad and bool((tied.main_grad == 0.25).all())
    torch.testing.assert_close(tied.grad.float(), ref_w.grad, rtol=tol, atol=tol)


def test_fused_linear_gradcheck_fp64():
    hidden, weight, target, _ = fused_case(n_shape=(5,), h=4, vocab=7, dtype=torch.float64)
    hh, ww = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: fused_linear_logprobs(a, b, target, chunk_size=2)[0], (hh, ww))


# ---------------------------------------------------------------- errors and group resolution


def test_target_shape_mismatch():
    logits = torch.zeros(4, 3, 10)
    with pytest.raises(ValueError) as e:
        vocab_parallel_logprobs(logits, torch.zeros(4, 2, dtype=torch.long))
    assert str(e.value) == ("vocab_parallel_logprobs: target shape (4, 2) must equal the token shape (4, 3) "
                            "(input shape (4, 3, 10) without its last dim)")


@pytest.mark.parametrize("bad", [10, -1])
def test_target_out_of_range(bad):
    target = torch.tensor([[1, bad]])
    with pytest.raises(ValueError) as e:
        vocab_parallel_logprobs(torch.zeros(1, 2, 10), target)
    assert str(e.value) == (f"vocab_parallel_logprobs: target value {bad} out of range [0, 10) "
                            f"(target shape (1, 2), vocab 10 per rank x TP 1)")


def test_float_target_and_bad_chunk():
    with pytest.raises(ValueError, match=r"target must be an integer tensor \(token ids\), got dtype torch.float32"):
        vocab_parallel_logprobs(torch.zeros(3, 5), torch.zeros(3))
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int or None, got 0"):
        vocab_parallel_logprobs(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long), chunk_size=0)
    with pytest.raises(ValueError, match=r"vocab_start=5 with 5 local ids lies outside the vocabulary \[0, 5\)"):
        vocab_parallel_logprobs(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long), vocab_start=5)


def test_fused_errors():
    h, w, t = torch.zeros(3, 4), torch.zeros(7, 5), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError) as e:
        fused_linear_logprobs(h, w, t)
    assert str(e.value) == "fused_linear_logprobs: weight shape (7, 5) must be [V_local, 4] (hidden shape (3, 4))"
    with pytest.raises(ValueError, match="weight dtype torch.bfloat16 must equal hidden dtype torch.float32"):
        fused_linear_logprobs(h, torch.zeros(7, 4, dtype=torch.bfloat16), t)
    with pytest.raises(ValueError, match=r"target value 7 out of range \[0, 7\)"):
        fused_linear_logprobs(h, torch.zeros(7, 4), torch.tensor([0, 7, 1]))
    with pytest.raises(ValueError, match=r"target shape \(2,\) must equal the token shape \(3,\)"):
        fused_linear_logprobs(h, torch.zeros(7, 4), torch.zeros(2, dtype=torch.long))


def test_uninitialised_megatron_parallel_state_means_single_shard(monkeypatch):
    # tp_group=None consults megatron's parallel_state only if it is imported; an uninitialised one yields None.
    calls = []

    def get_group(check_initialized=True):
        calls.append(check_initialized)
        return None

    fake = types.SimpleNamespace(get_tensor_model_parallel_group=get_group)
    monkeypatch.setitem(sys.modules, "megatron.core.parallel_state", fake)
    logits, target, _ = make()
    lp, _ = vocab_parallel_logprobs(logits, target)
    assert calls == [False]
    torch.testing.assert_close(lp, ref_logprobs(logits, target), rtol=1e-6, atol=1e-6)
