"""DA-Aug under data parallelism takes the decisions a DP=1 run takes on the same prompts: the reward history holds
the whole global batch's group means, in the DP=1 order, on every rank (docs/ALGORITHMS.md §4)."""

import json
import subprocess
import sys

import pytest

from tests.distributed.launch import REPO, SCRIPTS, run_torchrun

pytestmark = pytest.mark.distributed
SCRIPT = SCRIPTS / "da_aug_dp.py"


def _single(out):
    out.mkdir()
    subprocess.run([sys.executable, str(SCRIPT), str(out)], cwd=REPO, check=True, capture_output=True,
                   env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    return json.loads((out / "da_aug_dp_rank0.json").read_text())


def test_dp2_decisions_equal_dp1(tmp_path):
    ref = _single(tmp_path / "dp1")
    out = tmp_path / "dp2"
    out.mkdir()
    run_torchrun(SCRIPT, out, timeout=240)
    ranks = [json.loads((out / f"da_aug_dp_rank{r}.json").read_text()) for r in range(2)]
    assert ref["dp"] == 1 and [r["dp"] for r in ranks] == [2, 2]
    for step, want in ref["steps"].items():
        got = {**ranks[0]["steps"][step], **ranks[1]["steps"][step]}
        assert not ranks[0]["steps"][step].keys() & ranks[1]["steps"][step].keys()  # disjoint DP shards
        assert got == want, step
    kinds = {d[0] for s in ref["steps"].values() for d in s.values()}
    assert {"decrease", "increase"} <= kinds  # the fake rewards exercise both directions
    assert ranks[0]["history"] == ranks[1]["history"] == ref["history"]  # the run's history, on every rank
