"""The main job end to end at smoke size, as a user runs it (`python -m dvr1.cli ...` in a subprocess).

- `dvr1 main` finishes with a corrupt video, a missing video and a malformed JSONL line in the training set, reports
  each with its path (and line), and leaves metrics, plots, evals, checkpoints and HF exports in one run directory;
- a killed RL stage resumes exactly: 2 steps + resume to 3 gives the same step-3 metrics and final weights as 3
  uninterrupted steps;
- taking the old-policy log-probs from the training pass (rl.reuse_old_logprobs, the default) gives the same metrics
  and weights as the separate old-policy forward pass.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "examples", "smoke.yaml")

pytestmark = pytest.mark.e2e


def dvr1(*args, check=True):
    env = dict(os.environ, PYTHONPATH=REPO, WANDB_MODE="disabled")
    p = subprocess.run([sys.executable, "-m", "dvr1.cli", *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"dvr1 {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    dvr1("data", "-c", SMOKE, f"data.root={data}", f"run_dir={root / 'prep'}")
    return root, data


def test_main_job_survives_bad_inputs_and_leaves_a_complete_run_dir(smoke_data):
    root, clean = smoke_data
    data = root / "data_bad"
    shutil.copytree(clean, data)
    train = data / "train.jsonl"
    lines = train.read_text().splitlines()
    first, second = json.loads(lines[0]), json.loads(lines[1])
    with open(data / first["video"], "wb") as f:  # corrupt: garbage bytes where a WebM was
        f.write(b"\x1a\x45\xdf\xa3 this is not a video" * 10)
    os.remove(data / second["video"])  # missing
    lines.insert(2, '{"id": "broken", "video": ')  # malformed JSON on line 3
    train.write_text("\n".join(lines) + "\n")

    run = root / "run"
    # 6 SFT steps x 4 prompts cover every one of the 22 readable records, so the corrupt clip is met for sure
    p = dvr1("main", "-c", SMOKE, f"data.root={data}", f"run_dir={run}", "sft.steps=6")
    log = p.stderr
    assert f"{train}:3: skipped" in log  # malformed line, with file:line
    assert f"{train}:2: skipped" in log and "video" in log  # missing video file reported at read time
    assert f"{data / first['video']}" in log and "skipped record" in log  # corrupt video reported when decoded

    for f in ("config.yaml", "log.txt", "eval_sft.json", "eval_rl.json", "summary.json", "results.md",
              "sft/hf/model.safetensors", "rl/hf/model.safetensors", "rl/ckpt/latest", "metrics/rl.jsonl",
              "metrics/sft.jsonl", "plots/rl_reward.png", "plots/rl_vanishing_advantage.png", "plots/accuracy.png"):
        assert (run / f).exists(), f
    rl = [json.loads(l) for l in (run / "metrics/rl.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rl] == [1, 2]
    for key in ("reward/mean", "vanishing_advantage_ratio", "kl", "rho_mean", "entropy", "grad_norm",
                "time/rollout", "time/train", "tokens_per_s", "aug/frac_up", "aug/frac_down", "response_length"):
        assert key in rl[0], key
    ev = json.loads((run / "eval_rl.json").read_text())
    assert ev["n"] == 12 and 0.0 <= ev["accuracy"] <= 1.0
    assert "acc. after SFT" in p.stdout and "acc. after RL" in p.stdout
    with open(run / "plots/accuracy.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _final_weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "rl" / "hf" / "model.safetensors"))


@pytest.fixture(scope="module")
def sft_init(smoke_data):
    """An SFT model made once in the module's prep run (which has the tiny checkpoint)."""
    root, data = smoke_data
    dvr1("sft", "-c", SMOKE, f"data.root={data}", f"run_dir={root / 'prep'}")
    return str(root / "prep" / "sft" / "hf")


def test_vllm_main_job_makes_the_same_sft_model(smoke_data, sft_init):
    """Issue 16: the SFT stage of `rollout.engine=vllm` (its own tiny checkpoint, same seed) gives the native run's
    SFT model bit for bit, under the same position rule (vLLM plays no part in SFT; one mrope rule for both)."""
    from safetensors.torch import load_file

    root, data = smoke_data
    run = root / "prep_vllm"
    dvr1("sft", "-c", SMOKE, f"data.root={data}", f"run_dir={run}", "rollout.engine=vllm")
    native = load_file(os.path.join(sft_init, "model.safetensors"))
    vllm = load_file(str(run / "sft/hf/model.safetensors"))
    assert native.keys() == vllm.keys() and len(native) > 0
    for k in native:
        assert torch.equal(native[k], vllm[k]), k
    rules = [json.loads(open(os.path.join(d, "config.json")).read())["dvr1_mrope_rule"]
             for d in (sft_init, str(run / "sft/hf"))]
    assert rules == ["qwen", "qwen"]


def _full_and_resumed(root, name, common, init):
    """3 uninterrupted RL steps, and 2 steps + a resume to 3 (the step-2 run's HF export removed, as if killed after
    its checkpoint). Asserts the resume happened and that step 3's metrics and the final weights agree; returns
    (the full run's metrics rows, its final weights, the resumed run's stderr)."""
    full, part = root / f"{name}_full", root / f"{name}_part"
    dvr1("train", *common, f"run_dir={full}", "rl.steps=3", "--init", init)
    dvr1("train", *common, f"run_dir={part}", "rl.steps=2", "--init", init)
    shutil.rmtree(part / "rl" / "hf")
    p = dvr1("train", *common, f"run_dir={part}", "rl.steps=3", "--init", init)
    assert "resumed from step 2" in p.stderr
    a = [json.loads(l) for l in (full / "metrics/rl.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (part / "metrics/rl.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [1, 2, 3]
    for key in ("loss", "reward/mean", "response_length", "kl", "rho_mean", "grad_norm"):
        assert a[2][key] == pytest.approx(b[2][key], rel=1e-6, abs=1e-7), key
    wa, wb = _final_weights(full), _final_weights(part)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
    return a, wa, p.stderr


def test_rl_resume_continues_exactly(smoke_data, sft_init):
    root, data = smoke_data
    common = ["-c", SMOKE, f"data.root={data}", "rl.save_every=1", "da_aug.enabled=true"]
    a, wa, _ = _full_and_resumed(root, "native", common, sft_init)

    # the separate old-policy pass (rl.reuse_old_logprobs=false) computes the same log-probs: same run
    sep = root / "separate"
    dvr1("train", *common, f"run_dir={sep}", "rl.steps=3", "rl.reuse_old_logprobs=false", "--init", sft_init)
    c = [json.loads(l) for l in (sep / "metrics/rl.jsonl").read_text().splitlines()]
    for key in ("loss", "entropy", "reward/mean", "kl", "rho_mean", "grad_norm"):
        assert [r[key] for r in c] == pytest.approx([r[key] for r in a], rel=1e-5, abs=1e-7), key
    wc = _final_weights(sep)
    for k in wa:
        assert torch.allclose(wa[k], wc[k], atol=1e-6), k


def test_rl_resume_with_vllm_continues_exactly(smoke_data, sft_init):
    """rollout.engine=vllm: the resumed stage refits vLLM with the checkpointed policy and continues its per-request
    seed stream, so 2 steps + resume to 3 equal 3 uninterrupted steps."""
    root, data = smoke_data
    common = ["-c", SMOKE, f"data.root={data}", "rl.save_every=1", "rollout.engine=vllm"]
    _, _, stderr = _full_and_resumed(root, "vllm", common, sft_init)
    assert "vllm: engine up" in stderr
