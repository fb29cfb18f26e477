"""Colocated vLLM engine (dvr1/rollout/vllm.py): after optimizer steps and a sync, vLLM equals the trainer; under PP
the stages split a call's prompts and the gathered rollouts equal the unsplit (PP=1) ones.

Runs tests/distributed/scripts/vllm_sync.py under torchrun at TP=1 (one process), TP=2 and PP=2 (two processes over
gloo, vLLM joining the trainer's world with distributed_executor_backend="external_launcher"). The policy trains its
vision tower (model.freeze_vision=false): after the sync vLLM's vision tower equals the trainer's.
"""

import pytest
import torch

from dvr1.models.tiny import make_tiny_checkpoint
from tests.distributed.launch import SCRIPTS, run_torchrun

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vllm")
    return make_tiny_checkpoint(str(path), ["question 0? question 1? describe the motion <think>x</think>"] * 20,
                                seed=0, vocab_size=512)


@pytest.fixture(scope="module")
def ckpt_tiny_rope(tmp_path_factory):
    """A fast-turning tiny RoPE (base 10, mrope [2, 4, 10]; the main job's until 2026-12-02, now base 1e4), which
    vLLM reads from the checkpoint's rope_parameters like the trainer does."""
    path = tmp_path_factory.mktemp("tiny_vllm_rope10")
    return make_tiny_checkpoint(str(path), ["question 0? question 1? describe the motion <think>x</think>"] * 20,
                                seed=0, vocab_size=512, text={"rope_theta": 10.0, "mrope_section": [2, 4, 10]})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ckpt, ckpt_tiny_rope):
    """Each layout's per-rank results, the script run once per layout in this module: ``runs(nproc, tp, pp)``
    (``rope10=True``: on the main job's tiny-RoPE checkpoint)."""
    done = {}

    def get(nproc, tp, pp, rope10=False):
        if (nproc, tp, pp, rope10) not in done:
            out = tmp_path_factory.mktemp(f"vllm_sync_tp{tp}_pp{pp}{'_rope10' if rope10 else ''}")
            run_torchrun(SCRIPTS / "vllm_sync.py", ckpt_tiny_rope if rope10 else ckpt, out, tp, pp, nproc=nproc,
                         timeout=400)
            done[nproc, tp, pp, rope10] = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(nproc)]
        return done[nproc, tp, pp, rope10]

    return get


@pytest.mark.parametrize("nproc,tp,pp,rope10", [(1, 1, 1, False), (2, 2, 1, False), (2, 1, 2, False),
                                                (1, 1, 1, True)], ids=["tp1", "tp2", "pp2", "tp1_rope10"])
def test_vllm_after_sync_equals_trainer(runs, nproc, tp, pp, rope10):
    ranks = runs(nproc, tp, pp, rope10)
    assert sum("vllm_visual_diff" in r for r in ranks) == (nproc if pp == 1 else 1)
    for r in ranks:
        # greedy tokens: vLLM after the sync == the native sampler on the trained policy, on every rank
        assert r["vllm"] == r["native"] == ranks[0]["vllm"]
        # the sync changed what vLLM computes (the two optimizer steps moved the log-probs by far more than 1e-4)
        moved = max(abs(a - b) for x, y in zip(r["vllm_logp"], r["vllm_logp_before"]) for a, b in zip(x, y))
        assert moved > 0.1
        assert r["sent_names"] == r["checkpoint_names"]  # every checkpoint tensor, nothing else
        if "vllm_visual_diff" in r:  # first stage: model.freeze_vision=false trained the tower; the refit carried it
            assert r["tower_moved"] > 1e-3
            assert r["vllm_visual_compared"] >= 15  # norms, biases, patch embedding of both blocks and the merger
            assert r["vllm_visual_diff"] == 0.0  # vLLM holds the trained tower's values ...
            assert r["vllm_visual_vs_untrained"] > 1e-4  # ... not the checkpoint's
    last = [r for r in ranks if "trainer_logp" in r]
    assert len(last) == (nproc if pp == 1 else 1)
    for r in last:
        # vLLM's log-probs of its own tokens vs the trainer's recomputation (measured: <= 1.5e-6 in fp32)
        diff = max(abs(a - float(b)) for i, x in enumerate(r["vllm_logp"]) for a, b in zip(x, r["trainer_logp"][i]))
        print(f"max |vLLM - trainer| sampled-token log-prob ({tp=}, {pp=}): {diff:.2e}")
        assert diff < 1e-4
        # prompt log-probs: the video tokens' temporal positions come from second_per_grid_ts = 0.7 s, sent as
        # float64 (vLLM's default of 1 s, or a float32 0.7 s, gives others), and the text after the video resumes at
        # max + 1 in both (the default "qwen" rule; transformers 5.19's rule would start it 5 positions earlier)
        assert r["rule"] == "qwen"
        prompt = torch.tensor(r["vllm_prompt_logp"]) - r["trainer_prompt_logp"]
        assert prompt.abs().max() < 1e-4
        other = torch.tensor(r["vllm_prompt_logp"]) - r["trainer_prompt_logp_other_rule"]
        assert other.abs().max() > 1e-3


def test_pp_split_rollouts_equal_unsplit(runs):
    """PP=2: the stages' engines generate disjoint shares of a call's prompts (stage 0 two of the three, stage 1 one)
    and every stage gets all outputs back, equal to the PP=1 run's sampled rollouts (n=2, temperature 1): each
    request's seed comes from its index in the call, not from the stage that ran it."""
    unsplit = runs(1, 1, 1)[0]
    split = runs(2, 1, 2)
    assert [r["local_requests"] for r in split] == [2, 1] and unsplit["local_requests"] == 3
    assert any(a != b for a, b in unsplit["sampled"])  # temperature 1: a request's two samples differ
    for r in split:
        assert r["sampled"] == unsplit["sampled"]  # token ids, exactly
        for x, y in zip(r["sampled_logp"], unsplit["sampled_logp"]):
            for a, b in zip(x, y):
                assert a == pytest.approx(b, abs=1e-5)
