"""The megatron-core policy against Hugging Face's Qwen2_5_VLForConditionalGeneration on tiny checkpoints.

Real numbers only: logits equal (fp32, <= 1e-4) on the same video + text input -- with transformers' own positions
where the two mrope rules agree, and with Qwen2.5-VL's original positions (tests/unit/test_rope.py's plain reference)
passed to HF's model where they do not; the KV-cache decode equals the full forward; the transformers5 rule equals
transformers' get_rope_index; HF -> megatron -> HF is bit-identical; the native rollout's log-probs equal the
trainer's recomputation on the same sequences (same positions, same mask).
"""

import numpy as np
import pytest
import torch

from dvr1.data.processing import normalize_frames, num_video_tokens, patchify
from dvr1.models.qwen2_5_vl import Qwen25VLPolicy, load_hf_config, load_hf_weights
from dvr1.models.safetensors_io import SafetensorsFiles
from dvr1.models.rope import get_rope_index
from dvr1.models.tiny import make_tiny_checkpoint
from dvr1.models.tokenizer import chat_prompt

TEXTS = ["Is this video played forward or in reverse? A. forward B. reversed <think>I look.</think><answer>A</answer>"] * 20

VARIANTS = {
    # name: (tie_word_embeddings, text overrides)
    "tied_gqa2": (True, {}),
    "untied_gqa1": (False, {"num_key_value_heads": 4, "mrope_section": [8, 4, 4]}),
    "tied_gqa4": (True, {"num_key_value_heads": 1, "num_hidden_layers": 2, "mrope_section": [2, 7, 7]}),
    # a fast-turning tiny RoPE (model.tiny_rope_theta / tiny_mrope_section; the main job used base 10 until
    # 2026-12-02, now 1e4: between this and the default)
    "theta10": (True, {"rope_theta": 10.0, "mrope_section": [2, 4, 10]}),
}


@pytest.fixture(scope="module")
def parallel():
    from dvr1.parallel.setup import init_parallel

    return init_parallel(tp=1, pp=1, seed=1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, parallel):
    out = {}
    for name, (tie, text) in VARIANTS.items():
        out[name] = make_tiny_checkpoint(str(tmp_path_factory.mktemp(name)), TEXTS, seed=3, vocab_size=400,
                                         tie_word_embeddings=tie, text=text)
    return out


def _video_inputs(seed=0, frames=6, h=90, w=120):
    g = np.random.default_rng(seed)
    video = normalize_frames(g.integers(0, 256, (frames, h, w, 3), dtype=np.uint8), max_pixels=112 * 112)
    pv, grid = patchify(video)
    return pv, grid.view(1, 3)


def _ids(hf_cfg, grid, seed=0, pre=7, post=15):
    g = torch.Generator().manual_seed(seed)
    n = num_video_tokens(grid[0])
    return torch.cat([torch.randint(20, 380, (pre,), generator=g),
                      torch.tensor([hf_cfg.vision_start_token_id] + [hf_cfg.video_token_id] * n + [hf_cfg.vision_end_token_id]),
                      torch.randint(20, 380, (post,), generator=g)]).view(1, -1)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_equal_hugging_face(checkpoints, variant):
    from transformers import Qwen2_5_VLForConditionalGeneration

    path = checkpoints[variant]
    cfg = load_hf_config(path)
    policy = Qwen25VLPolicy(cfg)
    load_hf_weights(policy, path)
    policy.eval()
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    pv, grid = _video_inputs()
    ids = _ids(cfg, grid)
    spg = torch.tensor([0.5])
    pos = get_rope_index(ids, cfg.video_token_id, grid, spg, cfg.vision_config.spatial_merge_size,
                         cfg.vision_config.tokens_per_second)  # the default, Qwen2.5-VL's original rule
    # HF's model computes transformers 5.19's positions itself: compare only where the two rules agree
    assert torch.equal(pos, get_rope_index(ids, cfg.video_token_id, grid, spg, 2, 2, "transformers5"))
    mm = (ids == cfg.video_token_id).int() * 2
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values_videos=pv, video_grid_thw=grid, second_per_grid_ts=spg,
                 mm_token_type_ids=mm).logits
        out = policy(ids, pos, pixel_values_videos=pv, video_grid_thw=grid)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-4, rtol=0), (out - ref).abs().max()


def test_rope_index_equals_hugging_face(checkpoints):
    """The transformers5 rule is transformers 5.19's get_rope_index; the default (qwen) rule equals it exactly where
    the video's temporal positions stay within its spatial extent (the first case), and not otherwise."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    path = checkpoints["tied_gqa2"]
    cfg = load_hf_config(path)
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    for i, (frames, h, w, spg) in enumerate([(4, 56, 56, 0.25), (8, 112, 84, 1.0), (6, 84, 112, 2.0)]):
        _, grid = _video_inputs(i, frames, h, w)
        ids = _ids(cfg, grid, seed=i, pre=3 + i, post=5)
        tps = cfg.vision_config.tokens_per_second
        pos = get_rope_index(ids, cfg.video_token_id, grid, [spg], 2, tps, "transformers5")
        ref, _ = hf.model.get_rope_index(ids, (ids == cfg.video_token_id).int() * 2, None, grid, torch.tensor([spg]))
        assert torch.equal(pos, ref), (frames, h, w, spg)
        assert torch.equal(get_rope_index(ids, cfg.video_token_id, grid, [spg], 2, tps), ref) == (i == 0)


def test_logits_under_the_original_rule_equal_hugging_face_given_those_positions(checkpoints):
    """Where the rules disagree (8 frames at 1 s per grid step: temporal 0, 2, 4, 6 past the spatial 0..3), the
    policy with its default positions equals HF's network fed Qwen2.5-VL's original positions from the independent
    plain implementation (tests/unit/test_rope.py) -- and differs from HF with HF's own (transformers 5.19) ones."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from tests.unit.test_rope import reference_qwen

    path = checkpoints["untied_gqa1"]  # mrope_section [8, 4, 4]: the temporal section is the widest
    cfg = load_hf_config(path)
    policy = Qwen25VLPolicy(cfg)
    load_hf_weights(policy, path)
    policy.eval()
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    pv, grid = _video_inputs(1, 8, 112, 84)
    ids = _ids(cfg, grid, seed=1, pre=4, post=9)
    ref_pos = torch.tensor(reference_qwen(ids[0].tolist(), [tuple(grid[0].tolist())], [1.0], 2,
                                          cfg.video_token_id)).view(3, 1, -1)
    pos = get_rope_index(ids, cfg.video_token_id, grid, [1.0], 2, 2)
    assert torch.equal(pos, ref_pos)
    mm = (ids == cfg.video_token_id).int() * 2
    with torch.no_grad():
        out = policy(ids, pos, pixel_values_videos=pv, video_grid_thw=grid)
        ref = hf(input_ids=ids, pixel_values_videos=pv, video_grid_thw=grid, position_ids=ref_pos,
                 mm_token_type_ids=mm).logits
        own = hf(input_ids=ids, pixel_values_videos=pv, video_grid_thw=grid, second_per_grid_ts=torch.tensor([1.0]),
                 mm_token_type_ids=mm).logits
    assert torch.allclose(out, ref, atol=1e-4, rtol=0), (out - ref).abs().max()
    n_video = int(mm.bool().sum()) + 5  # prompt up to and including the video (and <|vision_end|>) agrees
    assert torch.allclose(out[:, :n_video], own[:, :n_video], atol=1e-4, rtol=0)
    assert (out[:, n_video + 1:] - own[:, n_video + 1:]).abs().max() > 1e-3


def test_rope_index_qwen_rule_resumes_after_the_largest_position():
    """rule="qwen" (Qwen2.5-VL's original code, vLLM): text after the video starts at max + 1; equal to the
    transformers5 rule (start + max(H, W)/merge) while the temporal positions stay within the spatial extent."""
    ids = torch.tensor([[9, 9] + [6] * 24 + [9, 9, 9]])  # grid (4, 4, 6): 4 steps x (2 x 3) merged = 24 tokens
    grid = torch.tensor([[4, 4, 6]])
    # 0.25 s/step at 2 tokens/s: temporal 0, 0, 1, 1 -> max position 2 + 2 = 4 (width): both resume at 5
    # 0.75 s/step: temporal 0, 1, 3, 4 -> max position 6: qwen resumes at 7, transformers at 2 + 6/2 = 5
    for spg, resume_tf, resume_qwen in ((0.25, 5, 5), (0.75, 5, 7)):
        tf = get_rope_index(ids, 6, grid, [spg], 2, 2, "transformers5")[:, 0]
        qw = get_rope_index(ids, 6, grid, [spg], 2, 2, "qwen")[:, 0]
        assert torch.equal(tf[:, :26], qw[:, :26])  # identical up to the end of the video
        assert tf[:, 26:].tolist() == [[resume_tf, resume_tf + 1, resume_tf + 2]] * 3
        assert qw[:, 26:].tolist() == [[resume_qwen, resume_qwen + 1, resume_qwen + 2]] * 3
        assert int(qw[:, 2:26].max()) + 1 == resume_qwen
    assert torch.equal(get_rope_index(ids, 6, grid, [0.75], 2, 2), get_rope_index(ids, 6, grid, [0.75], 2, 2, "qwen"))
    with pytest.raises(ValueError, match="mrope rule 'vllm': must be one of qwen, transformers5"):
        get_rope_index(ids, 6, grid, [1.0], 2, 2, "vllm")


def test_sequence_parallel_policy_pads_merges_and_returns_unpadded_shapes(checkpoints):
    """A TP=2 + SP config in one process (TP group of 1, so the SP scatter/gather are identities; the TP=2 numbers are
    tests/distributed/test_rl_step_parallel.py's): an odd-length video sequence runs padded to a multiple of 2,
    with the video merged before the scatter, and logits / hidden states of the real length equal the plain
    policy's bit for bit (causal: the padding after the last token changes nothing before it). The local norms
    carry megatron's SP mark; `sequence_parallel_off` turns SP off for no-grad decoding and back on."""
    path = checkpoints["tied_gqa2"]
    cfg = load_hf_config(path)
    plain, sp = Qwen25VLPolicy(cfg), Qwen25VLPolicy(cfg, tp=2, sequence_parallel=True)
    for p in (plain, sp):
        load_hf_weights(p, path)
    pv, grid = _video_inputs()
    ids = _ids(cfg, grid, post=16)
    assert ids.shape[1] % 2 == 1 and sp.padded_seq_len(ids.shape[1]) == ids.shape[1] + 1
    assert plain.padded_seq_len(ids.shape[1]) == ids.shape[1]
    pos = get_rope_index(ids, cfg.video_token_id, grid, [1.0], 2, 2)
    with torch.no_grad():
        emb = plain.encode_video(pv, grid)
        for hidden in (False, True):
            want = plain(ids, pos, video_embeds=emb, return_hidden=hidden)
            got = sp(ids, pos, video_embeds=emb, return_hidden=hidden)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    norms = [n for n, p in sp.lm.named_parameters() if "layernorm" in n]
    assert len(norms) == 2 * cfg.text_config.num_hidden_layers + 1
    assert all(getattr(p, "sequence_parallel", False) for n, p in sp.lm.named_parameters() if n in norms)
    with pytest.raises(RuntimeError, match=r"sequence_parallel_off\(\) is for no-grad use"):
        with sp.sequence_parallel_off():
            pass
    with torch.no_grad(), sp.sequence_parallel_off():
        assert not sp.config.sequence_parallel and sp.padded_seq_len(ids.shape[1]) == ids.shape[1]
    assert sp.config.sequence_parallel and sp.lm.decoder.config.sequence_parallel


def test_rope_index_rejects_mismatched_grid(checkpoints):
    cfg = load_hf_config(checkpoints["tied_gqa2"])
    pv, grid = _video_inputs()
    ids = _ids(cfg, grid)
    with pytest.raises(ValueError, match="video tokens"):
        get_rope_index(ids, cfg.video_token_id, torch.tensor([[2, 4, 4]]), [1.0], 2, 2)


def test_hf_megatron_hf_round_trip_is_bit_identical(checkpoints):
    from dvr1.models.export import state_for_hf

    for variant in VARIANTS:
        path = checkpoints[variant]
        policy = Qwen25VLPolicy(load_hf_config(path))
        load_hf_weights(policy, path)
        back = state_for_hf(policy)
        reader = SafetensorsFiles(path)
        assert set(back) == set(reader.keys()), set(back) ^ set(reader.keys())
        for k in back:
            assert torch.equal(back[k], reader.get(k)), k


def test_kv_cache_decode_equals_full_forward(checkpoints):
    from megatron.core.inference.contexts import StaticInferenceContext

    from dvr1.models.rope import continue_positions

    path = checkpoints["tied_gqa2"]
    cfg = load_hf_config(path)
    policy = Qwen25VLPolicy(cfg)
    load_hf_weights(policy, path)
    policy.eval()
    pv, grid = _video_inputs()
    ids = _ids(cfg, grid).repeat(2, 1)
    L, extra = ids.shape[1], torch.randint(20, 380, (2, 5))
    pos = get_rope_index(ids, cfg.video_token_id, grid.repeat(2, 1), [0.5, 0.5], 2, 2)
    pos = torch.cat([pos, continue_positions(pos[:, :, -1:], 5)], 2)
    ve = policy.encode_video(pv, grid).repeat(2, 1)
    full = torch.cat([ids, extra], 1)
    with torch.no_grad():
        ref = policy(full, pos, video_embeds=ve)
        ctx = StaticInferenceContext(2, L + 5)
        out = policy(ids, pos[:, :, :L], video_embeds=ve, inference_context=ctx, runtime_gather_output=True)
        assert torch.allclose(out[:, -1], ref[:, L - 1], atol=1e-5)
        ctx.sequence_len_offset += L
        for k in range(5):
            out = policy(full[:, L + k:L + k + 1], pos[:, :, :L + k + 1], inference_context=ctx,
                         runtime_gather_output=True)
            ctx.sequence_len_offset += 1
            assert torch.allclose(out[:, -1], ref[:, L + k], atol=1e-5), k


def test_native_rollout_logprobs_equal_trainer_recompute(checkpoints):
    """Rollout and training see the same sequence the same way: engine log-probs == token_logprobs(...)."""
    from transformers import AutoTokenizer

    from dvr1.rollout.base import RolloutRequest, SamplingParams
    from dvr1.rollout.native import NativeRolloutEngine
    from dvr1.train.inputs import Prepared, build_batch, token_logprobs

    path = checkpoints["tied_gqa2"]
    cfg = load_hf_config(path)
    tok = AutoTokenizer.from_pretrained(path)
    policy = Qwen25VLPolicy(cfg)
    load_hf_weights(policy, path)
    pv, grid = _video_inputs()
    prompt = chat_prompt("Is this video played forward?", num_video_tokens(grid[0]))
    ids = torch.tensor(tok(prompt)["input_ids"])
    pos = get_rope_index(ids.view(1, -1), cfg.video_token_id, grid, [0.5], 2, 2)[:, 0]
    req = RolloutRequest(ids, pos, video_embeds=policy.encode_video(pv, grid))
    engine = NativeRolloutEngine(policy, seed=0)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    out = engine.generate([req], SamplingParams(n=4, temperature=1.0, max_new_tokens=12, stop_token_ids=(eos,)))[0]
    assert len(out.token_ids) == 4 and all(1 <= len(t) <= 12 for t in out.token_ids)
    prep = Prepared(None, "", req, grid, 0.5, cfg.video_token_id)
    batch = build_batch([(prep, t) for t in out.token_ids], tok.convert_tokens_to_ids("<|endoftext|>"))
    lp, _ = token_logprobs(policy, batch)
    for i, ref in enumerate(out.logprobs):
        assert torch.allclose(lp[i, :len(ref)], torch.tensor(ref), atol=1e-5)
        assert float(lp[i, len(ref):].abs().sum()) == 0.0
    # greedy is deterministic and equals the argmax continuation
    g1 = engine.generate([req], SamplingParams(n=2, temperature=0.0, max_new_tokens=6))[0]
    assert g1.token_ids[0] == g1.token_ids[1]


def test_batched_forward_of_different_prompts_equals_row_by_row(checkpoints):
    """Video features land in their own row (regression: a [seq, batch]-order scatter mixed rows of a batch)."""
    path = checkpoints["tied_gqa2"]
    cfg = load_hf_config(path)
    policy = Qwen25VLPolicy(cfg)
    load_hf_weights(policy, path)
    policy.eval()
    rows, embeds, positions = [], [], []
    for i in range(3):
        pv, grid = _video_inputs(i)
        ids = _ids(cfg, grid, seed=i, pre=2 + 3 * i, post=4)
        rows.append(ids)
        embeds.append(policy.encode_video(pv, grid))
        positions.append(get_rope_index(ids, cfg.video_token_id, grid, [0.5], 2, 2))
    S = max(r.shape[1] for r in rows)
    ids = torch.cat([torch.nn.functional.pad(r, (0, S - r.shape[1])) for r in rows])
    pos = torch.cat([torch.nn.functional.pad(p, (0, S - p.shape[2]), mode="replicate") for p in positions], dim=1)
    with torch.no_grad():
        batched = policy(ids, pos, video_embeds=torch.cat(embeds))
        for i, r in enumerate(rows):
            single = policy(r, positions[i], video_embeds=embeds[i])
            assert torch.allclose(batched[i, : r.shape[1]], single[0], atol=1e-5), i
