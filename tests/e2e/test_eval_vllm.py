"""`dvr1 eval` with `eval.engine=vllm` (a colocated vLLM engine started from the evaluated checkpoint) gives the native
sampler's greedy answers, on the tiny checkpoint and 4 records of the smoke set's test split, 8 new tokens each.

Positions: vLLM resumes the text after a video at (largest position) + 1, Qwen2.5-VL's original rule; both runs set
`model.mrope_after_video=qwen` so the native sampler uses that rule too (dvr1/models/rope.py) and the answers must
agree token for token on every clip, whatever its length.
"""

import json

import pytest

from tests.e2e.test_main_job import SMOKE, dvr1, smoke_data  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e


def test_eval_with_vllm_gives_the_native_greedy_answers(smoke_data):
    root, data = smoke_data
    run = root / "prep"  # the module's tiny checkpoint lives here
    common = ["-c", SMOKE, f"data.root={data}", f"run_dir={run}"]
    tiny = dvr1("make-tiny", *common).stdout.strip().splitlines()[-1]
    few = ["eval.max_samples=4", "eval.max_new_tokens=8", "model.mrope_after_video=qwen"]
    results, logs = {}, {}
    for engine in ("native", "vllm"):
        p = dvr1("eval", "--model", tiny, "--name", engine, *common, *few, f"eval.engine={engine}")
        results[engine] = json.loads((run / f"eval_{engine}.json").read_text())
        logs[engine] = p.stderr
    assert "vllm: engine up" in logs["vllm"] and "vllm: engine up" not in logs["native"]
    native, vllm = results["native"], results["vllm"]
    assert native["n"] == vllm["n"] == 4
    assert any(s["response"] for s in native["samples"])  # the random tiny model does answer something
    assert [(s["id"], s["response"]) for s in vllm["samples"]] == [(s["id"], s["response"]) for s in native["samples"]]
    for key in ("accuracy", "format", "mean_iou", "per_task"):
        assert vllm[key] == native[key], key
