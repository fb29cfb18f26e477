"""One M-DPO optimizer step (`MDPOTrainer.update`) on fixed fabricated pairs at a given TP / PP; saves the DP-reduced
metrics (loss, pairs_used, the DPO metrics), the HF-named full gradients, and the HF-named full parameters before and
after the step.

    torchrun --nproc-per-node N vidchain_mdpo_parallel.py CKPT REF_CKPT OUT TP PP CASE [CASE ...]

CASE says which of the 4 pairs each DP rank gets: ``all`` (every rank all 4: DP=1), ``halves`` (DP=2: 2 + 2),
``uneven`` (DP=2: 3 + 1), ``empty`` (DP=2: 4 + 0, rank 1 joins with a zero-weight pair); a suffix ``_mbK`` runs the
step in microbatches of K pairs (``vidchain.micro_batch_pairs=K``; with PP the last one is filled with zero-weight
pairs). Each case starts from a fresh policy and optimizer (Adam, lr 1e-3, no clipping so the DP-reduced gradient is
what the optimizer used). Compared against TP=1/DP=1 ``all`` in tests/distributed/test_vidchain_mdpo_parallel.py.
"""

import os
import sys

import torch

SPLITS = {"all": None, "halves": ((0, 2), (2, 4)), "uneven": ((0, 3), (3, 4)), "empty": ((0, 4), (4, 4))}


def fabricated_pairs(hf_cfg):
    """4 PreferencePairs over 2 prompts (text + 8 video tokens with random embeddings), identical on every rank."""
    from dvr1.models.rope import get_rope_index
    from dvr1.rollout.base import RolloutRequest
    from dvr1.train.inputs import Prepared
    from dvr1.vidchain.mdpo import PreferencePair

    g = torch.Generator().manual_seed(0)
    grid = torch.tensor([[2, 4, 4]])
    vid = hf_cfg.video_token_id
    out = []
    for b in range(2):
        ids = torch.cat([torch.randint(10, 250, (3 + 2 * b,), generator=g), torch.tensor([vid] * 8),
                         torch.randint(10, 250, (4,), generator=g)])
        pos = get_rope_index(ids.view(1, -1), vid, grid, [1.0], 2, 2)[:, 0]
        emb = torch.randn(8, hf_cfg.text_config.hidden_size, generator=g)
        prep = Prepared(None, "", RolloutRequest(ids, pos, emb), grid, 1.0, vid)
        for _ in range(2):
            w = torch.randint(10, 250, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
            lo = torch.randint(10, 250, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
            out.append(PreferencePair(prep, w, lo, 80.0, 20.0, "captions"))
    return out


def hf_named(policy, tensors):
    """{megatron name: local shard} -> {HF name: full tensor} of this PP stage's layers (TP gather; collective)."""
    from dvr1.models.export import gather_tp
    from dvr1.models.hf_mapping import megatron_to_hf
    from megatron.core import parallel_state as ps

    full = {n: gather_tp(p, n, tensors[n]) for n, p in policy.lm.named_parameters()}
    pp = ps.get_pipeline_model_parallel_world_size()
    offset = ps.get_pipeline_model_parallel_rank() * (policy.shape.num_layers // pp)
    return dict(megatron_to_hf(full, policy.shape, layer_offset=offset))


def main(ckpt, ref_ckpt, out, tp, pp, cases):
    from dvr1.config import load_config
    from dvr1.models.qwen2_5_vl import load_hf_config
    from dvr1.rl.losses import DPO_METRICS
    from dvr1.train import job
    from dvr1.train.metrics import reduce_metrics
    from dvr1.vidchain.mdpo import MDPOTrainer
    from megatron.core import parallel_state as ps
    from transformers import AutoTokenizer

    cfg = load_config(None, [f"parallel.tp={tp}", f"parallel.pp={pp}", "log.wandb=false"])
    info = job.init(cfg)
    tok = AutoTokenizer.from_pretrained(ckpt)
    pairs = fabricated_pairs(load_hf_config(ckpt))
    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    for case in cases:
        split_name, _, mb = case.partition("_mb")
        split = SPLITS[split_name]
        cfg.vidchain.micro_batch_pairs = int(mb or 0)
        if (split is None) != (dp == 1):
            raise ValueError(f"case {case!r} needs DP={'1' if split is None else '2'}, have DP={dp}")
        mine = pairs if split is None else pairs[split[dp_rank][0]:split[dp_rank][1]]
        policy = job.build_policy(cfg, ckpt, info)
        reference = job.build_policy(cfg, ref_ckpt, info, trainable=False)
        model, opt, sched = job.optimizer_for(policy, 1e-3, 0.0, 0.0, 0, cfg)
        before = hf_named(policy, {n: p.detach().clone() for n, p in policy.lm.named_parameters()})
        trainer = MDPOTrainer(model, opt, sched, reference, None, None, tok, [], cfg.vidchain, None)
        m = reduce_metrics(trainer.update(mine, null_prompt=lambda: pairs[0].prepared))
        grads = hf_named(policy, {n: p.main_grad.view_as(p) for n, p in policy.lm.named_parameters()})
        after = hf_named(policy, {n: p.detach() for n, p in policy.lm.named_parameters()})
        if ps.get_tensor_model_parallel_rank() == 0 and dp_rank == 0:
            torch.save({"metrics": {k: m[k] for k in (*DPO_METRICS, "pairs_used")}, "loss": m["loss"],
                        "pairs_used": m["pairs_used"], "grads": grads, "before": before, "after": after,
                        "stage": ps.get_pipeline_model_parallel_rank()},
                       os.path.join(out, f"{case}_pp{ps.get_pipeline_model_parallel_rank()}.pt"))
        torch.distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:])
