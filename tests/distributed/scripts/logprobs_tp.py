"""torchrun --nproc-per-node 2 script: dvr1.parallel.logprobs at TP=2 (gloo, CPU) vs the full-vocabulary reference.

Every rank builds the same full logits / hidden / output weight (same seed), keeps its vocabulary shard, runs the
vocab-parallel functions, and compares with `torch.log_softmax` over the FULL vocabulary computed locally.
Writes `{out_dir}/logprobs_tp_rank{r}.json` with normwise relative errors max|a-b| / max|b| for
tests/distributed/test_logprobs_tp.py to assert on. Usage: logprobs_tp.py OUT_DIR
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from dvr1.parallel.logprobs import fused_linear_logprobs, vocab_parallel_logprobs


def rel_err(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def ref_logprobs(logits, target):
    return torch.log_softmax(logits.float(), -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)


def ref_entropy(logits):
    lp = torch.log_softmax(logits.float(), -1)
    return -(lp.exp() * lp).sum(-1)


def main(out_dir):
    dist.init_process_group("gloo")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    assert tp == 2, tp
    res = {"rank": rank}

    # ---- vocab_parallel_logprobs on given logits [s, b, V/tp]
    gen = torch.Generator().manual_seed(1234)
    s, b, vocab = 7, 3, 2 * 53
    vl = vocab // tp
    full = torch.randn(s, b, vocab, generator=gen) * 4
    target = torch.randint(0, vocab, (s, b), generator=gen)
    wts = torch.rand(s, b, generator=gen) + 0.5
    target[0, 0], target[0, 1] = 0, vocab - 1  # ids on both shards for sure
    ref_x = full.clone().requires_grad_(True)
    ref_lp = ref_logprobs(ref_x, target)
    (ref_lp * wts).sum().backward()

    shard = full[..., rank * vl:(rank + 1) * vl].clone().requires_grad_(True)
    lp, ent = vocab_parallel_logprobs(shard, target, compute_entropy=True, chunk_size=4)  # tp_group=None: megatron's
    (lp * wts).sum().backward()
    res["vp_logprob"] = rel_err(lp, ref_lp)
    res["vp_grad_shard"] = rel_err(shard.grad, ref_x.grad[..., rank * vl:(rank + 1) * vl])
    res["vp_entropy"] = rel_err(ent, ref_entropy(full))
    # explicit group, unchunked
    lp2, _ = vocab_parallel_logprobs(shard.detach(), target, tp_group=parallel_state.get_tensor_model_parallel_group())
    res["vp_logprob_explicit_group"] = rel_err(lp2, ref_lp)
    # negative control: the same shard without TP communication is far from the reference
    own = (target >= rank * vl) & (target < (rank + 1) * vl)
    lp_local, _ = vocab_parallel_logprobs(shard.detach(), torch.where(own, target - rank * vl, 0),
                                          tp_group=_single_rank_group(rank))
    res["vp_no_comm_control"] = rel_err(lp_local, ref_lp)
    # identical on both ranks
    both = [torch.empty_like(lp) for _ in range(tp)]
    dist.all_gather(both, lp.detach(), group=parallel_state.get_tensor_model_parallel_group())
    res["vp_ranks_identical"] = bool(torch.equal(both[0], both[1]))

    # bf16 shard vs fp32 reference on the same (bf16-rounded) values
    full16 = full.to(torch.bfloat16)
    lp16, _ = vocab_parallel_logprobs(full16[..., rank * vl:(rank + 1) * vl], target, chunk_size=5)
    res["vp_bf16_logprob"] = rel_err(lp16, ref_logprobs(full16, target))

    # ---- fused_linear_logprobs: hidden [s, b, h] replicated, weight [V/tp, h]
    h = 24
    hidden = torch.randn(s, b, h, generator=gen)
    weight = torch.randn(vocab, h, generator=gen) * 0.5
    rh, rw = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    rlp = ref_logprobs(rh @ rw.t(), target)
    (rlp * wts).sum().backward()
    fh = hidden.clone().requires_grad_(True)
    fw = weight[rank * vl:(rank + 1) * vl].clone().requires_grad_(True)
    flp, fent = fused_linear_logprobs(fh, fw, target, chunk_size=5, compute_entropy=True)
    (flp * wts).sum().backward()
    res["fused_logprob"] = rel_err(flp, rlp)
    res["fused_entropy"] = rel_err(fent, ref_entropy(hidden @ weight.t()))
    res["fused_grad_hidden"] = rel_err(fh.grad, rh.grad)
    res["fused_grad_weight_shard"] = rel_err(fw.grad, rw.grad[rank * vl:(rank + 1) * vl])

    with open(os.path.join(out_dir, f"logprobs_tp_rank{rank}.json"), "w") as f:
        json.dump(res, f)
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


_GROUPS = {}


def _single_rank_group(rank):
    """A size-1 group per rank (new_group must be called by all ranks, in the same order)."""
    if not _GROUPS:
        for r in range(dist.get_world_size()):
            _GROUPS[r] = dist.new_group([r])
    return _GROUPS[rank]


if __name__ == "__main__":
    main(sys.argv[1])
