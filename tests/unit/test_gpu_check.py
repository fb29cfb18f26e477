"""tools/gpu_check.sh on a machine without a GPU: it runs to its end with every GPU row reporting "no GPU"; with
--cpu-smoke every row's code runs on the CPU (the device is the only difference from a GPU run) and the CUDA-vs-CPU
comparison machinery gives exact zeros for CPU fp32 against itself and bf16 within bf16 tolerance."""

import json
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
