"""GRPO / Reg-GRPO / k3 KL / DPO losses (ALGORITHMS §2, §3, §7) against hand-written references."""

import math

import pytest
import torch

from dvr1.rl.advantages import group_advantages
from dvr1.rl.losses import DPO_METRICS, aggregate, combine_metrics, dpo_loss, grpo_loss, kl_k3, reg_grpo_loss

D = torch.float64


def _random_batch(B, G, T, seed, pad=True):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, G, T, generator=g, dtype=D) * 3
    old = logp + 0.3 * torch.randn(B, G, T, generator=g, dtype=D)
    ref = logp + 0.3 * torch.randn(B, G, T, generator=g, dtype=D)
    lengths = torch.randint(1, T + 1, (B, G), generator=g) if pad else torch.full((B, G), T)
    mask = (torch.arange(T)[None, None, :] < lengths[..., None]).to(D)
    rewards = torch.randint(0, 3, (B, G), generator=g).to(D)
    return logp, old, ref, mask, rewards


# ---------------------------------------------------------------- kl_k3 / aggregate


def test_kl_k3_hand_values_and_nonnegative():
    logp = torch.tensor([[[-1.0, -0.5, -2.0]]], dtype=D)
    ref = torch.tensor([[[-2.0, -0.5, -1.0]]], dtype=D)
    want = [math.exp(-1) + 1 - 1, 0.0, math.exp(1) - 1 - 1]
    assert kl_k3(logp, ref).flatten().tolist() == pytest.approx(want)
    x = torch.randn(4, 5, 6, dtype=D) * 4
    y = torch.randn(4, 5, 6, dtype=D) * 4
    assert (kl_k3(x, y) >= 0).all()
    with pytest.raises(ValueError, match=r"kl_k3: logp \(1, 1, 3\) and ref_logp \(1, 3\) differ in shape"):
        kl_k3(logp, ref[0])


def test_aggregate_modes_by_hand():
    x = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[7.0, 8.0, 9.0], [10.0, 11.0, 12.0]]], dtype=D)
    mask = torch.tensor([[[1, 1, 0], [1, 1, 1]], [[1, 0, 0], [0, 0, 0]]], dtype=D)  # last row fully padded
    # three non-empty sequences: [1,2], [4,5,6], [7]
    assert aggregate(x, mask, "seq-mean-token-mean").item() == pytest.approx((1.5 + 5.0 + 7.0) / 3)
    assert aggregate(x, mask, "token-mean").item() == pytest.approx((1 + 2 + 4 + 5 + 6 + 7) / 6)
    assert aggregate(x, mask, "seq-mean-token-sum").item() == pytest.approx((3 + 15 + 7) / 3)
    z = x.clone().requires_grad_(True)
    out = aggregate(z, torch.zeros_like(mask), "token-mean")
    out.backward()
    assert out.item() == 0.0 and torch.equal(z.grad, torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"aggregate: loss_agg must be one of"):
        aggregate(x, mask, "sum")


# ---------------------------------------------------------------- GRPO


def _ppo_reference(logp, old, ref, adv, mask, clip_eps, clip, beta, mode):
    B, G, T = logp.shape
    per_seq, tok_sum, tok_n = [], 0.0, 0.0
    for b in range(B):
        for i in range(G):
            acc = 0.0
            n = 0
            for t in range(T):
                if mask[b, i, t] == 0:
                    continue
                r = torch.exp(logp[b, i, t] - old[b, i, t])
                a = adv[b, i]
                if clip:
                    obj = torch.min(r * a, torch.clamp(r, 1 - clip_eps, 1 + clip_eps) * a)
                else:
                    obj = r * a
                d = ref[b, i, t] - logp[b, i, t]
                kl = torch.exp(d) - d - 1
                term = -(obj - beta * kl)
                acc = acc + term
                n += 1
            if n:
                per_seq.append(acc / n if mode == "seq-mean-token-mean" else acc)
                tok_sum = tok_sum + acc
                tok_n += n
    if mode == "token-mean":
        return tok_sum / tok_n
    return sum(per_seq) / len(per_seq)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("clip,beta", [(True, 0.0), (False, 0.0), (True, 0.04)])
def test_grpo_matches_ppo_formula(mode, clip, beta):
    logp, old, ref, mask, rewards = _random_batch(3, 4, 5, seed=1)
    adv = group_advantages(rewards).advantages
    lp = logp.clone().requires_grad_(True)
    loss, metrics = grpo_loss(lp, old, ref, adv, mask, clip_eps=0.2, clip=clip, beta=beta, loss_agg=mode)
    lp2 = logp.clone().requires_grad_(True)
    want = _ppo_reference(lp2, old, ref, adv, mask, 0.2, clip, beta, mode)
    torch.testing.assert_close(loss, want)
    loss.backward()
    want.backward()
    torch.testing.assert_close(lp.grad, lp2.grad)
    # clip fraction by hand: clipped branch strictly smaller than the unclipped one
    r = torch.exp(logp - old)
    a = adv[..., None]
    clipped = (torch.clamp(r, 0.8, 1.2) * a < r * a).to(D)
    expect = float((clipped * mask).sum() / mask.sum()) if clip else 0.0
    assert metrics["clip_frac"] == pytest.approx(expect)
    if clip:
        assert 0.0 < metrics["clip_frac"] < 1.0  # the random batch exercises both branches
    assert metrics["ratio_mean"] == pytest.approx(float((r * mask).sum() / mask.sum()))
    assert metrics["kl"] == pytest.approx(float((kl_k3(logp, ref) * mask).sum() / mask.sum()))


def test_grpo_clip_values_by_hand():
    # one sequence, ratios e^{0.5}, e^{-0.5}, 1 with A = +1 and A = -1
    logp = torch.tensor([[[0.5, -0.5, 0.0]], [[0.5, -0.5, 0.0]]], dtype=D).reshape(2, 1, 3) - 1.0
    old = torch.full((2, 1, 3), -1.0, dtype=D)
    mask = torch.ones(2, 1, 3, dtype=D)
    adv = torch.tensor([[1.0], [-1.0]], dtype=D)
    e, ie = math.exp(0.5), math.exp(-0.5)
    # A=+1: min(r, clip r) = [1.2, e^-.5, 1]; A=-1: min(-r, -clip r) = [-e^.5, -0.8, -1]
    want = -((1.2 + ie + 1) / 3 + (-e - 0.8 - 1) / 3) / 2
    loss, m = grpo_loss(logp, old, None, adv, mask, clip_eps=0.2, clip=True)
    assert loss.item() == pytest.approx(want)
    assert m["clip_frac"] == pytest.approx(2 / 6)
    loss_nc, m_nc = grpo_loss(logp, old, None, adv, mask, clip=False)
    assert loss_nc.item() == pytest.approx(-((e + ie + 1) / 3 + (-e - ie - 1) / 3) / 2)
    assert m_nc["clip_frac"] == 0.0
    with pytest.raises(ValueError, match=r"grpo_loss: beta=0.1 needs ref_logp, got None"):
        grpo_loss(logp, old, None, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match=r"grpo_loss: advantages must be \[batch, group\] = \(2, 1\), got \(2,\)"):
        grpo_loss(logp, old, None, adv[:, 0], mask)
    with pytest.raises(ValueError, match=r"grpo_loss: old_logp has shape \(2, 1, 2\), expected mask's \(2, 1, 3\)"):
        grpo_loss(logp, old[..., :2], None, adv, mask)


# ---------------------------------------------------------------- Reg-GRPO


def _reg_reference(logp, old, ref, adv, mask, valid, eps_s, eps_rho, beta, reduction, normalize, ddof):
    """Loop-by-loop Reg-GRPO (DVR1 Eqs. 3–8) in plain PyTorch scalars."""
    B, G, T = logp.shape
    reg_terms, n_valid = [], 0
    for b in range(B):
        rho = []
        for i in range(G):
            s = 0.0
            n = 0
            for t in range(T):
                if mask[b, i, t] > 0:
                    s = s + (logp[b, i, t] - old[b, i, t])
                    n += 1
            rho.append(s / max(n, 1) if reduction == "mean" else s)
        mean = sum(rho) / G
        var = sum((r - mean) ** 2 for r in rho) / (G - ddof)
        if not valid[b]:
            continue
        n_valid += 1
        for i in range(G):
            pred = eps_s * (rho[i] - mean) / torch.sqrt(var + eps_rho) if normalize else eps_s * (rho[i] - mean)
            reg_terms.append((adv[b, i] - pred) ** 2)
    regression = sum(reg_terms) / (n_valid * G) if n_valid else 0.0 * logp.sum()
    kls = []
    for b in range(B):
        for i in range(G):
            n = int(mask[b, i].sum())
            if n == 0:
                continue
            s = 0.0
            for t in range(T):
                if mask[b, i, t] > 0:
                    d = ref[b, i, t] - logp[b, i, t]
                    s = s + (torch.exp(d) - d - 1)
            kls.append(s / n)
    return regression + beta * (sum(kls) / len(kls))


@pytest.mark.parametrize(
    "B,G,T,reduction,normalize,ddof,seed",
    [
        (2, 4, 6, "sum", True, 1, 0),
        (3, 5, 4, "mean", True, 1, 1),
        (2, 3, 7, "sum", False, 1, 2),
        (1, 6, 3, "mean", False, 0, 3),
        (4, 2, 5, "sum", True, 0, 4),
    ],
)
def test_reg_grpo_matches_loop_reference(B, G, T, reduction, normalize, ddof, seed):
    logp, old, ref, mask, rewards = _random_batch(B, G, T, seed)
    st = group_advantages(rewards, ddof=ddof)
    valid = torch.tensor([b % 3 != 1 for b in range(B)])  # independent of σ_r: exercises masking by `valid`
    kw = dict(eps_s=0.7, eps_rho=1e-3, beta=0.05, logratio_reduction=reduction, normalize_logratio=normalize,
              ddof=ddof)
    lp = logp.clone().requires_grad_(True)
    loss, metrics = reg_grpo_loss(lp, old, ref, st.advantages, mask, valid, **kw)
    lp2 = logp.clone().requires_grad_(True)
    want = _reg_reference(lp2, old, ref, st.advantages, mask, valid, 0.7, 1e-3, 0.05, reduction, normalize, ddof)
    torch.testing.assert_close(loss, want)
    loss.backward()
    want.backward()
    torch.testing.assert_close(lp.grad, lp2.grad)
    assert torch.equal(lp.grad * (1 - mask), torch.zeros_like(logp))  # padding gets no gradient
    assert metrics["n_valid_groups"] == float(valid.sum())
    assert metrics["loss"] == pytest.approx(float(want))
    assert metrics["loss"] == pytest.approx(metrics["regression"] + 0.05 * metrics["kl"])


@pytest.mark.parametrize("ddof", [1, 0])
def test_reg_grpo_correlation_identity(ddof):
    g = torch.Generator().manual_seed(7)
    G, T = 6, 5
    rewards = torch.rand(1, G, generator=g, dtype=D)
    logp = -torch.rand(1, G, T, generator=g, dtype=D)
    old = torch.zeros(1, G, T, dtype=D)
    mask = torch.ones(1, G, T, dtype=D)
    st = group_advantages(rewards, eps=0.0, ddof=ddof)
    loss, m = reg_grpo_loss(logp, old, None, st.advantages, mask, st.valid, eps_s=1.0, eps_rho=0.0, beta=0.0,
                            ddof=ddof)
    rho = logp.sum(-1)[0]
    corr = torch.corrcoef(torch.stack([rewards[0], rho]))[0, 1]
    sse = loss * G  # regression = (1/G) Σ_i (Â_i − Â_θ,i)² for one valid group
    # Σ z² = G − ddof on both sides → Σ (z_R − z_ρ)² = 2 (G − ddof)(1 − corr); ddof=1: ALGORITHMS §3's 2(G−1)(1−corr)
    torch.testing.assert_close(sse, 2 * (G - ddof) * (1 - corr))
    assert corr.abs() < 0.99  # a non-trivial case


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reg_grpo_gradient_at_rho_zero(normalize, reduction):
    B, G, T = 3, 4, 6
    logp, _, _, mask, rewards = _random_batch(B, G, T, seed=11)
    rewards[1] = 1.0  # σ_r = 0 group
    st = group_advantages(rewards)
    assert st.valid.tolist() == [True, False, True]
    eps_s, eps_rho = 0.8, 1e-6
    lp = logp.clone().requires_grad_(True)
    # on-policy step: logp == old_logp (ρ ≡ 0); ref == logp so the KL gradient vanishes too
    loss, m = reg_grpo_loss(lp, logp, logp, st.advantages, mask, st.valid, eps_s=eps_s, eps_rho=eps_rho,
                            beta=0.1, logratio_reduction=reduction, normalize_logratio=normalize)
    loss.backward()
    assert torch.isfinite(lp.grad).all()
    n_valid = 2
    scale = math.sqrt(eps_rho) if normalize else 1.0
    adv = st.advantages
    # ∂L/∂ρ_j = −2 ε_s Â_j / (n_valid · G · sqrt(ε_ρ)) (ALGORITHMS §3 divided by n_valid; no sqrt when not normalised)
    d_rho = -2 * eps_s * (adv - adv.mean(1, keepdim=True)) / (n_valid * G * scale)
    d_rho = d_rho * st.valid[:, None]
    d_tok = d_rho[..., None] * mask
    if reduction == "mean":
        d_tok = d_tok / mask.sum(-1, keepdim=True)
    torch.testing.assert_close(lp.grad, d_tok)
    # closed form with Â_j itself (group-normalised Â has mean 0)
    torch.testing.assert_close(d_rho, -2 * eps_s * adv / (n_valid * G * scale) * st.valid[:, None], atol=1e-9,
                               rtol=1e-6)
    # policy-gradient sign: descending the loss raises log π of positive-advantage responses
    seq_grad = lp.grad.sum(-1)
    nz = adv.abs() > 1e-6
    assert nz.any()
    assert (torch.sign(seq_grad[nz]) == -torch.sign(adv[nz])).all()
    assert torch.equal(lp.grad[1], torch.zeros_like(lp.grad[1]))  # σ_r = 0 group masked
    assert m["n_valid_groups"] == 2.0
    assert m["rho_mean"] == 0.0 and m["rho_std"] == 0.0


def test_reg_grpo_no_valid_group_is_zero_and_connected():
    logp, old, ref, mask, _ = _random_batch(2, 3, 4, seed=5)
    lp = logp.clone().requires_grad_(True)
    adv = torch.zeros(2, 3, dtype=D)
    loss, m = reg_grpo_loss(lp, old, None, adv, mask, torch.tensor([False, False]), beta=0.0)
    assert loss.item() == 0.0 and m["regression"] == 0.0 and m["n_valid_groups"] == 0.0
    loss.backward()
    assert lp.grad is not None and torch.equal(lp.grad, torch.zeros_like(logp))


def test_reg_grpo_invalid_groups_do_not_change_loss():
    logp, old, ref, mask, rewards = _random_batch(3, 4, 5, seed=9)
    st = group_advantages(rewards)
    valid = torch.tensor([True, False, True])
    loss_a, _ = reg_grpo_loss(logp, old, None, st.advantages, mask, valid, beta=0.0)
    logp_b = logp.clone()
    logp_b[1] += torch.randn(4, 5, dtype=D)
    adv_b = st.advantages.clone()
    adv_b[1] = 5.0
    loss_b, _ = reg_grpo_loss(logp_b, old, None, adv_b, mask, valid, beta=0.0)
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-12)


def test_reg_grpo_errors():
    logp, old, ref, mask, rewards = _random_batch(2, 3, 4, seed=5)
    adv = torch.zeros(2, 3, dtype=D)
    valid = torch.tensor([True, True])
    with pytest.raises(ValueError, match=r"reg_grpo_loss: beta=0.1 needs ref_logp, got None"):
        reg_grpo_loss(logp, old, None, adv, mask, valid)
    with pytest.raises(ValueError, match=r"reg_grpo_loss: logratio_reduction must be 'sum' or 'mean', got 'max'"):
        reg_grpo_loss(logp, old, ref, adv, mask, valid, logratio_reduction="max")
    with pytest.raises(ValueError, match=r"reg_grpo_loss: valid must be a \[batch\] = \(2,\) bool tensor"):
        reg_grpo_loss(logp, old, ref, adv, mask, valid[:1])
    with pytest.raises(ValueError, match=r"reg_grpo_loss: group size 3 must exceed ddof=3"):
        reg_grpo_loss(logp, old, ref, adv, mask, valid, ddof=3)


# ---------------------------------------------------------------- DPO


def test_dpo_loss_and_grads_by_hand():
    pc = torch.tensor([-10.0, -20.0, -5.0], dtype=D, requires_grad=True)
    pr = torch.tensor([-12.0, -18.0, -5.0], dtype=D, requires_grad=True)
    rc = torch.tensor([-11.0, -19.0, -6.0], dtype=D)
    rr = torch.tensor([-11.0, -19.0, -4.0], dtype=D)
    beta = 0.5
    loss, m = dpo_loss(pc, pr, rc, rr, beta=beta)
    z = [beta * ((pc[n] - rc[n]) - (pr[n] - rr[n])).item() for n in range(3)]  # [1.0, -1.0, 1.0]
    assert z == pytest.approx([1.0, -1.0, 1.0])
    want = sum(math.log1p(math.exp(-zi)) for zi in z) / 3
    assert loss.item() == pytest.approx(want)
    loss.backward()
    sig_neg = [1 / (1 + math.exp(zi)) for zi in z]  # σ(−z)
    assert pc.grad.tolist() == pytest.approx([-beta * s / 3 for s in sig_neg])
    assert pr.grad.tolist() == pytest.approx([beta * s / 3 for s in sig_neg])
    # the metrics TRL's DPOTrainer logs, by hand: chosen rewards β(l_θ − l_ref) = 0.5·[1, −1, 1], rejected
    # 0.5·[−1, 1, −1], margins [1, −1, 1]; pair 2 has chosen < rejected, so 2 of 3 pairs are right
    assert m == pytest.approx({"loss": want, "rewards/chosen": 0.5 / 3, "rewards/rejected": -0.5 / 3,
                               "rewards/margins": 1 / 3, "rewards/accuracies": 2 / 3,
                               "logps/chosen": (-10 - 20 - 5) / 3, "logps/rejected": (-12 - 18 - 5) / 3})
    assert set(m) == set(DPO_METRICS)
    # a tie (equal rewards) is not a correct preference: accuracy counts chosen > rejected strictly
    _, tie = dpo_loss(pc[:1], pc[:1], rc[:1], rc[:1], beta=beta)
    assert tie["rewards/accuracies"] == 0.0 and tie["rewards/margins"] == 0.0
    assert tie["loss"] == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match=r"dpo_loss: ref_rejected_logp must be a non-empty \[N\] tensor"):
        dpo_loss(pc, pr, rc, rr[:2])


def test_dpo_loss_microbatch_shares_sum_to_the_batch():
    """Weighted calls (``w = 1/N_batch``) on a 2 + 1 split of the pairs: loss, gradients and every metric of the
    shares sum (combine_metrics) to the one-call batch values; a zero-weight padding pair adds nothing."""
    g = torch.Generator().manual_seed(0)
    pc, pr = (-20 * torch.rand(3, generator=g, dtype=D) for _ in range(2))
    rc, rr = (-20 * torch.rand(3, generator=g, dtype=D) for _ in range(2))
    whole_in = pc.clone().requires_grad_()
    loss, m = dpo_loss(whole_in, pr, rc, rr, beta=0.3)
    loss.backward()
    parts_in = pc.clone().requires_grad_()
    w = torch.full((3,), 1 / 3, dtype=D)
    l1, m1 = dpo_loss(parts_in[:2], pr[:2], rc[:2], rr[:2], beta=0.3, weights=w[:2])
    pad = torch.cat([parts_in[2:], parts_in[:1]])  # pair 2 and a copy of pair 0 as zero-weight padding
    l2, m2 = dpo_loss(pad, pr[[2, 0]], rc[[2, 0]], rr[[2, 0]], beta=0.3, weights=torch.tensor([1 / 3, 0.0], dtype=D))
    (l1 + l2).backward()
    assert float(l1 + l2) == pytest.approx(float(loss), rel=1e-12)
    assert combine_metrics([m1, m2]) == pytest.approx(m, rel=1e-12)
    assert torch.allclose(parts_in.grad, whole_in.grad, rtol=1e-12)
    with pytest.raises(ValueError, match=r"dpo_loss: weights must be a non-empty \[N\] tensor"):
        dpo_loss(pc, pr, rc, rr, weights=w[:2])
