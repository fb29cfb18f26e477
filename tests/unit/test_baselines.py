"""The field's baselines as `algo.name` (docs/ALGORITHMS.md §9): Dr. GRPO, DAPO, GSPO, CISPO, REBEL.

Each loss, called through `objective` exactly as the trainer calls it, is compared with a loop-by-loop formula
written from §9 (value and gradient) on random groups with mixed lengths, a fully padded row, an all-equal-reward
group and ratios far from 1 (the clips bind both ways); its microbatch shares sum to the batch value; GSPO's
on-policy identity; REBEL's pairs; the paper defaults of every algorithm and their range checks.
"""

import math
from pathlib import Path

import pytest
import torch

from dvr1.config import ConfigError, load_config
from dvr1.rl.advantages import algo_advantages, group_advantages
from dvr1.rl.losses import ALGORITHMS, Normalizers, combine_metrics, grpo_loss, gspo_loss, objective, rebel_pairs, \
    setting

D = torch.float64
B, G, T = 4, 4, 6
C = 10  # rollout.max_new_tokens standing in for Dr. GRPO's C
TINY = str(Path(__file__).resolve().parents[2] / "examples" / "tiny_cpu.yaml")


def _batch(seed=0, spread=0.6):
    """Random [B, G, T] log-probs with old/ref far from the policy, mixed lengths (one row fully padded), and
    rewards with group 1 all equal (σ_r = 0)."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, G, T, generator=g, dtype=D) * 3 - 0.05
    old = logp + spread * torch.randn(B, G, T, generator=g, dtype=D)
    ref = logp + 0.3 * torch.randn(B, G, T, generator=g, dtype=D)
    lengths = torch.randint(1, T + 1, (B, G), generator=g)
    lengths[2, 3] = 0  # a fully padded row
    mask = (torch.arange(T)[None, None, :] < lengths[..., None]).to(D)
    rewards = torch.randint(0, 3, (B, G), generator=g).to(D) + 0.25 * torch.rand(B, G, generator=g, dtype=D)
    rewards[1] = 1.5
    return logp, old, ref, mask, rewards


def _cfg(name, *extra):
    return load_config(None, [f"algo.name={name}", *extra]).algo


def _inputs(algo, rewards, seed=0):
    stats = algo_advantages(algo, rewards)
    pairs = rebel_pairs(range(B), G, seed, 3) if algo.name == "rebel" else None
    return stats, pairs


def _clip(x, lo, hi):
    return torch.clamp(x, lo, hi)


# ---------------------------------------------------------------- plain-PyTorch formulas from §9


def _k3(logp, ref):
    d = ref - logp
    return torch.exp(d) - d - 1


def _kl_smtm(logp, ref, mask):
    """§2.1 k3, seq-mean-token-mean over non-empty sequences."""
    terms = []
    for b in range(B):
        for i in range(G):
            n = int(mask[b, i].sum())
            if n:
                terms.append(sum(_k3(logp[b, i, t], ref[b, i, t]) for t in range(n)) / n)
    return sum(terms) / len(terms)


def ref_dr_grpo(logp, old, ref, rewards, mask, eps, beta):
    """§9.1: Â = R − μ; −(1/N) Σ_i (1/C) Σ_t [min(rÂ, clip(r, 1±ε)Â) − β k3]."""
    terms = []
    for b in range(B):
        mu = sum(rewards[b, j] for j in range(G)) / G
        equal = all(float(rewards[b, j]) == float(rewards[b, 0]) for j in range(G))
        for i in range(G):
            n = int(mask[b, i].sum())
            if not n:
                continue
            a = 0.0 if equal else rewards[b, i] - mu
            s = 0.0
            for t in range(n):
                r = torch.exp(logp[b, i, t] - old[b, i, t])
                s = s + torch.min(r * a, _clip(r, 1 - eps, 1 + eps) * a) - beta * _k3(logp[b, i, t], ref[b, i, t])
            terms.append(-s / C)
    return sum(terms) / len(terms)


def ref_dapo(logp, old, ref, adv, mask, lo, hi, beta):
    """§9.2: −(1/Σ|y|) Σ_{i,t} [min(rÂ, clip(r, 1−ε_low, 1+ε_high)Â) − β k3]."""
    s, n_tok = 0.0, 0
    for b in range(B):
        for i in range(G):
            for t in range(int(mask[b, i].sum())):
                r = torch.exp(logp[b, i, t] - old[b, i, t])
                a = adv[b, i]
                s = s + torch.min(r * a, _clip(r, 1 - lo, 1 + hi) * a) - beta * _k3(logp[b, i, t], ref[b, i, t])
                n_tok += 1
    return -s / n_tok


def ref_gspo(logp, old, ref, adv, mask, lo, hi, beta):
    """§9.5: s_i = exp(mean_t δ); −(1/N) Σ_i min(s Â, clip(s, 1−ε_l, 1+ε_h) Â) + β KL_smtm."""
    terms = []
    for b in range(B):
        for i in range(G):
            n = int(mask[b, i].sum())
            if not n:
                continue
            si = torch.exp(sum(logp[b, i, t] - old[b, i, t] for t in range(n)) / n)
            a = adv[b, i]
            terms.append(-torch.min(si * a, _clip(si, 1 - lo, 1 + hi) * a))
    return sum(terms) / len(terms) + beta * _kl_smtm(logp, ref, mask)


def ref_cispo(logp, old, ref, adv, mask, lo, hi, beta):
    """§9.6: −(1/Σ|y|) Σ_{i,t} sg(clip(r, 1−ε_low, 1+ε_high)) Â l_θ (+ β k3, token mean)."""
    s, n_tok = 0.0, 0
    for b in range(B):
        for i in range(G):
            for t in range(int(mask[b, i].sum())):
                w = _clip(torch.exp(logp[b, i, t] - old[b, i, t]), 1 - lo, 1 + hi).detach()
                s = s - w * adv[b, i] * logp[b, i, t] + beta * _k3(logp[b, i, t], ref[b, i, t])
                n_tok += 1
    return s / n_tok


def ref_rebel(logp, old, ref, rewards, mask, pairs, eta, beta):
    """§9.7: mean over pairs of [((ρ_a) − (ρ_b))/η − (R_a − R_b)]², ρ = Σ_t (l_θ − l_old); + β KL_smtm."""
    terms = []
    for b in range(B):
        rho = [sum(logp[b, i, t] - old[b, i, t] for t in range(int(mask[b, i].sum()))) for i in range(G)]
        for a, c in pairs[b].tolist():
            terms.append(((rho[a] - rho[c]) / eta - (rewards[b, a] - rewards[b, c])) ** 2)
    return sum(terms) / len(terms) + beta * _kl_smtm(logp, ref, mask)


def _reference(algo, logp, old, ref, stats, rewards, mask, pairs):
    beta = setting(algo, "beta")
    lo, hi = setting(algo, "clip_eps_low"), setting(algo, "clip_eps_high")
    adv = stats.advantages
    if algo.name == "dr_grpo":
        return ref_dr_grpo(logp, old, ref, rewards, mask, algo.clip_eps, beta)
    if algo.name == "dapo":
        return ref_dapo(logp, old, ref, adv, mask, lo, hi, beta)
    if algo.name == "gspo":
        return ref_gspo(logp, old, ref, adv, mask, lo, hi, beta)
    if algo.name == "cispo":
        return ref_cispo(logp, old, ref, adv, mask, lo, hi, beta)
    return ref_rebel(logp, old, ref, rewards, mask, pairs, algo.rebel_eta, beta)


CASES = [
    ("dr_grpo", []), ("dr_grpo", ["algo.beta=0.05", "algo.clip_eps=0.3"]),
    ("dapo", []), ("dapo", ["algo.beta=0.05"]),
    ("gspo", []), ("gspo", ["algo.clip_eps_low=0.1", "algo.clip_eps_high=0.15", "algo.beta=0.05"]),
    ("cispo", []), ("cispo", ["algo.clip_eps_low=0.3", "algo.beta=0.05"]),
    ("rebel", []), ("rebel", ["algo.rebel_eta=0.5", "algo.beta=0.05"]),
]


@pytest.mark.parametrize("name,extra", CASES)
def test_loss_and_gradient_match_the_formula(name, extra):
    logp, old, ref, mask, rewards = _batch(seed=len(extra))
    algo = _cfg(name, *extra)
    stats, pairs = _inputs(algo, rewards)
    lp = logp.clone().requires_grad_(True)
    loss, metrics = objective(algo, lp, old, ref, stats.advantages, mask, stats.valid, rewards=rewards, pairs=pairs,
                              max_new_tokens=C)
    lp2 = logp.clone().requires_grad_(True)
    want = _reference(algo, lp2, old, ref, stats, rewards, mask, pairs)
    torch.testing.assert_close(loss, want)
    loss.backward()
    want.backward()
    torch.testing.assert_close(lp.grad, lp2.grad)
    assert lp.grad.abs().sum() > 0
    assert torch.equal(lp.grad * (1 - mask), torch.zeros_like(logp))  # padding gets no gradient
    assert metrics["loss"] == pytest.approx(float(want))
    if name != "rebel":  # the σ_r = 0 group has Â ≡ 0: no policy gradient (only the KL pull when β > 0)
        if setting(algo, "beta") == 0:
            assert torch.equal(lp.grad[1], torch.zeros_like(lp.grad[1]))


@pytest.mark.parametrize("name,extra", CASES)
def test_microbatch_shares_sum_to_the_batch(name, extra):
    """One group per call with the batch's Normalizers: losses, gradients and combined metrics equal the batch's."""
    logp, old, ref, mask, rewards = _batch(seed=7)
    algo = _cfg(name, *extra)
    stats, pairs = _inputs(algo, rewards)
    kw = dict(max_new_tokens=C)
    lp = logp.clone().requires_grad_(True)
    full, full_m = objective(algo, lp, old, ref, stats.advantages, mask, stats.valid, rewards=rewards, pairs=pairs,
                             **kw)
    full.backward()
    norm = Normalizers.of(mask, stats.valid)
    lp2 = logp.clone().requires_grad_(True)
    total, parts = 0.0, []
    for b in range(B):
        g = slice(b, b + 1)
        share, m = objective(algo, lp2[g], old[g], ref[g], stats.advantages[g], mask[g], stats.valid[g], norm,
                             rewards=rewards[g], pairs=None if pairs is None else pairs[g], **kw)
        total = total + share
        parts.append(m)
    total.backward()
    torch.testing.assert_close(total, full)
    torch.testing.assert_close(lp2.grad, lp.grad)
    combined = combine_metrics(parts)
    assert combined.keys() == full_m.keys()
    for k, v in full_m.items():
        assert combined[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


def _clip_counts(r, a, lo, hi, mask):
    low = ((a < 0) & (r < 1 - lo) & (mask > 0)).sum()
    high = ((a > 0) & (r > 1 + hi) & (mask > 0)).sum()
    return float(low), float(high)


def test_dapo_clip_fractions_by_hand_and_both_bounds_bind():
    logp, old, ref, mask, rewards = _batch(seed=3)
    algo = _cfg("dapo")
    assert (setting(algo, "clip_eps_low"), setting(algo, "clip_eps_high"), setting(algo, "beta")) == (0.2, 0.28, 0.0)
    stats = algo_advantages(algo, rewards)
    _, m = objective(algo, logp, old, None, stats.advantages, mask, stats.valid)
    r = torch.exp(logp - old)
    low, high = _clip_counts(r, stats.advantages[..., None], 0.2, 0.28, mask)
    n = float(mask.sum())
    assert low > 0 and high > 0
    assert m["clip_frac_low"] == pytest.approx(low / n) and m["clip_frac_high"] == pytest.approx(high / n)
    assert m["clip_frac"] == pytest.approx((low + high) / n)
    # ratios between 1.2 and 1.28 with Â > 0 are clipped by a symmetric ε = 0.2 but not by DAPO's clip-higher
    between = ((r > 1.2) & (r <= 1.28) & (stats.advantages[..., None] > 0) & (mask > 0)).sum()
    _, m_sym = objective(_cfg("dapo", "algo.clip_eps_high=0.2"), logp, old, None, stats.advantages, mask,
                         stats.valid)
    assert m_sym["clip_frac_high"] == pytest.approx((high + float(between)) / n)


def test_gspo_clip_fractions_are_per_sequence():
    logp, old, ref, mask, rewards = _batch(seed=4, spread=0.2)
    algo = _cfg("gspo", "algo.clip_eps_low=0.02", "algo.clip_eps_high=0.03")
    stats = algo_advantages(algo, rewards)
    _, m = objective(algo, logp, old, None, stats.advantages, mask, stats.valid)
    n = mask.sum(-1)
    s = torch.exp(((logp - old) * mask).sum(-1) / n.clamp(min=1))
    a = stats.advantages
    low = float(((a < 0) & (s < 0.98) & (n > 0)).sum())
    high = float(((a > 0) & (s > 1.03) & (n > 0)).sum())
    seqs = float((n > 0).sum())
    assert low > 0 and high > 0 and low + high < seqs
    assert m["clip_frac_low"] == pytest.approx(low / seqs) and m["clip_frac_high"] == pytest.approx(high / seqs)
    assert m["ratio_mean"] == pytest.approx(float(s[n > 0].mean()))
    assert m["ratio_max"] == pytest.approx(float(s[n > 0].max()))


def test_cispo_weights_are_clipped_but_every_token_keeps_its_gradient():
    logp, old, ref, mask, rewards = _batch(seed=5, spread=1.0)
    algo = _cfg("cispo")
    assert (setting(algo, "clip_eps_low"), setting(algo, "clip_eps_high")) == (1.0, 0.2)
    stats = algo_advantages(algo, rewards)
    lp = logp.clone().requires_grad_(True)
    loss, m = objective(algo, lp, old, None, stats.advantages, mask, stats.valid)
    loss.backward()
    r = torch.exp(logp - old)
    n = float(mask.sum())
    assert m["clip_frac_low"] == 0.0  # ε_low = 1: the lower bound 0 never binds
    assert m["clip_frac_high"] == pytest.approx(float(((r > 1.2) & (mask > 0)).sum()) / n)
    assert m["clip_frac_high"] > 0
    # ∂L/∂l_θ = −sg(ŵ) Â / Σ|y| on every response token, clipped or not
    want = -torch.clamp(r, 0.0, 1.2) * stats.advantages[..., None] * mask / n
    torch.testing.assert_close(lp.grad, want)
    nz = (stats.advantages[..., None].abs() > 0) & (mask > 0)
    assert (lp.grad[nz] != 0).all() and ((r > 1.2) & nz).any()  # clipped tokens included


# ---------------------------------------------------------------- GSPO's on-policy identity (§9.5)


def test_gspo_on_policy_gradient_equals_grpo_with_sequence_token_means():
    """old = sg(logp) (the on-policy step, §1.1): s_i ≡ 1, the clip does not bind, and ∇L_GSPO = ∇L_GRPO with
    seq-mean-token-mean and β = 0 — for GSPO's default ε and for a wide one."""
    logp, _, _, mask, rewards = _batch(seed=6)
    adv = group_advantages(rewards).advantages
    lp_g = logp.clone().requires_grad_(True)
    grpo, _ = grpo_loss(lp_g, lp_g.detach(), None, adv, mask, clip=False, loss_agg="seq-mean-token-mean")
    grpo.backward()
    for lo, hi in ((3e-4, 4e-4), (0.2, 0.2)):
        lp = logp.clone().requires_grad_(True)
        loss, m = gspo_loss(lp, lp.detach(), None, adv, mask, clip_eps_low=lo, clip_eps_high=hi)
        loss.backward()
        assert m["ratio_min"] == 1.0 and m["ratio_max"] == 1.0 and m["clip_frac"] == 0.0
        torch.testing.assert_close(lp.grad, lp_g.grad)
        torch.testing.assert_close(loss, grpo)  # both −mean_i Â_i at ratio 1
    # and by hand: ∂L/∂l_{i,t} = −Â_i / (|y_i| · N_seq)
    n = mask.sum(-1, keepdim=True)
    want = -adv[..., None] * mask / n.clamp(min=1) / float((n > 0).sum())
    torch.testing.assert_close(lp_g.grad, want)
    assert lp_g.grad.abs().sum() > 0


def test_rebel_on_policy_gradient_is_the_pairwise_policy_gradient():
    """§9.7: at ρ ≡ 0, ∂L/∂ρ_a = −(2/η) (R_a − R_b) / N_pairs (and the opposite for b)."""
    logp, _, _, mask, rewards = _batch(seed=8)
    algo = _cfg("rebel", "algo.rebel_eta=2.0")
    pairs = rebel_pairs(range(B), G, 0, 0)
    lp = logp.clone().requires_grad_(True)
    loss, m = objective(algo, lp, lp.detach(), None, group_advantages(rewards).advantages, mask,
                        torch.ones(B, dtype=torch.bool), rewards=rewards, pairs=pairs)
    loss.backward()
    n_pairs = B * (G // 2)
    d_rho = torch.zeros(B, G, dtype=D)
    for b in range(B):
        for a, c in pairs[b].tolist():
            gap = rewards[b, a] - rewards[b, c]
            d_rho[b, a] += -(2 / 2.0) * gap / n_pairs
            d_rho[b, c] += (2 / 2.0) * gap / n_pairs
    torch.testing.assert_close(lp.grad, d_rho[..., None] * mask)
    gaps = torch.stack([rewards[b, pairs[b, :, 0]] - rewards[b, pairs[b, :, 1]] for b in range(B)])
    assert loss.item() == pytest.approx(float((gaps ** 2).mean()))
    assert m["n_pairs"] == n_pairs and m["rho_mean"] == 0.0


# ---------------------------------------------------------------- REBEL pairs


@pytest.mark.parametrize("group_size", [2, 5, 8])
def test_rebel_pairs_are_disjoint_deterministic_and_seeded_by_step(group_size):
    ids = [0, 3, 7, 11]
    p = rebel_pairs(ids, group_size, seed=5, step=9)
    assert p.shape == (4, group_size // 2, 2) and p.dtype == torch.long
    for row in p:
        flat = row.flatten().tolist()
        assert len(set(flat)) == len(flat) == 2 * (group_size // 2)  # disjoint; odd G leaves one out
        assert all(0 <= x < group_size for x in flat)
    assert torch.equal(p, rebel_pairs(ids, group_size, seed=5, step=9))  # deterministic
    assert torch.equal(p[2], rebel_pairs([7], group_size, seed=5, step=9)[0])  # a group's pairs are its own
    if group_size >= 5:
        others = [rebel_pairs(ids, group_size, seed=5, step=s) for s in range(10, 14)]
        assert any(not torch.equal(p, o) for o in others)  # another step pairs differently
        assert not torch.equal(p, rebel_pairs(ids, group_size, seed=6, step=9))
    with pytest.raises(ValueError, match=r"rebel_pairs: group_size must be >= 2, got 1"):
        rebel_pairs(ids, 1, 0, 0)


def test_rebel_errors():
    logp, old, ref, mask, rewards = _batch()
    algo = _cfg("rebel")
    adv, valid = torch.zeros(B, G, dtype=D), torch.ones(B, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"objective: algo.name='rebel' needs rewards and pairs"):
        objective(algo, logp, old, None, adv, mask, valid)
    bad = rebel_pairs(range(B), G, 0, 0) + G
    with pytest.raises(ValueError, match=r"rebel_loss: pairs hold indices outside \[0, 4\)"):
        objective(algo, logp, old, None, adv, mask, valid, rewards=rewards, pairs=bad)
    with pytest.raises(ValueError, match=r"rebel_loss: rewards must be a floating \[batch, group\]"):
        objective(algo, logp, old, None, adv, mask, valid, rewards=rewards[:, :2], pairs=bad - G)


# ---------------------------------------------------------------- advantages, defaults, config


def test_dr_grpo_advantage_is_centred_without_sigma():
    _, _, _, _, rewards = _batch()
    st = algo_advantages(_cfg("dr_grpo"), rewards)
    want = rewards - rewards.mean(1, keepdim=True)
    want[1] = 0.0
    torch.testing.assert_close(st.advantages, want, rtol=0, atol=1e-12)
    assert st.valid.tolist() == [True, False, True, True]
    std = algo_advantages(_cfg("grpo"), rewards)
    torch.testing.assert_close(std.advantages, group_advantages(rewards).advantages)
    assert not torch.allclose(std.advantages, st.advantages)


def test_dr_grpo_constant_comes_from_the_budget():
    logp, old, _, mask, rewards = _batch()
    algo = _cfg("dr_grpo")
    st = algo_advantages(algo, rewards)
    a, _ = objective(algo, logp, old, None, st.advantages, mask, st.valid, max_new_tokens=C)
    b, _ = objective(_cfg("dr_grpo", f"algo.dr_grpo_budget={2 * C}"), logp, old, None, st.advantages, mask, st.valid,
                     max_new_tokens=C)
    torch.testing.assert_close(b, a / 2)
    with pytest.raises(ValueError, match=r"objective: dr_grpo needs its constant C"):
        objective(algo, logp, old, None, st.advantages, mask, st.valid)


def test_paper_defaults_and_overrides():
    want = {"reg_grpo": (0.1, 0.2, 0.2), "grpo": (0.1, 0.2, 0.2), "dr_grpo": (0.0, 0.2, 0.2),
            "dapo": (0.0, 0.2, 0.28), "gspo": (0.0, 3e-4, 4e-4), "cispo": (0.0, 1.0, 0.2), "rebel": (0.0, 0.2, 0.2)}
    assert set(want) == set(ALGORITHMS)
    for name, (beta, lo, hi) in want.items():
        algo = _cfg(name)
        assert (setting(algo, "beta"), setting(algo, "clip_eps_low"), setting(algo, "clip_eps_high")) == (beta, lo, hi)
    algo = _cfg("dapo", "algo.beta=0.04", "algo.clip_eps_high=0.3")
    assert (setting(algo, "beta"), setting(algo, "clip_eps_high")) == (0.04, 0.3)
    assert _cfg("grpo", "algo.clip_eps=0.1").clip_eps == 0.1 and setting(_cfg("grpo", "algo.clip_eps=0.1"),
                                                                         "clip_eps_high") == 0.1
    assert _cfg("rebel").rebel_eta == 1.0 and _cfg("dr_grpo").dr_grpo_budget == 0


@pytest.mark.parametrize("override,msg", [
    ("algo.clip_eps_low=0", "algo.clip_eps_low=0.0: must be > 0"),
    ("algo.clip_eps_high=-0.1", "algo.clip_eps_high=-0.1: must be > 0"),
    ("algo.rebel_eta=0", "algo.rebel_eta=0.0: must be > 0"),
    ("algo.dr_grpo_budget=-1", "algo.dr_grpo_budget=-1: must be >= 0"),
    ("algo.name=ppo", "algo.name='ppo': must be one of reg_grpo, grpo, dr_grpo, dapo, gspo, cispo, rebel"),
])
def test_config_range_checks(override, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_ablation_grid_accepts_every_algorithm(tmp_path):
    from dvr1.ablate import check_configs, load_grid

    arms = "\n".join(f"  {n}: [algo.name={n}, da_aug.enabled=false]" for n in ALGORITHMS)
    path = tmp_path / "g.yaml"
    path.write_text(f"name: g\nbase: {TINY}\narms:\n{arms}\nseeds: [0]\n")
    grid = load_grid(str(path), out=str(tmp_path / "out"))
    check_configs(grid)  # every arm's config loads
    assert list(grid.arms) == list(ALGORITHMS)
    path.write_text(path.read_text().replace("algo.name=rebel", "algo.name=rebell"))
    with pytest.raises(Exception, match=r"arms.rebel .*algo.name='rebell'"):
        check_configs(load_grid(str(path), out=str(tmp_path / "out")))


def test_no_kl_reference_pass_for_the_papers_without_kl():
    """β defaults decide whether the trainer builds π_ref at all (dvr1/train/job.py, rl.py)."""
    for name in ALGORITHMS:
        assert (setting(_cfg(name), "beta") > 0) == (name in ("grpo", "reg_grpo")), name
    assert math.isclose(setting(load_config(TINY, ["algo.name=dapo"]).algo, "beta"),
                        setting(_cfg("dapo"), "beta"))
