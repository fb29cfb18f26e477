"""`dvr1` command-line plumbing that no other test covers."""

import torch

from dvr1 import cli
from dvr1.parallel import setup
from dvr1.train import job


def test_make_tiny_runs_at_the_configured_threads(monkeypatch, tmp_path):
    # `dvr1 make-tiny` did not apply `threads`: at torch's default (one per core) its vision warm-up, spawned beside
    # the LM's with the parent's thread count, put 2 x cores threads on the cores (16 minutes on 2 cores, against the
    # main job's 8)
    seen = {}
    monkeypatch.setattr(setup, "cpu_cores", lambda: 64)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(job, "ensure_data", lambda cfg: None)
    monkeypatch.setattr(job, "ensure_model", lambda cfg: seen.setdefault("threads", torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        want = before + 1
        assert cli.main(["make-tiny", f"run_dir={tmp_path}", f"threads={want}"]) == 0
        assert seen["threads"] == want
    finally:
        torch.set_num_threads(before)


def test_threads_are_lowered_to_the_process_share_of_the_cores(monkeypatch, tmp_path):
    # `torchrun --nproc-per-node 2 ... examples/tiny_cpu.yaml` (threads: 2) on 2 cores: 1 thread per process, not 4
    # OpenMP threads waiting for 2 cores
    seen, logged = [], []
    monkeypatch.setattr(setup, "cpu_cores", lambda: 2)
    monkeypatch.setattr(job.log, "info", lambda msg, *args: logged.append(msg % args))
    monkeypatch.setattr(job, "ensure_data", lambda cfg: None)
    monkeypatch.setattr(job, "ensure_model", lambda cfg: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        for local, threads in (("2", "2"), ("1", "2"), ("4", "3"), ("1", "5")):
            monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
            assert cli.main(["make-tiny", f"run_dir={tmp_path}", f"threads={threads}"]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2, 1, 2]
    assert [m for m in logged if m.startswith("threads=")] == [
        "threads=2: 1 per process (2 cores, LOCAL_WORLD_SIZE=2)", "threads=3: 1 per process (2 cores, LOCAL_WORLD_SIZE=4)",
        "threads=5: 2 per process (2 cores, LOCAL_WORLD_SIZE=1)"]
