"""dvr1/models/rope.py against independent implementations of Qwen2.5-VL's mrope positions.

- Qwen2.5-VL's original rule ("qwen", the default): a plain per-token implementation written here from the upstream
  description (the original transformers port, 4.49-5.2 ``Qwen2_5_VLModel.get_rope_index``: text continues 1-D;
  a video's token (i, j, k) at (s + floor(i · second_per_grid · tokens_per_second), s + j, s + k) with s the position
  after the preceding text; the text after a video starts at "the max vision position_ids plus 1"), and vLLM 0.32's
  own ``Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions`` on the same token list.
- transformers 5.19's rule ("transformers5"): transformers' own ``get_rope_index``.
Cases: several videos per row, text before / between / after them, temporal positions running past the spatial
ones, seconds per grid step below and above 1 s (including 0.7 s, where float32 arithmetic lands a step lower).
"""

import math
import types

import pytest
import torch

from dvr1.models.rope import RULES, continue_positions, get_rope_index

VIDEO = 6  # the video token id used below
MERGE = 2


def reference_qwen(tokens: list[int], grids: list[tuple[int, int, int]], spgs: list[float], tps: float,
                   video: int = VIDEO):
    """Qwen2.5-VL's original positions, token by token (module docstring); each run of `video` tokens is one video.
    Returns a [3, len] list of lists."""
    out, nxt, i, v = [[], [], []], 0, 0, 0
    while i < len(tokens):
        if tokens[i] != video:
            for c in out:
                c.append(nxt)
            nxt, i = nxt + 1, i + 1
            continue
        t, h, w = grids[v][0], grids[v][1] // MERGE, grids[v][2] // MERGE
        s, top = nxt, nxt
        for a in range(t):
            for b in range(h):
                for c in range(w):
                    p = (s + math.floor(a * (spgs[v] * tps)), s + b, s + c)
                    for k in range(3):
                        out[k].append(p[k])
                    top = max(top, *p)
        nxt, i, v = top + 1, i + t * h * w, v + 1
    return out


def _row(texts: list[int], grids) -> list[int]:
    """texts[0] text tokens, video 0, texts[1] text tokens, video 1, ..., texts[-1] text tokens."""
    row = []
    for k, n in enumerate(texts):
        row += list(range(10, 10 + n))
        if k < len(grids):
            t, h, w = grids[k]
            row += [VIDEO] * (t * h * w // MERGE**2)
    return row


CASES = [
    # (text lengths around the videos, grids (t, h, w) in patches, seconds per grid step)
    ([3, 4], [(4, 4, 6)], [0.25]),  # temporal 0, 0, 1, 1: within the spatial extent, the rules agree
    ([3, 4], [(4, 4, 6)], [0.75]),  # temporal 0, 1, 3, 4 past the spatial 0..2
    ([0, 2], [(6, 4, 6)], [0.7]),  # video first; temporal 0, 1, 2, 4, 5, 7 (float32 would give 6 at step 5)
    ([2, 3, 1], [(3, 8, 4), (5, 2, 2)], [2.0, 0.5]),  # two videos, text between; the first runs to 8, spatial 0..3
    ([5, 0, 3], [(2, 4, 4), (4, 6, 2)], [1.0, 1.5]),  # (a text token goes between: back to back they are one run)
    ([1, 6, 2, 4], [(2, 2, 2), (8, 4, 4), (1, 6, 6)], [0.5, 1.25, 1.0]),  # three videos
]


def _case(texts, grids, spgs):
    if len(texts) > 2 and 0 in texts[1:-1]:  # keep each video its own run (Qwen's template wraps each one)
        texts = [n or 1 for n in texts]
    return _row(texts, grids), grids, spgs


@pytest.mark.parametrize("tps", [2, 25])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_qwen_rule_equals_plain_reference(case, tps):
    tokens, grids, spgs = _case(*CASES[case])
    pos = get_rope_index(torch.tensor([tokens]), VIDEO, torch.tensor(grids), spgs, MERGE, tps)  # default rule
    assert pos[:, 0].tolist() == reference_qwen(tokens, grids, spgs, tps)


def test_batch_rows_are_independent_and_padding_continues():
    """Right-padded batch: a text-only row, a one-video row and a two-video row; grids are consumed in row order."""
    rows = [_row([7], []), _row([3, 4], [(4, 4, 6)]), _row([2, 3, 1], [(3, 8, 4), (5, 2, 2)])]
    grids, spgs = [(4, 4, 6), (3, 8, 4), (5, 2, 2)], [0.75, 2.0, 0.5]
    S = max(map(len, rows)) + 3
    ids = torch.tensor([r + [0] * (S - len(r)) for r in rows])
    pos = get_rope_index(ids, VIDEO, torch.tensor(grids), spgs, MERGE, 2)
    assert pos[:, 0].tolist() == [list(range(S))] * 3
    for i, (r, g, sp) in enumerate([(rows[1], grids[:1], spgs[:1]), (rows[2], grids[1:], spgs[1:])], start=1):
        ref = reference_qwen(r + [0] * (S - len(r)), g, sp, 2)
        assert pos[:, i].tolist() == ref


def test_qwen_rule_equals_vllm():
    """vLLM 0.32's own position code (what the colocated engine samples with) on the same expanded token lists."""
    pytest.importorskip("vllm")
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration as V

    for tps in (2, 25):
        fake = types.SimpleNamespace(config=types.SimpleNamespace(
            vision_config=types.SimpleNamespace(spatial_merge_size=MERGE, tokens_per_second=tps)))
        fake.iter_mm_grid_thw = types.MethodType(V.iter_mm_grid_thw, fake)
        for case in CASES:
            tokens, grids, spgs = _case(*case)
            starts = [i for i, t in enumerate(tokens) if t == VIDEO and (i == 0 or tokens[i - 1] != VIDEO)]
            feats = [types.SimpleNamespace(
                modality="video", mm_position=types.SimpleNamespace(offset=o),
                data={"video_grid_thw": types.SimpleNamespace(data=torch.tensor(g)),
                      "second_per_grid_ts": types.SimpleNamespace(data=torch.tensor(s, dtype=torch.float64))})
                for o, g, s in zip(starts, grids, spgs)]
            theirs, delta = V.get_mrope_input_positions(fake, tokens, feats)
            ours = get_rope_index(torch.tensor([tokens]), VIDEO, torch.tensor(grids), spgs, MERGE, tps)[:, 0]
            assert torch.equal(ours, theirs.long()), (case, tps)
            # vLLM decodes at len + delta = max + 1: where continue_positions puts the first response token
            assert int(continue_positions(ours[:, -1:].view(3, 1, 1), 1)[0, 0, 0]) == len(tokens) + delta


def test_transformers5_rule_equals_transformers():
    """The explicitly named transformers5 rule is transformers 5.19's get_rope_index, several videos included."""
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    model = types.SimpleNamespace(config=Qwen2_5_VLConfig(vision_config={"spatial_merge_size": MERGE,
                                                                         "tokens_per_second": 2}))
    model.get_vision_position_ids = types.MethodType(Qwen2_5_VLModel.get_vision_position_ids, model)
    for case in CASES:
        tokens, grids, spgs = _case(*case)
        ids = torch.tensor([tokens])
        ref, _ = Qwen2_5_VLModel.get_rope_index(model, ids, (ids == VIDEO).int() * 2, None, torch.tensor(grids),
                                                torch.tensor(spgs))
        assert torch.equal(get_rope_index(ids, VIDEO, torch.tensor(grids), spgs, MERGE, 2, "transformers5"), ref)


def test_rules_differ_exactly_when_temporal_positions_pass_the_spatial_extent():
    for case in CASES:
        tokens, grids, spgs = _case(*case)
        ids = torch.tensor([tokens])
        q, t = (get_rope_index(ids, VIDEO, torch.tensor(grids), spgs, MERGE, 2, r) for r in RULES)
        past = any(math.floor((g[0] - 1) * s * 2) >= max(g[1], g[2]) // MERGE for g, s in zip(grids, spgs))
        assert torch.equal(q, t) == (not past), case
        first = tokens.index(VIDEO)
        assert torch.equal(q[:, :, :first + 1], t[:, :, :first + 1])  # the first video itself never differs


def test_bad_inputs():
    ids = torch.tensor([_row([2, 2], [(2, 4, 4)])])
    with pytest.raises(ValueError) as e:
        get_rope_index(ids, VIDEO, torch.tensor([[2, 4, 4]]), [1.0], MERGE, 2, "transformers")
    assert str(e.value) == "mrope rule 'transformers': must be one of qwen, transformers5 (model.mrope_rule)"
    with pytest.raises(ValueError) as e:
        get_rope_index(ids, VIDEO, torch.tensor([[2, 4, 2]]), [1.0], MERGE, 2)
    assert str(e.value) == "row 0: 8 video tokens in [2, 10) but grid [2, 4, 2] needs 4"
    with pytest.raises(ValueError) as e:
        get_rope_index(torch.tensor([_row([1, 1, 1], [(2, 2, 2), (2, 2, 2)])]), VIDEO, torch.tensor([[2, 2, 2]]),
                       [1.0], MERGE, 2)
    assert str(e.value) == "row 0: video token run [4, 6) has no grid (video_grid_thw has 1)"


def test_exported_checkpoint_remembers_its_rule(tmp_path, parallel_state_1):
    """The rule is part of what a trained checkpoint is: export writes it to config.json, and building a policy
    from that checkpoint under the other rule is refused (a finished SFT stage of a run with another rule, reused
    from the same run_dir, would otherwise be trained with one rule and sampled with the other)."""
    import json

    from dvr1.config import ConfigError, load_config
    from dvr1.models.export import export_hf
    from dvr1.models.tiny import make_tiny_checkpoint
    from dvr1.train import job

    init = make_tiny_checkpoint(str(tmp_path / "init"), ["a b c <think>x</think>"] * 20, seed=0, vocab_size=300,
                                text={"num_hidden_layers": 1})
    cfg = load_config(None, ["log.wandb=false", "model.mrope_rule=transformers5"])
    policy = job.build_policy(cfg, init, parallel_state_1)  # no recorded rule (a released checkpoint): accepted
    assert policy.info.mrope_rule == "transformers5"
    out = export_hf(policy, init, str(tmp_path / "sft"))
    assert json.load(open(f"{out}/config.json"))["dvr1_mrope_rule"] == "transformers5"
    assert job.build_policy(cfg, out, parallel_state_1).info.mrope_rule == "transformers5"
    with pytest.raises(ConfigError) as e:
        job.build_policy(load_config(None, ["log.wandb=false"]), out, parallel_state_1)
    assert str(e.value) == (f"{out}: trained with model.mrope_rule=transformers5, but this run uses "
                            "model.mrope_rule=qwen; pass model.mrope_rule=transformers5, or use another run_dir")
