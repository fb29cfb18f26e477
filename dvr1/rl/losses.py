"""Policy losses: GRPO, Reg-GRPO, the field's baselines (Dr. GRPO, DAPO, GSPO, CISPO, REBEL), the k3 KL estimator
and sigmoid DPO (docs/ALGORITHMS.md §2, §3, §9, §7).

Pure functions of tensors. Token-level inputs are ``[batch, group, seq]`` (B prompts × G responses × T response
tokens) floating tensors of per-token log-probabilities of the sampled tokens, with ``mask`` ``[B, G, T]``
(1 = response token, 0 = padding / prompt / vision). Only ``logp`` (the policy π_θ) carries gradients; ``old_logp``
(π_old, the rollout policy) and ``ref_logp`` (π_ref) are detached here. Losses are to be MINIMISED.

Microbatching (torchtitan's rule: the loss takes its global normaliser). Every loss takes an optional
:class:`Normalizers` of the WHOLE batch (valid groups, rows, sequences, response tokens). With it, a call on a
microbatch (whole groups) returns that microbatch's share: every mean is a sum over the microbatch divided by the
batch's count, so the shares of all microbatches sum to the batch loss by construction and the training step only
sums. Without it the normalisers are the inputs' own (the call is the batch). Metrics are shares in the same sense;
:func:`combine_metrics` turns the per-microbatch metrics into the batch's (sums, min/max, and population std from
the ``*_sqmean`` second moments). :func:`objective` is the one entry point the trainer calls for ``algo.name``;
:func:`setting` resolves the ``algo.*`` fields an algorithm takes its paper's default for (:data:`ALGO_DEFAULTS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ALGORITHMS", "ALGO_DEFAULTS", "DPO_METRICS", "LOSS_AGG_MODES", "Normalizers", "aggregate", "cispo_loss",
           "combine_metrics", "dpo_loss", "grpo_loss", "gspo_loss", "kl_k3", "objective", "rebel_loss", "rebel_pairs",
           "reg_grpo_loss", "setting"]

LOSS_AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum")
ALGORITHMS = ("reg_grpo", "grpo", "dr_grpo", "dapo", "gspo", "cispo", "rebel")

# The papers' values of the `algo.*` fields whose default depends on `algo.name` (docs/ALGORITHMS.md §9): a field
# left None in the config takes its algorithm's entry here (`setting`). GRPO and Dr. GRPO clip symmetrically with
# `algo.clip_eps` unless `clip_eps_low` / `clip_eps_high` are set. CISPO's ε_low = 1.0 puts the lower bound at 0, which
# a ratio never goes below: MiniMax-M1 sets ε_low "to a large value" (no lower bound in effect).
ALGO_DEFAULTS: dict[str, dict[str, float]] = {
    "reg_grpo": {"beta": 0.1},
    "grpo": {"beta": 0.1},
    "dr_grpo": {"beta": 0.0},
    "dapo": {"beta": 0.0, "clip_eps_low": 0.2, "clip_eps_high": 0.28},
    "gspo": {"beta": 0.0, "clip_eps_low": 3e-4, "clip_eps_high": 4e-4},
    "cispo": {"beta": 0.0, "clip_eps_low": 1.0, "clip_eps_high": 0.2},
    "rebel": {"beta": 0.0},
}
_CLIP_KEYS = ("clip_eps_low", "clip_eps_high")


def setting(algo, key: str) -> float:
    """``algo.<key>`` (an ``AlgoConfig``), or when it is None the default of ``algo.name`` (:data:`ALGO_DEFAULTS`;
    ``clip_eps_low`` / ``clip_eps_high`` of GRPO and Dr. GRPO fall back to ``algo.clip_eps``).

    Raises: ValueError for an unknown ``algo.name`` or a key with neither a value nor a default.
    """
    if algo.name not in ALGO_DEFAULTS:
        raise ValueError(f"setting: algo.name must be one of {ALGORITHMS}, got {algo.name!r}")
    value = getattr(algo, key)
    if value is not None:
        return value
    defaults = ALGO_DEFAULTS[algo.name]
    if key in defaults:
        return defaults[key]
    if key in _CLIP_KEYS:
        return algo.clip_eps
    raise ValueError(f"setting: algo.{key} is None and {algo.name} has no default for it")


@dataclass(frozen=True)
class Normalizers:
    """The batch's global counts, by which every loss share is divided (floats, counts of things).

    Attributes:
        groups: groups with σ_r > 0 (``GroupStats.valid``): Reg-GRPO's regression mean runs over their members.
        rows: all B·G sequences (Reg-GRPO's ρ statistics).
        seqs: sequences with at least one response token (``seq-mean-*`` aggregations).
        tokens: response tokens (``token-mean`` aggregation, token-level metrics).
    """

    groups: float
    rows: float
    seqs: float
    tokens: float

    @classmethod
    def of(cls, mask: torch.Tensor, valid: torch.Tensor | None = None) -> "Normalizers":
        """Counts of a ``[B, G, T]`` mask (and ``[B]`` valid flags; None counts no valid group)."""
        return cls(groups=float(valid.sum()) if valid is not None else 0.0,
                   rows=float(mask.shape[0] * mask.shape[1]),
                   seqs=float((mask.sum(dim=-1) > 0).sum()),
                   tokens=float(mask.sum()))


def combine_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """The batch's metrics from its microbatches' shares (each computed with the batch's :class:`Normalizers`).

    Keys ending in ``_min`` / ``_max`` take the min / max over parts (±inf = the part had no token: reported as 1.0,
    the ratio of no token); every other key is summed; a ``X_sqmean`` share (second moment) next to ``X_mean`` is
    replaced by ``X_std = sqrt(max(E[X²] − E[X]², 0))`` (population std). ``[]`` gives ``{}``.
    """
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            if k not in out:
                out[k] = v
            elif k.endswith("_min"):
                out[k] = min(out[k], v)
            elif k.endswith("_max"):
                out[k] = max(out[k], v)
            else:
                out[k] += v
    for k in [k for k in out if k.endswith("_sqmean")]:
        base = k[: -len("_sqmean")]
        out[f"{base}_std"] = math.sqrt(max(out.pop(k) - out.get(f"{base}_mean", 0.0) ** 2, 0.0))
    for k, v in out.items():
        if (k.endswith("_min") or k.endswith("_max")) and math.isinf(v):
            out[k] = 1.0
    return out


def _share(x: torch.Tensor, count: float) -> float:
    """``Σ x / count`` as a Python float (0 when the batch has none); metrics only."""
    return float(x.sum() / count) if count > 0 else 0.0


def _check_tokens(fn: str, mask: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dim() != 3:
        raise ValueError(f"{fn}: mask must be a [batch, group, seq] tensor, got {getattr(mask, 'shape', mask)}")
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{fn}: {name} must be a floating tensor, got {type(t).__name__}")
        if t.shape != mask.shape:
            raise ValueError(f"{fn}: {name} has shape {tuple(t.shape)}, expected mask's {tuple(mask.shape)}")


def _check_adv(fn: str, advantages: torch.Tensor, mask: torch.Tensor) -> None:
    if not isinstance(advantages, torch.Tensor) or advantages.shape != mask.shape[:2]:
        raise ValueError(
            f"{fn}: advantages must be [batch, group] = {tuple(mask.shape[:2])}, "
            f"got {tuple(getattr(advantages, 'shape', ()))}"
        )



def _ratio_inputs(fn: str, logp, old_logp, ref_logp, advantages, mask, beta: float, norm):
    """The checks and inputs the ratio-based losses (GRPO/DAPO/Dr. GRPO, GSPO, CISPO) share: shapes, ``beta > 0``
    needing ``ref_logp``; returns ``(batch, norm, m, log_ratio)``: whether the call is the whole batch (no ``norm``
    given), the normalisers to divide by, the float mask ``[B, G, T]`` and ``l_θ − sg(l_old)`` ``[B, G, T]``."""
    _check_tokens(fn, mask, logp=logp, old_logp=old_logp, ref_logp=ref_logp)
    _check_adv(fn, advantages, mask)
    if beta != 0 and ref_logp is None:
        raise ValueError(f"{fn}: beta={beta} needs ref_logp, got None")
    return norm is None, norm or Normalizers.of(mask), mask.to(logp.dtype), logp - old_logp.detach()

def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_θ ‖ π_ref) (docs/ALGORITHMS.md §2): ``exp(l_ref − l_θ) − (l_ref − l_θ) − 1`` >= 0.

    Args:
        logp: ``[B, G, T]`` policy token log-probs l_θ (differentiable).
        ref_logp: ``[B, G, T]`` reference token log-probs l_ref (detached here).
    Returns: ``[B, G, T]`` tensor, same dtype; padding positions are NOT masked (aggregate with ``mask``).
    Raises: ValueError on shape mismatch.
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(f"kl_k3: logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} differ in shape")
    d = ref_logp.detach() - logp
    return torch.exp(d) - d - 1.0


def aggregate(x: torch.Tensor, mask: torch.Tensor, mode: str = "seq-mean-token-mean",
              norm: Normalizers | None = None) -> torch.Tensor:
    """Reduce a per-token quantity to a scalar (docs/ALGORITHMS.md §2 ``loss_agg``).

    Args:
        x: ``[B, G, T]`` per-token values; mask: ``[B, G, T]`` 1 = response token.
        mode:
            ``"seq-mean-token-mean"`` (GRPO, default): ``mean_s [ Σ_t m x / Σ_t m ]``;
            ``"token-mean"`` (DAPO): ``Σ m x / Σ m``;
            ``"seq-mean-token-sum"`` (Dr.GRPO): ``mean_s [ Σ_t m x ]``.
            The sequence means run over sequences with at least one response token (fully padded rows are
            ignored); with no token at all the result is ``0 · Σx`` (exactly 0, graph still connected).
        norm: the batch's :class:`Normalizers` when ``x`` is one microbatch of it: the outer mean divides by the
            batch's ``seqs`` (or ``tokens``), so the microbatches' results sum to the batch's. None: ``x`` is the batch.
    Returns: 0-dim tensor.
    Raises: ValueError on an unknown mode or shape mismatch.
    """
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"aggregate: loss_agg must be one of {LOSS_AGG_MODES}, got {mode!r}")
    if x.shape != mask.shape:
        raise ValueError(f"aggregate: x {tuple(x.shape)} and mask {tuple(mask.shape)} differ in shape")
    m = mask.to(x.dtype)
    if m.sum() == 0:
        return (x * 0.0).sum()
    norm = norm or Normalizers.of(mask)
    xm = x * m
    if mode == "token-mean":
        return xm.sum() / norm.tokens
    lengths = m.sum(dim=-1)
    nonempty = lengths > 0
    seq = xm.sum(dim=-1)
    if mode == "seq-mean-token-mean":
        seq = seq / lengths.clamp(min=1.0)
    return seq[nonempty].sum() / norm.seqs


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip: bool = True,
    beta: float = 0.0,
    loss_agg: str = "seq-mean-token-mean",
    norm: Normalizers | None = None,
    clip_eps_high: float | None = None,
    token_scale: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO loss (docs/ALGORITHMS.md §2, DVR1 Eq. 2), to minimise::

        L = agg_{i,t} −c [ min(r_{i,t} Â_i, clip(r_{i,t}, 1−ε_l, 1+ε_h) Â_i) − β k3_{i,t} ],   r = exp(l_θ − l_old)

    (``clip=False``: the bracket is ``r Â − β k3``, the paper's GRPO baseline.) ε_l = ``clip_eps``, ε_h =
    ``clip_eps_high`` (None: ``clip_eps``); c = ``token_scale`` (1). DAPO (§9.2) is this with ε_l = 0.2, ε_h = 0.28,
    ``token-mean`` and β = 0; Dr. GRPO (§9.1) with ``seq-mean-token-sum``, c = 1/C and the no-σ advantage.

    Args:
        logp, old_logp: ``[B, G, T]`` token log-probs under π_θ and π_old; ref_logp: ``[B, G, T]`` under π_ref, or
            ``None`` when ``beta == 0``; advantages: ``[B, G]``; mask: ``[B, G, T]``.
        clip_eps: ε (ε_low) of the ratio clip; beta: KL coefficient; loss_agg: see ``aggregate``.
        norm: the whole batch's :class:`Normalizers` when this is a microbatch (module docstring); None = the batch.
        clip_eps_high: ε_high of an asymmetric clip (DAPO's clip-higher); None = ``clip_eps``.
        token_scale: factor on every per-token term before the aggregation (Dr. GRPO's 1/C).
    Returns:
        (loss 0-dim tensor, metrics) with float metrics: ``loss``, ``pg_loss`` (the policy term alone, same
        aggregation), ``kl`` (token-mean k3 to π_ref; 0 without ``ref_logp``), ``clip_frac`` (token fraction where
        the clipped branch is the min and differs from the unclipped one; 0 when ``clip=False``) and its two parts
        ``clip_frac_low`` (Â < 0, r < 1−ε_l) / ``clip_frac_high`` (Â > 0, r > 1+ε_h),
        ``ratio_mean``/``ratio_min``/``ratio_max`` (over response tokens), ``approx_kl_old`` (token-mean
        ``l_old − l_θ``). With ``norm`` they are this microbatch's shares (:func:`combine_metrics`).
    Raises: ValueError on shape mismatch, or ``beta > 0`` with ``ref_logp=None``.
    """
    batch, norm, m, log_ratio = _ratio_inputs("grpo_loss", logp, old_logp, ref_logp, advantages, mask, beta, norm)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().to(logp.dtype)[..., None]
    surr = ratio * adv
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if clip:
        surr_clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high) * adv
        objective = torch.minimum(surr, surr_clipped)
    else:
        objective = surr
    pg_tokens = -token_scale * objective
    tokens = pg_tokens
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else None
    if beta != 0:
        tokens = pg_tokens + (token_scale * beta) * kl
    loss = aggregate(tokens, mask, loss_agg, norm)
    with torch.no_grad():
        sel = m > 0
        if clip:
            active = (surr_clipped < surr).to(m.dtype) * m
            low = active * (adv < 0).to(m.dtype)
            frac, frac_low = _share(active, norm.tokens), _share(low, norm.tokens)
        else:
            frac = frac_low = 0.0
        metrics = {
            "loss": float(loss.detach()),
            "pg_loss": float(aggregate(pg_tokens, mask, loss_agg, norm)),
            "kl": _share(kl * m, norm.tokens) if kl is not None else 0.0,
            "clip_frac": frac,
            "clip_frac_low": frac_low,
            "clip_frac_high": _share(active - low, norm.tokens) if clip else 0.0,
            "ratio_mean": _share(ratio * m, norm.tokens),
            "ratio_min": float(ratio[sel].min()) if sel.any() else math.inf,
            "ratio_max": float(ratio[sel].max()) if sel.any() else -math.inf,
            "approx_kl_old": _share(-log_ratio * m, norm.tokens),
        }
    return loss, combine_metrics([metrics]) if batch else metrics


def reg_grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor,
    eps_s: float = 1.0,
    eps_rho: float = 1e-6,
    beta: float = 0.1,
    logratio_reduction: str = "sum",
    normalize_logratio: bool = True,
    ddof: int = 1,
    norm: Normalizers | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reg-GRPO loss (docs/ALGORITHMS.md §3, DVR1 Eqs. 3–8), to minimise::

        ρ_i    = Σ_t m_{i,t} (l_θ − l_old)            (``logratio_reduction="mean"``: divided by |y_i|)
        Â_θ,i  = ε_s (ρ_i − mean_G ρ) / sqrt(var_G ρ + ε_ρ)      (``normalize_logratio=False``: ε_s (ρ_i − mean_G ρ))
        L      = (1 / (n_valid · G)) Σ_{b valid} Σ_i (Â_{b,i} − Â_θ,{b,i})²  +  β · agg_smtm(k3(l_θ, l_ref))

    ``var_G`` uses ``ddof`` (same as the reward std). The regression term averages over the G members of VALID
    groups only (σ_r = 0 groups are masked out, docs/ALGORITHMS.md §3); with no valid group it is exactly 0
    (``0 · Σ``, the graph stays connected). The KL term (added, not subtracted) is aggregated seq-mean-token-mean
    over ALL sequences. No ratio clipping, no min. With ``norm`` (a microbatch of whole groups) ``n_valid`` and the
    KL's sequence count are the batch's, so the microbatch losses sum to the batch loss.

    Gradient at ρ ≡ 0 (``logp == old_logp``, the on-policy step): for member j of a valid group b,
    ``∂L/∂ρ_{b,j} = −2 ε_s (Â_{b,j} − mean_i Â_{b,i}) / (n_valid · G · sqrt(ε_ρ))`` (``normalize_logratio=False``: no
    ``sqrt(ε_ρ)``), i.e. docs/ALGORITHMS.md §3's ``−2 ε_s Â_j / (G sqrt(ε_ρ))`` divided by ``n_valid`` (our mean over
    valid groups) — the policy-gradient direction since group-normalised Â has mean 0.

    Args:
        logp, old_logp, ref_logp: ``[B, G, T]`` token log-probs (π_θ, π_old, π_ref; ``ref_logp`` may be ``None``
            when ``beta == 0``); advantages: ``[B, G]`` Â (``group_advantages``); mask: ``[B, G, T]``;
        valid: ``[B]`` bool, groups with σ_r > 0 (``GroupStats.valid``).
        eps_s: scale ε_s; eps_rho: ε_ρ inside the square root (ε_ρ = 0 divides 0 by 0 where ρ ≡ 0, the on-policy
            step: the run config requires ε_ρ > 0); beta: KL coefficient;
        logratio_reduction: ``"sum"`` (default) | ``"mean"``; normalize_logratio: z-score ρ (default) or only
            centre it; ddof: of ``var_G ρ``.
        norm: the whole batch's :class:`Normalizers` when this is a microbatch (module docstring); None = the batch.
    Returns:
        (loss 0-dim tensor, metrics) with float metrics: ``loss``, ``regression``, ``kl`` (the seq-mean-token-mean
        k3 term before β; 0 without ``ref_logp``), ``rho_mean``/``rho_std`` (over all B·G sequences, population std),
        ``pred_adv_mean``/``pred_adv_std`` (population, over members of valid groups; 0 if none),
        ``n_valid_groups``. With ``norm`` they are shares, with ``*_sqmean`` second moments in place of the stds
        (:func:`combine_metrics`).
    Raises: ValueError on shapes, an unknown reduction, ``group <= ddof``, ``eps_rho < 0``, or ``beta > 0`` without
        ``ref_logp``.
    """
    fn = "reg_grpo_loss"
    _check_tokens(fn, mask, logp=logp, old_logp=old_logp, ref_logp=ref_logp)
    _check_adv(fn, advantages, mask)
    if not isinstance(valid, torch.Tensor) or valid.shape != mask.shape[:1]:
        raise ValueError(f"{fn}: valid must be a [batch] = {tuple(mask.shape[:1])} bool tensor, got "
                         f"{tuple(getattr(valid, 'shape', ()))}")
    if logratio_reduction not in ("sum", "mean"):
        raise ValueError(f"{fn}: logratio_reduction must be 'sum' or 'mean', got {logratio_reduction!r}")
    G = mask.shape[1]
    if G <= ddof:
        raise ValueError(f"{fn}: group size {G} must exceed ddof={ddof}")
    if eps_rho < 0:
        raise ValueError(f"{fn}: eps_rho must be >= 0, got {eps_rho}")
    if beta != 0 and ref_logp is None:
        raise ValueError(f"{fn}: beta={beta} needs ref_logp, got None")
    batch = norm is None
    vmask = valid.to(torch.bool)
    norm = norm or Normalizers.of(mask, vmask)

    m = mask.to(logp.dtype)
    rho = ((logp - old_logp.detach()) * m).sum(dim=-1)  # [B, G]
    if logratio_reduction == "mean":
        rho = rho / m.sum(dim=-1).clamp(min=1.0)
    centred = rho - rho.mean(dim=1, keepdim=True)
    if normalize_logratio:
        pred_adv = eps_s * centred / torch.sqrt(rho.var(dim=1, correction=ddof, keepdim=True) + eps_rho)
    else:
        pred_adv = eps_s * centred
    sq = (advantages.detach().to(logp.dtype) - pred_adv) ** 2  # [B, G]
    n_valid = int(vmask.sum())
    if n_valid > 0:
        regression = sq[vmask].sum() / (norm.groups * G)
    else:
        regression = (sq * 0.0).sum()
    loss = regression
    kl_term = aggregate(kl_k3(logp, ref_logp), mask, "seq-mean-token-mean", norm) if ref_logp is not None else None
    if beta != 0:
        loss = loss + beta * kl_term
    with torch.no_grad():
        n_pred = norm.groups * G
        pv = pred_adv[vmask]
        metrics = {
            "loss": float(loss.detach()),
            "regression": float(regression),
            "kl": float(kl_term) if kl_term is not None else 0.0,
            "rho_mean": _share(rho, norm.rows),
            "rho_sqmean": _share(rho ** 2, norm.rows),
            "pred_adv_mean": _share(pv, n_pred),
            "pred_adv_sqmean": _share(pv ** 2, n_pred),
            "n_valid_groups": float(n_valid),
        }
    return loss, combine_metrics([metrics]) if batch else metrics


def _seq_lengths(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(|y_i| clamped to >= 1, |y_i| > 0)`` of a ``[B, G, T]`` float mask, both ``[B, G]``."""
    lengths = m.sum(dim=-1)
    return lengths.clamp(min=1.0), lengths > 0


def gspo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps_low: float = 3e-4,
    clip_eps_high: float = 4e-4,
    beta: float = 0.0,
    norm: Normalizers | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO loss (docs/ALGORITHMS.md §9.5; arXiv 2507.18071 Eqs. 5–7), to minimise::

        s_i = exp( Σ_t m_{i,t} (l_θ − l_old) / max(|y_i|, 1) )            (geometric mean of the token ratios)
        L   = −(1/N) Σ_i min( s_i Â_i , clip(s_i, 1−ε_l, 1+ε_h) Â_i )  +  β · agg_smtm(k3(l_θ, l_ref))

    N = the sequences with at least one response token (``norm.seqs``; fully padded rows are left out, as in
    ``aggregate``), the paper's ``(1/G) Σ_i`` averaged over groups. The KL term, off by default, is the §2.1 k3
    aggregated ``seq-mean-token-mean``. On-policy (``old_logp = sg(logp)``) ``s_i = 1`` and the gradient equals that
    of ``grpo_loss`` with ``seq-mean-token-mean`` and β = 0 (the identity of §9.5).

    Args:
        logp, old_logp, ref_logp: ``[B, G, T]`` token log-probs (``ref_logp`` may be None when ``beta == 0``);
        advantages: ``[B, G]`` Â; mask: ``[B, G, T]``; clip_eps_low, clip_eps_high: ε_l, ε_h of the sequence clip;
        beta: KL coefficient; norm: the whole batch's :class:`Normalizers` for a microbatch (module docstring).
    Returns:
        (loss, metrics): ``loss``, ``pg_loss``, ``kl`` (the seq-mean-token-mean k3, before β; 0 without ``ref_logp``),
        ``clip_frac`` / ``clip_frac_low`` (Â < 0, s < 1−ε_l) / ``clip_frac_high`` (Â > 0, s > 1+ε_h) as fractions of
        SEQUENCES, ``ratio_mean``/``ratio_min``/``ratio_max`` of s_i over those sequences, ``approx_kl_old``
        (token-mean ``l_old − l_θ``). Shares with ``norm``.
    Raises: ValueError on shapes, or ``beta > 0`` without ``ref_logp``.
    """
    batch, norm, m, log_ratio = _ratio_inputs("gspo_loss", logp, old_logp, ref_logp, advantages, mask, beta, norm)
    lengths, nonempty = _seq_lengths(m)
    seq_ratio = torch.exp((log_ratio * m).sum(dim=-1) / lengths)  # [B, G]
    adv = advantages.detach().to(logp.dtype)
    surr = seq_ratio * adv
    surr_clipped = torch.clamp(seq_ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high) * adv
    seq_obj = torch.minimum(surr, surr_clipped)
    keep = nonempty.to(logp.dtype)
    pg = -(seq_obj * keep).sum() / norm.seqs if norm.seqs > 0 else (seq_obj * 0.0).sum()
    kl_term = aggregate(kl_k3(logp, ref_logp), mask, "seq-mean-token-mean", norm) if ref_logp is not None else None
    loss = pg + beta * kl_term if beta != 0 else pg
    with torch.no_grad():
        active = (surr_clipped < surr).to(keep.dtype) * keep
        low = active * (adv < 0).to(keep.dtype)
        s_sel = seq_ratio[nonempty]
        metrics = {
            "loss": float(loss.detach()),
            "pg_loss": float(pg),
            "kl": float(kl_term) if kl_term is not None else 0.0,
            "clip_frac": _share(active, norm.seqs),
            "clip_frac_low": _share(low, norm.seqs),
            "clip_frac_high": _share(active - low, norm.seqs),
            "ratio_mean": _share(seq_ratio * keep, norm.seqs),
            "ratio_min": float(s_sel.min()) if s_sel.numel() else math.inf,
            "ratio_max": float(s_sel.max()) if s_sel.numel() else -math.inf,
            "approx_kl_old": _share(-log_ratio * m, norm.tokens),
        }
    return loss, combine_metrics([metrics]) if batch else metrics


def cispo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps_low: float = 1.0,
    clip_eps_high: float = 0.2,
    beta: float = 0.0,
    norm: Normalizers | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CISPO loss (docs/ALGORITHMS.md §9.6; MiniMax-M1, arXiv 2506.13585 Eqs. 4–5), to minimise::

        ŵ_{i,t} = clip(r_{i,t}, 1−ε_l, 1+ε_h),   r = exp(l_θ − l_old)
        L       = (1 / Σ_i |y_i|) Σ_{i,t} m [ −sg(ŵ_{i,t}) Â_i l_θ(y_{i,t})  +  β k3_{i,t} ]

    The weight is clipped and detached, not the objective: every token keeps the gradient ``−sg(ŵ) Â ∇l_θ``. The
    value is a surrogate (it holds ``l_θ`` itself); only its gradient means something. ε_l = 1.0 (the default) puts
    the lower bound at 0, i.e. none in effect, as the paper does. The KL term (off by default) is token-mean like
    the rest.

    Args: as :func:`gspo_loss` (ε_l, ε_h bound the token weight).
    Returns:
        (loss, metrics): ``loss``, ``pg_loss``, ``kl`` (token-mean k3), ``clip_frac`` / ``clip_frac_low``
        (r < 1−ε_l) / ``clip_frac_high`` (r > 1+ε_h) as fractions of response tokens whose weight is clipped,
        ``ratio_mean/min/max``, ``approx_kl_old``. Shares with ``norm``.
    Raises: ValueError on shapes, or ``beta > 0`` without ``ref_logp``.
    """
    batch, norm, m, log_ratio = _ratio_inputs("cispo_loss", logp, old_logp, ref_logp, advantages, mask, beta, norm)
    ratio = torch.exp(log_ratio)
    weight = torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high).detach()
    adv = advantages.detach().to(logp.dtype)[..., None]
    pg_tokens = -weight * adv * logp
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else None
    tokens = pg_tokens + beta * kl if beta != 0 else pg_tokens
    loss = aggregate(tokens, mask, "token-mean", norm)
    with torch.no_grad():
        sel = m > 0
        low = (ratio < 1.0 - clip_eps_low).to(m.dtype) * m
        high = (ratio > 1.0 + clip_eps_high).to(m.dtype) * m
        metrics = {
            "loss": float(loss.detach()),
            "pg_loss": float(aggregate(pg_tokens, mask, "token-mean", norm)),
            "kl": _share(kl * m, norm.tokens) if kl is not None else 0.0,
            "clip_frac": _share(low + high, norm.tokens),
            "clip_frac_low": _share(low, norm.tokens),
            "clip_frac_high": _share(high, norm.tokens),
            "ratio_mean": _share(ratio * m, norm.tokens),
            "ratio_min": float(ratio[sel].min()) if sel.any() else math.inf,
            "ratio_max": float(ratio[sel].max()) if sel.any() else -math.inf,
            "approx_kl_old": _share(-log_ratio * m, norm.tokens),
        }
    return loss, combine_metrics([metrics]) if batch else metrics


def rebel_pairs(group_ids, group_size: int, seed: int, step: int) -> torch.Tensor:
    """REBEL's response pairs (docs/ALGORITHMS.md §9.7): ⌊G/2⌋ disjoint random pairs per group.

    The REBEL paper (arXiv 2404.16767, Alg. 1) does not publish how it pairs responses within a group of G; this
    pairing is dvr1's own choice. Group ``k`` of ``group_ids`` gets ``randperm(G)`` from a CPU generator seeded with
    ``(seed, step, group_ids[k])``, its first ``2·⌊G/2⌋`` entries taken two at a time (odd G: one response left out).
    The result depends only on those three integers, so it is the same in every process, microbatching and resume.

    Args:
        group_ids: ints, one per group (the trainer passes each group's position in the global batch).
        group_size: G >= 2; seed: the run seed; step: the RL step.
    Returns: ``[len(group_ids), ⌊G/2⌋, 2]`` int64 response indices in ``[0, G)``, no index twice within a group.
    Raises: ValueError when ``group_size < 2``.
    """
    if group_size < 2:
        raise ValueError(f"rebel_pairs: group_size must be >= 2, got {group_size}")
    P = group_size // 2
    out = []
    for gid in group_ids:
        mixed = ((int(seed) * 1_000_003 + int(step)) * 1_000_033 + int(gid)) % (2 ** 63 - 1)
        perm = torch.randperm(group_size, generator=torch.Generator().manual_seed(mixed))
        out.append(perm[: 2 * P].view(P, 2))
    return torch.stack(out) if out else torch.empty(0, P, 2, dtype=torch.long)


def rebel_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    pairs: torch.Tensor,
    eta: float = 1.0,
    beta: float = 0.0,
    norm: Normalizers | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """REBEL loss (docs/ALGORITHMS.md §9.7; arXiv 2404.16767 Alg. 1), to minimise::

        ρ_i = Σ_t m_{i,t} (l_θ − l_old)                                  (sequence-sum log-ratio)
        L   = (1/N_pairs) Σ_{(a, b)} [ (ρ_a − ρ_b)/η − (R_a − R_b) ]²  +  β · agg_smtm(k3(l_θ, l_ref))

    over the pairs of every group (:func:`rebel_pairs`); ``N_pairs`` = the batch's groups × ⌊G/2⌋ (``norm.rows / G``
    groups with ``norm``). Raw rewards, no group normalisation. The KL term (β = 0 by default) is §3's.

    Args:
        logp, old_logp, ref_logp: ``[B, G, T]`` token log-probs (``ref_logp`` may be None when ``beta == 0``);
        rewards: ``[B, G]`` floating R; mask: ``[B, G, T]``; pairs: ``[B, P, 2]`` int64 indices in ``[0, G)``;
        eta: η > 0; beta: KL coefficient; norm: the batch's :class:`Normalizers` for a microbatch.
    Returns:
        (loss, metrics): ``loss``, ``regression`` (the pair term), ``kl`` (seq-mean-token-mean k3 before β),
        ``rho_mean``/``rho_std`` (over all B·G sequences, population std), ``n_pairs``. Shares with ``norm``.
    Raises: ValueError on shapes, indices out of range, ``eta <= 0``, or ``beta > 0`` without ``ref_logp``.
    """
    fn = "rebel_loss"
    _check_tokens(fn, mask, logp=logp, old_logp=old_logp, ref_logp=ref_logp)
    B, G = mask.shape[:2]
    if not isinstance(rewards, torch.Tensor) or not rewards.is_floating_point() or rewards.shape != (B, G):
        raise ValueError(f"{fn}: rewards must be a floating [batch, group] = {(B, G)} tensor, got "
                         f"{tuple(getattr(rewards, 'shape', ()))}")
    if (not isinstance(pairs, torch.Tensor) or pairs.dtype != torch.long or pairs.dim() != 3 or pairs.shape[0] != B
            or pairs.shape[2] != 2 or pairs.shape[1] < 1):
        raise ValueError(f"{fn}: pairs must be an int64 [batch={B}, pairs >= 1, 2] tensor, got "
                         f"{tuple(getattr(pairs, 'shape', ()))} {getattr(pairs, 'dtype', '')}")
    if pairs.numel() and (int(pairs.min()) < 0 or int(pairs.max()) >= G):
        raise ValueError(f"{fn}: pairs hold indices outside [0, {G})")
    if eta <= 0:
        raise ValueError(f"{fn}: eta must be > 0, got {eta}")
    if beta != 0 and ref_logp is None:
        raise ValueError(f"{fn}: beta={beta} needs ref_logp, got None")
    batch = norm is None
    norm = norm or Normalizers.of(mask)
    m = mask.to(logp.dtype)
    rho = ((logp - old_logp.detach()) * m).sum(dim=-1)  # [B, G]
    r = rewards.detach().to(logp.dtype)
    a, b = pairs[..., 0], pairs[..., 1]
    resid = (rho.gather(1, a) - rho.gather(1, b)) / eta - (r.gather(1, a) - r.gather(1, b))  # [B, P]
    n_pairs = norm.rows / G * pairs.shape[1]
    regression = (resid ** 2).sum() / n_pairs if n_pairs > 0 else (resid * 0.0).sum()
    kl_term = aggregate(kl_k3(logp, ref_logp), mask, "seq-mean-token-mean", norm) if ref_logp is not None else None
    loss = regression + beta * kl_term if beta != 0 else regression
    with torch.no_grad():
        metrics = {
            "loss": float(loss.detach()),
            "regression": float(regression),
            "kl": float(kl_term) if kl_term is not None else 0.0,
            "rho_mean": _share(rho, norm.rows),
            "rho_sqmean": _share(rho ** 2, norm.rows),
            "n_pairs": float(resid.numel()),
        }
    return loss, combine_metrics([metrics]) if batch else metrics


def objective(algo, logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor,
              norm: Normalizers | None = None, *, rewards: torch.Tensor | None = None,
              pairs: torch.Tensor | None = None,
              max_new_tokens: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The RL objective ``algo.name`` selects, with its ``algo.*`` settings (``dvr1.config.AlgoConfig``, defaults by
    :func:`setting`): the one call the trainer makes per microbatch (with the batch's ``norm``) — the shares sum to
    the batch loss.

    ``grpo`` §2 (``algo.clip``, ``algo.loss_agg``); ``reg_grpo`` §3; ``dr_grpo`` §9.1 (clipped, ``seq-mean-token-sum``
    / C with C = ``algo.dr_grpo_budget`` or else ``max_new_tokens``; the no-σ advantage comes from
    ``dvr1.rl.advantages.algo_advantages``); ``dapo`` §9.2 (clipped, asymmetric ε, ``token-mean``); ``gspo`` §9.5;
    ``cispo`` §9.6; ``rebel`` §9.7 (needs ``rewards`` and ``pairs``). β is ``setting(algo, "beta")`` everywhere.

    Args: as :func:`reg_grpo_loss` (``valid`` is used by Reg-GRPO only), plus keyword-only ``rewards`` ``[B, G]`` and
        ``pairs`` ``[B, P, 2]`` (REBEL) and ``max_new_tokens`` (Dr. GRPO's C when ``algo.dr_grpo_budget`` is 0).
    Returns: (loss, metrics) of that loss.
    Raises: ValueError for an unknown ``algo.name``, a missing input the algorithm needs (and the loss's own errors).
    """
    name = algo.name
    if name not in ALGORITHMS:
        raise ValueError(f"objective: algo.name must be one of {ALGORITHMS}, got {name!r}")
    beta = setting(algo, "beta")
    if name == "reg_grpo":
        return reg_grpo_loss(logp, old_logp, ref_logp, advantages, mask, valid, eps_s=algo.eps_s,
                             eps_rho=algo.eps_rho, beta=beta, logratio_reduction=algo.logratio_reduction,
                             normalize_logratio=algo.normalize_logratio, ddof=algo.ddof, norm=norm)
    if name == "rebel":
        if rewards is None or pairs is None:
            raise ValueError("objective: algo.name='rebel' needs rewards and pairs (dvr1.rl.losses.rebel_pairs)")
        return rebel_loss(logp, old_logp, ref_logp, rewards, mask, pairs, eta=algo.rebel_eta, beta=beta, norm=norm)
    low, high = setting(algo, "clip_eps_low"), setting(algo, "clip_eps_high")
    if name == "grpo":
        return grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps=low, clip=algo.clip, beta=beta,
                         loss_agg=algo.loss_agg, norm=norm, clip_eps_high=high)
    if name == "dr_grpo":
        budget = algo.dr_grpo_budget or max_new_tokens
        if not budget or budget <= 0:
            raise ValueError("objective: dr_grpo needs its constant C: algo.dr_grpo_budget > 0 or max_new_tokens")
        return grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps=low, clip=True, beta=beta,
                         loss_agg="seq-mean-token-sum", norm=norm, clip_eps_high=high, token_scale=1.0 / budget)
    if name == "dapo":
        return grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps=low, clip=True, beta=beta,
                         loss_agg="token-mean", norm=norm, clip_eps_high=high)
    if name == "gspo":
        return gspo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps_low=low, clip_eps_high=high, beta=beta,
                         norm=norm)
    return cispo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps_low=low, clip_eps_high=high, beta=beta,
                      norm=norm)


DPO_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
               "logps/rejected")


def dpo_loss(
    policy_chosen_logp: torch.Tensor,
    policy_rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float = 0.5,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sigmoid DPO loss (docs/ALGORITHMS.md §7, VidChain M-DPO), mean over N pairs::

        L = mean_n −log σ( β [ (l_θ(y_w) − l_ref(y_w)) − (l_θ(y_l) − l_ref(y_l)) ] )

    Args:
        policy_chosen_logp, policy_rejected_logp: ``[N]`` sequence log-probs (summed over assistant turns) of the
            winner y_w / loser y_l under π_θ; ref_chosen_logp, ref_rejected_logp: ``[N]`` under π_ref (detached).
        beta: β (0.5 in VidChain).
        weights: optional float ``[N]`` per-pair weights replacing the mean's ``1/N``: the loss and every metric are
            then ``Σ_n w_n x_n``, this call's SHARE of a larger batch (``w_n = 1/N_batch``; 0 for padding pairs), so
            the shares of a batch's microbatches sum (:func:`combine_metrics`) to the batch's values.
    Returns:
        (loss 0-dim tensor, metrics) with float metrics :data:`DPO_METRICS`, named as TRL's ``DPOTrainer`` logs them:
        ``loss``; ``rewards/chosen`` / ``rewards/rejected``, the mean implicit rewards ``β (l_θ − l_ref)`` (nats);
        ``rewards/margins``, the mean chosen − rejected reward; ``rewards/accuracies``, the fraction of pairs whose
        chosen reward is strictly greater; ``logps/chosen`` / ``logps/rejected``, the mean policy sequence log-probs.
    Raises: ValueError when the four tensors (and ``weights``) are not all ``[N]`` with N >= 1.
    """
    tensors = {
        "policy_chosen_logp": policy_chosen_logp,
        "policy_rejected_logp": policy_rejected_logp,
        "ref_chosen_logp": ref_chosen_logp,
        "ref_rejected_logp": ref_rejected_logp,
    }
    if weights is not None:
        tensors["weights"] = weights
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape != policy_chosen_logp.shape or t.numel() == 0:
            raise ValueError(f"dpo_loss: {name} must be a non-empty [N] tensor matching policy_chosen_logp "
                             f"{tuple(getattr(policy_chosen_logp, 'shape', ()))}, got {tuple(getattr(t, 'shape', ()))}")
    chosen = beta * (policy_chosen_logp - ref_chosen_logp.detach())
    rejected = beta * (policy_rejected_logp - ref_rejected_logp.detach())
    w = (torch.full_like(chosen, 1.0 / chosen.numel()) if weights is None
         else weights.detach().to(device=chosen.device, dtype=chosen.dtype))
    per_pair = -F.logsigmoid(chosen - rejected)
    loss = per_pair.mean() if weights is None else (w * per_pair).sum()
    with torch.no_grad():
        values = (per_pair, chosen, rejected, chosen - rejected, (chosen > rejected).to(chosen.dtype),
                  policy_chosen_logp, policy_rejected_logp)
        metrics = {k: float((w * v.detach()).sum()) for k, v in zip(DPO_METRICS, values)}
    metrics["loss"] = float(loss.detach())
    return loss, metrics
