"""The native sampler's token choice: greedy, temperature, nucleus (top-p) support, untempered log-probs."""

import torch

from dvr1.rollout.base import sample_next


def test_greedy_picks_argmax_and_reports_untempered_logprob():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, -1.0, 0.5]])
    tok, lp = sample_next(logits, 0.0, 1.0, torch.Generator().manual_seed(0))
    assert tok.tolist() == [1, 0]
    assert torch.allclose(lp, torch.log_softmax(logits, -1)[[0, 1], [1, 0]])


def test_top_p_restricts_support_to_the_nucleus():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p=0.7 keeps {0, 1} (0.5 < 0.7, then 0.8 >= 0.7)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(4000, 1)
    tok, lp = sample_next(logits, 1.0, 0.7, torch.Generator().manual_seed(0))
    assert set(tok.tolist()) == {0, 1}
    frac0 = (tok == 0).float().mean().item()
    assert abs(frac0 - 0.5 / 0.8) < 0.03  # renormalised within the nucleus
    assert torch.allclose(lp, probs.log()[tok], atol=1e-6)  # log-probs of the policy, not of the truncated sampler


def test_temperature_sharpens_and_sampling_is_reproducible():
    logits = torch.tensor([1.0, 0.0]).repeat(4000, 1)
    t1, _ = sample_next(logits, 1.0, 1.0, torch.Generator().manual_seed(1))
    t2, _ = sample_next(logits, 0.25, 1.0, torch.Generator().manual_seed(1))
    p1 = (t1 == 0).float().mean().item()
    p2 = (t2 == 0).float().mean().item()
    assert abs(p1 - torch.sigmoid(torch.tensor(1.0)).item()) < 0.03
    assert abs(p2 - torch.sigmoid(torch.tensor(4.0)).item()) < 0.03
    again, _ = sample_next(logits, 1.0, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(t1, again)
