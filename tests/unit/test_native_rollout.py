"""The native sampler decodes prompts of different lengths in one batch exactly as it decodes each prompt alone.

Prompts of three lengths (two with different videos, one text only) are left-padded into one batch; finished rows
leave the batch mid-decode. Greedy tokens equal each prompt decoded alone, token for token; the engine's log-probs
equal the alone run's and the trainer's recomputation (`token_logprobs`, the training forward) to 1e-5.
"""

import numpy as np
import pytest
import torch

from dvr1.data.processing import normalize_frames, num_video_tokens, patchify
from dvr1.models.qwen2_5_vl import Qwen25VLPolicy, load_hf_config, load_hf_weights
from dvr1.models.rope import get_rope_index
from dvr1.models.tiny import make_tiny_checkpoint
from dvr1.rollout.base import RolloutRequest, SamplingParams
from dvr1.rollout.native import KVCache, NativeRolloutEngine
from dvr1.train.inputs import Prepared, build_batch, token_logprobs

TEXTS = ["Is this video played forward or in reverse? A. forward B. reversed <think>I look.</think><answer>A</answer>"] * 20


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dvr1.parallel.setup import init_parallel

    init_parallel(tp=1, pp=1, seed=1)
    path = make_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny")), TEXTS, seed=3, vocab_size=400)
    cfg = load_hf_config(path)
    policy = Qwen25VLPolicy(cfg)
    load_hf_weights(policy, path)
    prepared = []
    for i, (pre, post) in enumerate([(3, 5), (11, 2), (6, 9)]):
        g = torch.Generator().manual_seed(i)
        if i == 2:  # text only
            ids = torch.randint(20, 380, (pre + post,), generator=g)
            pos = torch.arange(ids.numel()).expand(3, -1)
            prepared.append(Prepared(None, "", RolloutRequest(ids, pos), None, 0.5, cfg.video_token_id))
            continue
        frames = np.random.default_rng(i).integers(0, 256, (4 + 2 * i, 56, 84, 3), dtype=np.uint8)
        pv, grid = patchify(normalize_frames(frames, max_pixels=112 * 112))
        grid = grid.view(1, 3)
        ids = torch.cat([torch.randint(20, 380, (pre,), generator=g),
                         torch.tensor([cfg.vision_start_token_id] + [cfg.video_token_id] * num_video_tokens(grid[0])
                                      + [cfg.vision_end_token_id]),
                         torch.randint(20, 380, (post,), generator=g)])
        pos = get_rope_index(ids.view(1, -1), cfg.video_token_id, grid, [0.5], 2, 2)[:, 0]
        req = RolloutRequest(ids, pos, video_embeds=policy.encode_video(pv, grid))
        prepared.append(Prepared(None, "", req, grid, 0.5, cfg.video_token_id))
    lens = [p.request.prompt_ids.numel() for p in prepared]
    assert len(set(lens)) == 3, lens
    return policy, prepared


def _close(a, b):
    return torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)


def test_mixed_prompt_lengths_in_one_batch_equal_each_prompt_alone(setup):
    policy, prepared = setup
    reqs = [p.request for p in prepared]
    free = SamplingParams(n=2, temperature=0.0, max_new_tokens=10)
    alone = [NativeRolloutEngine(policy).generate([r], free)[0] for r in reqs]
    # stop on prompt 0's first token: its rows leave the batch after one step while the other rows decode on
    stop = alone[0].token_ids[0][0]
    assert all(stop not in ids for o in alone[1:] for ids in o.token_ids)
    sp = SamplingParams(n=2, temperature=0.0, max_new_tokens=10, stop_token_ids=(stop,))
    alone = [NativeRolloutEngine(policy).generate([r], sp)[0] for r in reqs]
    batched = NativeRolloutEngine(policy).generate(reqs, sp)
    assert len({len(o.token_ids[0]) for o in batched}) > 1  # some rows finished while others decoded on
    assert batched[0].finished == [True, True]
    for a, b in zip(alone, batched):
        assert b.token_ids == a.token_ids
        assert b.finished == a.finished
        for x, y in zip(a.logprobs, b.logprobs):
            assert _close(y, x)


def test_mixed_prompt_lengths_logprobs_equal_trainer_recompute(setup):
    policy, prepared = setup
    engine = NativeRolloutEngine(policy, seed=0)
    outs = engine.generate([p.request for p in prepared], SamplingParams(n=3, temperature=1.0, max_new_tokens=12,
                                                                        stop_token_ids=tuple(range(20, 60))))
    items = [(p, t) for p, o in zip(prepared, outs) for t in o.token_ids]
    assert len(items) == 9 and len({len(t) for _, t in items}) > 1
    lp, _ = token_logprobs(policy, build_batch(items, 0))
    refs = [r for o in outs for r in o.logprobs]
    for i, ref in enumerate(refs):
        assert torch.allclose(lp[i, :len(ref)], torch.tensor(ref), atol=1e-5), i
        assert float(lp[i, len(ref):].abs().sum()) == 0.0


def test_cache_mask_hides_left_padding_and_keeps_padding_rows_finite():
    cache = KVCache(torch.tensor([0, 2]), capacity=6)
    cache.begin(4)  # prefill: row 1 has 2 padding slots
    m = cache.mask[:, 0]
    assert m.shape == (2, 4, 4) and not cache.causal
    assert torch.equal(m[0], torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    assert m[1].tolist() == [[True, False, False, False], [False, True, False, False],
                             [False, False, True, False], [False, False, True, True]]
    cache.advance(4)
    cache.begin(1)
    assert cache.mask[:, 0, 0].tolist() == [[True] * 5, [False, False, True, True, True]]
    cache.keep(torch.tensor([0]))
    cache.begin(1)
    assert cache.mask is None  # the padded row left: no mask at all
