"""`dvr1 eval` with `eval.engine=vllm` (a colocated vLLM engine started from the evaluated checkpoint) gives the native
sampler's greedy answers, on the tiny checkpoint and 4 records of the smoke set's test split, 8 new tokens each; a
second evaluation in the same process (another checkpoint with the same config, as the main job's RL eval after its
SFT eval) reuses the engine, refitted with that checkpoint's weights, and matches the native answers too.

Positions: vLLM resumes the text after a video at (largest position) + 1, Qwen2.5-VL's original rule; every run sets
`model.mrope_rule=qwen` (the default) so the native sampler uses that rule too (dvr1/models/rope.py) and the answers must
agree token for token on every clip, whatever its length.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.e2e.test_main_job import REPO, SMOKE, dvr1, smoke_data  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

FEW = ["eval.max_samples=4", "eval.max_new_tokens=8", "model.mrope_rule=qwen"]

# both checkpoints evaluated by one process, as run_main does between its stages
TWO_EVALS = """
import sys
from dvr1.config import load_config
from dvr1.train import job

if __name__ == "__main__":
    cfg = load_config(sys.argv[1], sys.argv[4:])
    pinfo = job.init(cfg)
    job.setup_logging()
    job.run_eval(cfg, pinfo, sys.argv[2], "vllm_a")
    job.run_eval(cfg, pinfo, sys.argv[3], "vllm_b")
"""


def _perturbed_copy(src, dst):
    """`src` with every weight moved by noise of 0.3x its own scale: same config.json, other answers."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    g = torch.Generator().manual_seed(1)
    w = load_file(os.path.join(src, "model.safetensors"))
    save_file({k: v + 0.3 * v.float().std().nan_to_num(0.0) * torch.randn(v.shape, generator=g).to(v.dtype)
               if v.is_floating_point() and v.numel() > 1 else v for k, v in w.items()},
              os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return str(dst)


def test_eval_with_vllm_gives_the_native_greedy_answers(smoke_data):
    root, data = smoke_data
    run = root / "prep"  # the module's tiny checkpoint lives here
    common = ["-c", SMOKE, f"data.root={data}", f"run_dir={run}"]
    tiny = dvr1("make-tiny", *common).stdout.strip().splitlines()[-1]
    other = _perturbed_copy(tiny, root / "tiny_perturbed")
    logs = {}
    for name, model in (("native_a", tiny), ("native_b", other)):
        logs[name] = dvr1("eval", "--model", model, "--name", name, *common, *FEW, "eval.engine=native").stderr
    script = root / "two_evals.py"
    script.write_text(TWO_EVALS)
    env = dict(os.environ, PYTHONPATH=REPO, WANDB_MODE="disabled")
    p = subprocess.run([sys.executable, str(script), SMOKE, tiny, other, f"data.root={data}", f"run_dir={run}", *FEW,
                        "eval.engine=vllm"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-6000:]
    assert not any("vllm: engine up" in t for t in logs.values())
    assert p.stderr.count("vllm: engine up") == 1 and "vllm: reusing this process's engine" in p.stderr
    res = {k: json.loads((run / f"eval_{k}.json").read_text()) for k in ("native_a", "native_b", "vllm_a", "vllm_b")}
    answers = {k: [(s["id"], s["response"]) for s in r["samples"]] for k, r in res.items()}
    assert answers["native_a"] != answers["native_b"]  # the perturbed weights answer otherwise
    for model in ("a", "b"):
        native, vllm = res[f"native_{model}"], res[f"vllm_{model}"]
        assert native["n"] == vllm["n"] == 4
        assert any(s["response"] for s in native["samples"])  # the random tiny model does answer something
        assert answers[f"vllm_{model}"] == answers[f"native_{model}"], model
        for key in ("accuracy", "format", "mean_iou", "per_task"):
            assert vllm[key] == native[key], (model, key)
