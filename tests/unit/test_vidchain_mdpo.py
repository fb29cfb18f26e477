"""M-DPO (ALGORITHMS §7): pair construction on fabricated samples with hand-computed step scores, and the DPO loss
through the per-token forward_backward path equal to a plain-PyTorch reference (loss and every gradient)."""

import types

import pytest
import torch
import torch.nn.functional as F

from dvr1.rollout.base import RolloutOutput, RolloutRequest
from dvr1.train.inputs import Prepared, token_logprobs
from dvr1.vidchain.cotasks import chain_turns
from dvr1.vidchain.mdpo import PreferencePair, build_pairs, mdpo_loss_fn, pair_batch, pair_stats, score_step, select_pairs


class Exact:
    def compute_score(self, gts, res):
        per = [float(res[k][0] == gts[k][0]) for k in sorted(gts)]
        return sum(per) / len(per), per


SAMPLES = {  # per step kind: three sampled answers
    "count": ["2", "3", "1"],
    "segments": ["00-25, 50-99", "00-25, 50-74", "00-25"],
    "captions": ["1. a\n2. b", "1. a\n2. x", "junk"],
}


class FakeTok:
    """Token id 0 is <|im_end|>; a response ``[100*s + j + 1, 0]`` decodes to SAMPLES[kind s][j]."""

    kinds = list(SAMPLES)

    def convert_tokens_to_ids(self, t):
        return 0

    def decode(self, ids, skip_special_tokens=False):
        (x,) = ids
        return SAMPLES[self.kinds[x // 100]][x % 100 - 1]


class FakeEngine:
    def __init__(self):
        self.calls = []

    def generate(self, requests, sp):
        kind = requests[0]
        self.calls.append((kind, sp.n, sp.temperature))
        s = FakeTok.kinds.index(kind)
        return [RolloutOutput([[100 * s + j + 1, 0] for j in range(sp.n)], [[0.0, 0.0]] * sp.n, [True] * sp.n)]


class FakeInputs:
    def turns(self, rec, chain, ev):
        return chain_turns(chain, rec.events, rec.captions, rec.duration)

    def prepare(self, rec, turns, k):
        return types.SimpleNamespace(request=turns[k].kind)


def test_score_step_and_select_pairs():
    ev, caps = [(0.0, 2.5), (5.0, 10.0)], ["a", "b"]
    assert [score_step("count", t, ev, caps, 10.0, Exact()) for t in SAMPLES["count"]] == [100.0, 50.0, 50.0]
    seg = [score_step("segments", t, ev, caps, 10.0, Exact()) for t in SAMPLES["segments"]]
    assert seg == pytest.approx([100.0, 100 * (1 + 24 / 49) / 2, 100 * 2 / 3])
    assert [score_step("captions", t, ev, caps, 10.0, Exact()) for t in SAMPLES["captions"]] == [100.0, 50.0, 0.0]
    assert select_pairs([100.0, 74.5, 66.7]) == [(0, 1), (0, 2)]
    assert select_pairs([50.0, 60.0, 40.0], threshold=10.0) == [(0, 2), (1, 0), (1, 2)]
    assert select_pairs([5.0, 5.0, 5.0]) == []
    with pytest.raises(ValueError, match=r"^unknown chain step kind 'x'$"):
        score_step("x", "", ev, caps, 10.0, Exact())


def test_build_pairs_on_fabricated_outputs():
    rec = types.SimpleNamespace(events=[[0.0, 2.5], [5.0, 10.0]], captions=["a", "b"], duration=10.0)
    eng = FakeEngine()
    pairs, sums = build_pairs(eng, FakeInputs(), FakeTok(), [rec], ["count_seg_cap"], k_samples=3,
                              temperature=0.8, threshold=10.0, meteor=Exact())
    stats = pair_stats(sums)
    assert eng.calls == [("count", 3, 0.8), ("segments", 3, 0.8), ("captions", 3, 0.8)]
    got = [(p.kind, p.chosen_ids[0] % 100 - 1, p.rejected_ids[0] % 100 - 1) for p in pairs]
    assert got == [("count", 0, 1), ("count", 0, 2), ("segments", 0, 1), ("segments", 0, 2),
                   ("captions", 0, 1), ("captions", 0, 2), ("captions", 1, 2)]
    assert all(p.chosen_ids[-1] == 0 for p in pairs)  # the stop token is part of the trained response
    assert stats["pairs"] == 7.0 and stats["samples"] == 9.0
    assert stats["score/count"] == pytest.approx(200 / 3)
    assert stats["score/captions"] == pytest.approx(50.0)
    gaps = [50, 50, 100 - 100 * (1 + 24 / 49) / 2, 100 / 3, 50, 100, 50]
    assert stats["gap"] == pytest.approx(sum(gaps) / 7)
    # pairs formed per chain step and their mean metric gaps
    assert (stats["pairs/count"], stats["pairs/segments"], stats["pairs/captions"]) == (2.0, 2.0, 3.0)
    assert stats["gap/count"] == pytest.approx(50.0)
    assert stats["gap/segments"] == pytest.approx((gaps[2] + gaps[3]) / 2)
    assert stats["gap/captions"] == pytest.approx(200 / 3)
    # two DP ranks' sums add up to the statistics of one process on both shares (here: the same step twice)
    both = pair_stats({k: 2 * v for k, v in sums.items()})
    assert both == pytest.approx(dict(stats, pairs=14.0, samples=18.0, **{f"pairs/{k}": 2 * stats[f"pairs/{k}"]
                                                                        for k in ("count", "segments", "captions")}))
    # a step kind with samples but no pair has no gap entry (not a fake 0); no pair at all: gap 0
    none = pair_stats(dict(sums, **{"pairs": 0.0, "gap_sum": 0.0, "pairs/count": 0.0, "gap_sum/count": 0.0}))
    assert "gap/count" not in none and none["pairs/count"] == 0.0 and none["score/count"] == stats["score/count"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, parallel_state_1):
    from dvr1.models.qwen2_5_vl import Qwen25VLPolicy, load_hf_config, load_hf_weights
    from dvr1.models.tiny import make_tiny_checkpoint

    path = make_tiny_checkpoint(str(tmp_path_factory.mktemp("mdpo")), ["a b c d 00-25 1. a red disc"] * 10, seed=4,
                                vocab_size=300, text={"num_hidden_layers": 2})
    cfg = load_hf_config(path)
    policy, reference = Qwen25VLPolicy(cfg), Qwen25VLPolicy(cfg)
    load_hf_weights(policy, path)
    load_hf_weights(reference, path)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in reference.parameters():  # a reference that differs from the policy (as after some updates)
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    reference.requires_grad_(False)
    return cfg, policy, reference


def _pairs(cfg, g):
    from dvr1.models.rope import get_rope_index

    grid = torch.tensor([[2, 4, 4]])
    out = []
    for b in range(2):
        ids = torch.cat([torch.randint(10, 250, (3 + 2 * b,), generator=g), torch.tensor([cfg.video_token_id] * 8),
                         torch.randint(10, 250, (4,), generator=g)])
        pos = get_rope_index(ids.view(1, -1), cfg.video_token_id, grid, [1.0], 2, 2)[:, 0]
        emb = torch.randn(8, cfg.text_config.hidden_size, generator=g)
        prep = Prepared(None, "", RolloutRequest(ids, pos, emb), grid, 1.0, cfg.video_token_id)
        for _ in range(1 + b):
            w = torch.randint(10, 250, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
            lo = torch.randint(10, 250, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
            out.append(PreferencePair(prep, w, lo, 80.0, 20.0, "captions"))
    return out


def _plain_seq_logp(model, batch, pairs):
    logits = model(batch.input_ids, batch.position_ids, video_embeds=batch.video_embeds, video_mask=batch.video_mask)
    rows = [(p.prepared, p.chosen_ids) for p in pairs] + [(p.prepared, p.rejected_ids) for p in pairs]
    out = []
    for i, (prep, resp) in enumerate(rows):
        L = prep.request.prompt_ids.numel()
        lp = F.log_softmax(logits[i].float(), dim=-1)
        out.append(sum(lp[L - 1 + j, t] for j, t in enumerate(resp)))
    return torch.stack(out)


def test_dpo_per_token_path_equals_plain_pytorch(tiny):
    from dvr1.parallel.forward import forward_backward

    cfg, policy, reference = tiny
    pairs = _pairs(cfg, torch.Generator().manual_seed(0))
    n = len(pairs)
    batch = pair_batch(pairs, 0)
    ref_lp, _ = token_logprobs(reference, batch)
    ref_seq = ref_lp.sum(-1)
    with torch.no_grad():
        assert torch.allclose(ref_seq, _plain_seq_logp(reference, batch, pairs), atol=1e-5)

    policy.zero_grad()
    res = forward_backward(policy, batch, mdpo_loss_fn(ref_seq, torch.full((n,), 1 / n), beta=0.5), forward_only=False)
    loss = float(res.loss)
    grads = {k: p.grad.clone() for k, p in policy.named_parameters() if p.grad is not None}

    policy.zero_grad()
    seq = _plain_seq_logp(policy, batch, pairs)
    with torch.no_grad():
        ref_plain = _plain_seq_logp(reference, batch, pairs)
    margin = 0.5 * ((seq[:n] - ref_plain[:n]) - (seq[n:] - ref_plain[n:]))
    ref_loss = -F.logsigmoid(margin).mean()
    ref_loss.backward()
    assert loss == pytest.approx(float(ref_loss), abs=1e-5)
    assert abs(float(ref_loss) - torch.log(torch.tensor(2.0))) > 1e-3  # the reference differs: not the trivial value
    plain = {k: p.grad for k, p in policy.named_parameters() if p.grad is not None}
    assert set(plain) == set(grads) and len(grads) > 10
    for k in plain:
        assert torch.allclose(grads[k], plain[k], atol=1e-5, rtol=1e-4), (k, (grads[k] - plain[k]).abs().max())
    # the DPO metrics of the step (TRL's names) equal their plain formulas on the plain log-probs
    s = seq.detach()
    chosen, rejected = 0.5 * (s[:n] - ref_plain[:n]), 0.5 * (s[n:] - ref_plain[n:])
    want = {"loss": float(ref_loss), "rewards/chosen": float(chosen.mean()), "rewards/rejected": float(rejected.mean()),
            "rewards/margins": float((chosen - rejected).mean()),
            "rewards/accuracies": float((chosen > rejected).float().mean()),
            "logps/chosen": float(s[:n].mean()), "logps/rejected": float(s[n:].mean())}
    assert res.metrics[0] == pytest.approx(want, abs=1e-5)


def test_dpo_microbatches_equal_one_batch(tiny):
    """The 3 pairs in microbatches of 1 and of 2 pairs (pair_batch groups, weights 1/3): loss, every gradient and the
    combined DPO metrics equal the one-microbatch step."""
    from dvr1.parallel.forward import forward_backward
    from dvr1.rl.losses import combine_metrics

    cfg, policy, reference = tiny
    pairs = _pairs(cfg, torch.Generator().manual_seed(0))
    n, w = len(pairs), torch.full((len(pairs),), 1 / len(pairs))
    out = {}
    for per_mb in (0, 1, 2):
        batch = pair_batch(pairs, 0, per_mb)
        ref_seq = token_logprobs(reference, batch, rows_per_microbatch=2 * per_mb)[0].sum(-1)
        policy.zero_grad()
        res = forward_backward(policy, batch, mdpo_loss_fn(ref_seq, w, beta=0.5), forward_only=False,
                               rows_per_microbatch=2 * per_mb)
        assert len(res.metrics) == (1 if per_mb == 0 else -(-n // per_mb))
        out[per_mb] = (float(res.loss), combine_metrics(res.metrics),
                       {k: p.grad.clone() for k, p in policy.named_parameters() if p.grad is not None})
    loss0, m0, g0 = out[0]
    for per_mb in (1, 2):
        loss, m, g = out[per_mb]
        assert loss == pytest.approx(loss0, abs=1e-6)
        assert m == pytest.approx(m0, abs=1e-5)
        assert set(g) == set(g0)
        for k in g0:
            assert torch.allclose(g[k], g0[k], atol=1e-6, rtol=1e-4), (per_mb, k)
