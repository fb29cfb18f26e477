"""Packed sequences (dvr1.parallel.packing, `model.packing`): the packed layout on a hand-worked batch, and the packed
forward/backward of the Qwen2.5-VL policy equal to the padded one (log-probs, entropy, Reg-GRPO loss, every gradient;
fp32, <= 1e-5 relative) on sequences of very different lengths with videos of different sizes."""

import pytest
import torch

from dvr1.models.qwen2_5_vl import Qwen25VLPolicy, load_hf_config, load_hf_weights
from dvr1.models.rope import get_rope_index
from dvr1.models.tiny import make_tiny_checkpoint
from dvr1.parallel.forward import forward_backward
from dvr1.parallel import packing as packing_mod
from dvr1.parallel.packing import bins, model_inputs, pack, padding_fraction, plan, unpack
from dvr1.rl.advantages import group_advantages
from dvr1.rl.losses import Normalizers, reg_grpo_loss
from dvr1.rollout.base import RolloutRequest
from dvr1.train.inputs import Prepared, build_batch, token_logprobs

VID = 99


def _prepared(n_text, n_video, tag=0.0):
    ids = torch.cat([torch.arange(10, 10 + n_text[0]), torch.full((n_video,), VID),
                     torch.arange(40, 40 + n_text[1])])
    pos = torch.arange(ids.numel()).expand(3, -1).clone()
    embeds = torch.full((n_video, 4), tag) if n_video else None
    return Prepared(None, "", RolloutRequest(ids, pos, embeds), None, 1.0, VID)


def _hand_batch():
    """Rows of 3, 6 and 2 tokens (prompts 2, 4, 2 with 1, 2, 0 video tokens; responses 1, 2, 0 tokens), S = 6, T = 2."""
    a, b, c = _prepared((1, 0), 1, tag=1.0), _prepared((1, 1), 2, tag=2.0), _prepared((2, 0), 0)
    return build_batch([(a, [7]), (b, [8, 9]), (c, [])], pad_id=0)


def test_pack_one_row_thd_layout_hand_worked():
    batch = _hand_batch()
    assert batch.seq_lens == [3, 6, 2] and batch.input_ids.shape == (3, 6)
    pk = pack(batch)
    assert pk.shape == (1, 11) and pk.num_rows == 3 and pk.starts == [0, 3, 9]
    assert pk.input_ids.tolist() == [[10, 99, 7, 10, 99, 99, 40, 8, 9, 10, 11]]
    assert pk.position_ids[0, 0].tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5, 0, 1]  # each sequence its own positions
    assert pk.video_mask[0].tolist() == [False, True, False, False, True, True] + [False] * 5
    assert pk.video_embeds[:, 0].tolist() == [1.0, 2.0, 2.0]
    assert pk.cu_seqlens.tolist() == [0, 3, 9, 11] and pk.cu_seqlens.dtype == torch.int32 and pk.max_seqlen == 6
    # response token j of row i is predicted at packed target start_i + prompt_len_i - 1 + j
    # row 0: [1, (clamped to len-2) 1]; row 1: 3 + [3, 4]; row 2 (no response): 9 + [1, 2 -> clamped to 0]
    assert pk.resp_index.tolist() == [[1, 1], [6, 7], [9, 9]]
    # the mask: q sees k iff same sequence and k <= q (True = masked)
    seg = [0] * 3 + [1] * 6 + [2] * 2
    want = torch.tensor([[not (seg[q] == seg[k] and k <= q) for k in range(11)] for q in range(11)])
    assert torch.equal(pk.attention_mask()[0, 0], want)
    assert torch.equal(unpack(pk.input_ids, pk), batch.input_ids)  # the inverse layout
    pos = unpack(pk.position_ids.movedim(0, -1), pk)  # [N, S, 3]
    for i, n in enumerate(batch.seq_lens):
        assert torch.equal(pos[i, :n].t(), batch.position_ids[:, i, :n])
    # a filler tail (PP: a common length; SP: a multiple of TP) is its own segment, inside cu_seqlens
    pk = pack(batch, length=13)
    assert pk.cu_seqlens.tolist() == [0, 3, 9, 11, 13] and pk.shape == (1, 13)
    assert pk.position_ids[0, 0, 11:].tolist() == [0, 1]
    assert pack(batch, multiple=4).shape == (1, 12)
    with pytest.raises(ValueError, match="length 10 < the microbatch's 11 tokens"):
        pack(batch, length=10)
    psp = pk.packed_seq_params()
    assert psp.qkv_format == "thd" and psp.cu_seqlens_q.tolist() == [0, 3, 9, 11, 13]
    assert psp.cu_seqlens_kv.dtype == torch.int32 and psp.max_seqlen_q == psp.max_seqlen_kv == 6
    assert padding_fraction(batch.seq_lens) == pytest.approx(1 - 11 / 18)


def test_pack_bins_hand_worked():
    """Local spec: first-fit decreasing into bins of the longest (6): [row 1], [row 0, row 2, filler 1]."""
    batch = _hand_batch()
    assert bins([3, 6, 2], 6) == [[1], [0, 2]] and bins([2, 2, 5, 1], 5) == [[2], [0, 1, 3]]
    with pytest.raises(ValueError, match="exceeds the capacity 5"):
        bins([6], 5)
    pk = pack(batch, capacity=6)
    assert pk.shape == (2, 6) and pk.starts == [6, 0, 9]
    assert pk.input_ids.tolist() == [[10, 99, 99, 40, 8, 9], [10, 99, 7, 10, 11, 0]]
    assert pk.position_ids[1].tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 0]]
    assert pk.video_embeds[:, 0].tolist() == [2.0, 2.0, 1.0]  # reordered with the sequences (packed order)
    assert pk.video_mask.tolist() == [[False, True, True, False, False, False], [False, True] + [False] * 4]
    assert pk.cu_seqlens.tolist() == [0, 6, 9, 11, 12]
    # flattened shifted-target space [R (C - 1)] = [10]: row r's column c is r * 5 + c
    assert pk.resp_index.tolist() == [[5 + 1, 5 + 1], [3, 4], [5 + 3, 5 + 3]]
    m = pk.attention_mask()
    assert m.shape == (2, 1, 6, 6) and not m[0, 0].tril().any()  # row 0: one sequence, plain causal
    assert m[1, 0, 4].tolist() == [True, True, True, False, False, True]  # seq 2's 2nd token sees seq 2 only
    assert torch.equal(unpack(pk.input_ids, pk), batch.input_ids)
    pk = pack(batch, capacity=6, rows=3, multiple=4)  # PP: a common [R, C]; SP: C a multiple of TP
    # C = 8 now holds rows 1 and 2 together: [6, 2], [3, filler 5], [filler 8]
    assert pk.shape == (3, 8) and pk.cu_seqlens.tolist() == [0, 6, 8, 11, 16, 24]
    assert padding_fraction(batch.seq_lens, 3, 8) == pytest.approx(1 - 11 / 24)
    kws, C, R = plan([[3, 6, 2], [2, 2]], "local", same_shape=True)
    assert (C, R) == (6, 2) and kws == [dict(capacity=6, rows=2, multiple=1)] * 2
    kws, C, R = plan([[3, 6, 2], [2, 2]], "local")
    assert (C, R) == (6, 2) and kws[1] == dict(capacity=2, rows=None, multiple=1)
    kws, C, R = plan([[3, 6, 2], [2, 2]], "te", multiple=2, same_shape=True)
    assert (C, R) == (12, 1) and kws == [dict(length=12, multiple=2)] * 2


def test_te_packing_without_transformer_engine_fails_clearly():
    try:
        import transformer_engine  # noqa: F401
        pytest.skip("transformer_engine is installed")
    except Exception:
        pass
    batch = build_batch([(_prepared((2, 0), 0), [7])], pad_id=0)
    with pytest.raises(RuntimeError, match="model.packing with model.spec=te uses TransformerEngine's THD"):
        model_inputs(pack(batch), "te")
    assert set(model_inputs(pack(batch), "local")) == {"attention_mask"}


B, G = 3, 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory, parallel_state_1):
    """3 prompts with videos of 1, 4 and 2 temporal patches (8, 32, 16 video tokens) and 2 to 30 text tokens,
    responses of 1 to 24 tokens: sequence lengths 10 to 73, padding ~45 % of the padded batch; in one microbatch
    the local layout packs them into 3 bins of 73 tokens, [73], [54, 12], [32, 22, 10]."""
    path = make_tiny_checkpoint(str(tmp_path_factory.mktemp("pack")), ["a b c d <think>x</think>"] * 10, seed=3,
                                vocab_size=300, text={"num_hidden_layers": 2})
    cfg = load_hf_config(path)
    policy = Qwen25VLPolicy(cfg)
    load_hf_weights(policy, path)
    g = torch.Generator().manual_seed(0)
    vid, h = cfg.video_token_id, cfg.text_config.hidden_size
    items = []
    for b, (t, n_text, resp) in enumerate([(1, 2, (1, 3)), (4, 30, (24, 5)), (2, 9, (12, 2))]):
        grid = torch.tensor([[t, 4, 4]])
        ids = torch.cat([torch.randint(10, 250, (n_text,), generator=g), torch.tensor([vid] * (4 * t)),
                         torch.randint(10, 250, (3,), generator=g)])
        pos = get_rope_index(ids.view(1, -1), vid, grid, [0.5 + b], 2, 2)[:, 0]
        p = Prepared(None, "", RolloutRequest(ids, pos, torch.randn(4 * t, h, generator=g)), grid, 0.5 + b, vid)
        for n in resp:
            items.append((p, torch.randint(10, 250, (n,), generator=g).tolist()))
    batch = build_batch(items, 0)
    assert padding_fraction(batch.seq_lens) > 0.4 and max(batch.seq_lens) >= 4 * min(batch.seq_lens)
    assert bins(batch.seq_lens, max(batch.seq_lens)) == [[2], [3, 1], [4, 5, 0]]  # rows shared, videos reordered
    return policy, batch


def _step(policy, batch, packing, rows_per_microbatch=0, fused=False):
    """Reg-GRPO (beta 0.1) on fixed old/ref log-probs: (logp, entropy, loss, grads)."""
    T = batch.resp_mask.shape[1]
    mask = batch.resp_mask.view(B, G, T)
    g = torch.Generator().manual_seed(1)
    old = (-1.0 - torch.rand(B, G, T, generator=g)) * mask
    ref = old + 0.1 * torch.randn(B, G, T, generator=g) * mask
    stats = group_advantages(torch.tensor([[1.0, 0.0], [0.5, 2.0], [1.0, 0.2]]))
    norm = Normalizers.of(mask, stats.valid)

    def loss_fn(logp, _e, rows):
        gs = slice(rows.start // G, rows.stop // G)
        return reg_grpo_loss(logp.view(-1, G, T), old[gs], ref[gs], stats.advantages[gs], mask[gs], stats.valid[gs],
                             beta=0.1, norm=norm)

    policy.zero_grad()
    res = forward_backward(policy, batch, loss_fn, forward_only=False, compute_entropy=True, packing=packing,
                           rows_per_microbatch=rows_per_microbatch, fused=fused)
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    return res.logp, res.entropy, res.loss, grads


def _close(a, b, name, rel=1e-5):
    err = float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))
    assert err <= rel, f"{name}: relative error {err:.3g}"


@pytest.fixture(params=["bins", "one_row"])
def layout(request, monkeypatch):
    """bins: the local spec's layout; one_row: the TE spec's THD layout (one row per microbatch), attention
    restricted by the same cu_seqlens through the block-diagonal mask, as TE's padding_causal does."""
    if request.param == "one_row":
        plan = packing_mod.plan
        monkeypatch.setattr(packing_mod, "plan", lambda m, spec, *a, **k: plan(m, "te", *a, **k))
    return request.param


@pytest.mark.parametrize("rows_per_microbatch,fused", [(0, False), (G, False), (0, True)])
def test_packed_equals_padded(setup, layout, rows_per_microbatch, fused):
    """The reference is always the padded logits path in one microbatch."""
    policy, batch = setup
    ref = _step(policy, batch, packing=False)
    got = _step(policy, batch, packing=True, rows_per_microbatch=rows_per_microbatch, fused=fused)
    assert float(ref[1].sum()) > 0 and float(ref[0].abs().sum()) > 0
    _close(got[0], ref[0], "logp")
    _close(got[1], ref[1], "entropy")
    _close(got[2], ref[2], "loss")
    assert got[0].shape == ref[0].shape == batch.resp_mask.shape
    assert torch.all(got[0][batch.resp_mask == 0] == 0)
    assert got[3].keys() == ref[3].keys() and len(ref[3]) > 10
    for k, v in ref[3].items():
        assert float(v.abs().sum()) > 0, k  # every weight gets gradient
        _close(got[3][k], v, k)


def test_packed_logprob_pass_equals_padded(setup, layout):
    """The old-policy / reference pass (no gradients, token_logprobs) with packing on."""
    policy, batch = setup
    lp, ent = token_logprobs(policy, batch, compute_entropy=True)
    lp2, ent2 = token_logprobs(policy, batch, compute_entropy=True, packing=True, rows_per_microbatch=G)
    _close(lp2, lp, "logp")
    _close(ent2, ent, "entropy")


def test_packing_without_mask_differs(setup, monkeypatch):
    """The test can fail: packed rows attending across sequences (plain causal mask) give other log-probs."""
    policy, batch = setup
    lp, _ = token_logprobs(policy, batch)
    monkeypatch.setattr(packing_mod, "model_inputs", lambda pk, spec: {})
    lp2, _ = token_logprobs(policy, batch, packing=True)
    assert float((lp2 - lp).abs().max()) > 1e-3
