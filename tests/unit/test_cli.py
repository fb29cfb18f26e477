"""`dvr1` command-line plumbing that no other test covers."""

import torch

from dvr1 import cli
from dvr1.train import job


def test_make_tiny_runs_at_the_configured_threads(monkeypatch, tmp_path):
    # `dvr1 make-tiny` did not apply `threads`: at torch's default (one per core) its vision warm-up, spawned beside
    # the LM's with the parent's thread count, put 2 x cores threads on the cores (16 minutes on 2 cores, against the
    # main job's 8)
    seen = {}
    monkeypatch.setattr(job, "ensure_data", lambda cfg: None)
    monkeypatch.setattr(job, "ensure_model", lambda cfg: seen.setdefault("threads", torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        want = before + 1
        assert cli.main(["make-tiny", f"run_dir={tmp_path}", f"threads={want}"]) == 0
        assert seen["threads"] == want
    finally:
        torch.set_num_threads(before)
