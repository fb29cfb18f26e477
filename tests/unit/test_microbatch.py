"""Group-aligned microbatching of the RL step: the per-microbatch loss shares (the objective called with the batch's
normalisers) sum to the batch loss, so the gradient with one group per microbatch equals the one-microbatch gradient
(Reg-GRPO with KL, GRPO with each aggregation, every baseline of docs/ALGORITHMS.md §9), and so do the combined
metrics."""

import pytest
import torch

from dvr1.config import load_config
from dvr1.models.qwen2_5_vl import Qwen25VLPolicy, load_hf_config, load_hf_weights
from dvr1.models.rope import get_rope_index
from dvr1.models.tiny import make_tiny_checkpoint
from dvr1.parallel.forward import forward_backward
from dvr1.rl.advantages import algo_advantages, group_advantages
from dvr1.rollout.base import RolloutRequest
from dvr1.train.inputs import Prepared, build_batch, token_logprobs
from dvr1.rl.losses import Normalizers, combine_metrics, objective, rebel_pairs

B, G = 3, 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory, parallel_state_1):
    path = make_tiny_checkpoint(str(tmp_path_factory.mktemp("mb")), ["a b c d <think>x</think>"] * 10, seed=2,
                                vocab_size=300, text={"num_hidden_layers": 2})
    cfg = load_hf_config(path)
    policy = Qwen25VLPolicy(cfg)
    load_hf_weights(policy, path)
    g = torch.Generator().manual_seed(0)
    grid = torch.tensor([[2, 4, 4]])
    items = []
    for b in range(B):
        ids = torch.cat([torch.randint(10, 250, (3 + b,), generator=g), torch.tensor([cfg.video_token_id] * 8),
                         torch.randint(10, 250, (4,), generator=g)])
        pos = get_rope_index(ids.view(1, -1), cfg.video_token_id, grid, [1.0], 2, 2)[:, 0]
        embeds = torch.randn(8, cfg.text_config.hidden_size, generator=g)
        p = Prepared(None, "", RolloutRequest(ids, pos, embeds), grid, 1.0, cfg.video_token_id)
        for _ in range(G):
            n = int(torch.randint(2, 7, (1,), generator=g))
            items.append((p, torch.randint(10, 250, (n,), generator=g).tolist()))
    batch = build_batch(items, 0)
    logp, _ = token_logprobs(policy, batch)
    noise = torch.randn(logp.shape, generator=g) * 0.2 * batch.resp_mask
    rewards = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 1.0], [0.5, 1.5, 0.0]])  # group 2 has sigma_r = 0
    return policy, batch, logp - noise, logp + 0.5 * noise, group_advantages(rewards), rewards


def _grads(policy, batch, old, ref, stats, overrides, groups_per_mb, fused=False, rewards=None):
    cfg = load_config(None, overrides)
    T = batch.resp_mask.shape[1]
    mask = batch.resp_mask.view(B, G, T)
    if rewards is not None:  # the trainer's advantages for algo.name (Dr. GRPO's without σ)
        stats = algo_advantages(cfg.algo, rewards)
    norm = Normalizers.of(mask, stats.valid)
    pairs = rebel_pairs(range(B), G, 0, 1)
    extra = lambda g: dict(rewards=None if rewards is None else rewards[g], pairs=pairs[g], max_new_tokens=8)  # noqa

    def loss_fn(logp, _e, rows):
        g = slice(rows.start // G, rows.stop // G)
        return objective(cfg.algo, logp.view(-1, G, T), old.view(B, G, T)[g], ref.view(B, G, T)[g],
                         stats.advantages[g], mask[g], stats.valid[g], norm, **extra(g))

    policy.zero_grad()
    res = forward_backward(policy, batch, loss_fn, forward_only=False, rows_per_microbatch=G * groups_per_mb,
                           fused=fused)
    full, full_metrics = objective(cfg.algo, res.logp.view(B, G, T), old.view(B, G, T), ref.view(B, G, T),
                                   stats.advantages, mask, stats.valid, **extra(slice(None)))
    assert len(res.metrics) == (B // groups_per_mb if groups_per_mb else 1)
    metrics = combine_metrics(res.metrics)
    assert metrics.keys() == full_metrics.keys()
    for k, v in full_metrics.items():  # the microbatches' metric shares combine to the batch's metrics
        assert metrics[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    return res.loss, full, grads


@pytest.mark.parametrize("overrides", [
    ["algo.name=reg_grpo", "algo.beta=0.1"],
    ["algo.name=grpo", "algo.clip=true", "algo.beta=0.05", "algo.loss_agg=seq-mean-token-mean"],
    ["algo.name=grpo", "algo.beta=0.05", "algo.loss_agg=token-mean"],
    ["algo.name=grpo", "algo.beta=0.05", "algo.loss_agg=seq-mean-token-sum"],
    ["algo.name=dr_grpo", "algo.beta=0.05"],
    ["algo.name=dapo"],
    ["algo.name=gspo", "algo.clip_eps_low=0.02", "algo.clip_eps_high=0.03", "algo.beta=0.05"],
    ["algo.name=cispo", "algo.beta=0.05"],
    ["algo.name=rebel", "algo.beta=0.05"],
])
def test_one_group_per_microbatch_equals_one_microbatch(setup, overrides):
    policy, batch, old, ref, stats, rewards = setup
    loss1, full1, g1 = _grads(policy, batch, old, ref, stats, overrides, 0, rewards=rewards)
    loss3, full3, g3 = _grads(policy, batch, old, ref, stats, overrides, 1, rewards=rewards)
    assert torch.allclose(loss1, full1, atol=1e-6)  # one microbatch: the share is the batch loss
    assert torch.allclose(loss3, full1, atol=1e-6)  # three shares sum to the batch loss
    assert g1.keys() == g3.keys() and len(g1) > 5
    for k in g1:
        assert torch.allclose(g1[k], g3[k], rtol=1e-4, atol=1e-6), k


@pytest.mark.parametrize("groups_per_mb", [0, 1])
def test_fused_output_layer_equals_logits_path(setup, groups_per_mb):
    """fused_linear_logprobs inside the schedule (logits never materialised) == the logits path: loss and grads."""
    policy, batch, old, ref, stats, _ = setup
    overrides = ["algo.name=reg_grpo", "algo.beta=0.1"]
    loss_a, _, ga = _grads(policy, batch, old, ref, stats, overrides, 0)
    loss_b, _, gb = _grads(policy, batch, old, ref, stats, overrides, groups_per_mb, fused=True)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert ga.keys() == gb.keys()
    for k in ga:
        assert torch.allclose(ga[k], gb[k], rtol=1e-4, atol=1e-6), k
