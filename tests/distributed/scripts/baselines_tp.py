"""One training step of every `algo.name` (docs/ALGORITHMS.md §2, §3, §9) at a given TP, in one launch; saves each
algorithm's loss, combined metrics and HF-named full gradients.

    torchrun --nproc-per-node N baselines_tp.py CKPT OUT TP

The batch is fixed (seeded) and the same for every layout and algorithm; old/reference log-probs are the policy's own
shifted by fixed noise (ratios away from 1, so the clips bind). The step is the trainer's (dvr1/train/rl.py): the
objective per microbatch of one group with the batch's Normalizers, the algorithm's advantages, REBEL's pairs, the
vocab-parallel log-prob path. Run at TP=1 for the reference and compare (tests/distributed/test_baselines_tp.py).
"""

import os
import sys

import torch


def main(ckpt, out, tp):
    from dvr1.config import load_config
    from dvr1.data.processing import normalize_frames, num_video_tokens, patchify
    from dvr1.models.export import gather_tp
    from dvr1.models.hf_mapping import megatron_to_hf
    from dvr1.models.qwen2_5_vl import load_hf_config
    from dvr1.models.rope import get_rope_index
    from dvr1.models.tokenizer import chat_prompt
    from dvr1.parallel.forward import forward_backward
    from dvr1.rl.advantages import algo_advantages
    from dvr1.rl.losses import ALGORITHMS, Normalizers, combine_metrics, objective, rebel_pairs
    from dvr1.rollout.base import RolloutRequest
    from dvr1.train import job
    from dvr1.train.inputs import Prepared, build_batch, token_logprobs
    from megatron.core import parallel_state as ps
    from transformers import AutoTokenizer

    cfg = load_config(None, [f"parallel.tp={tp}", "log.wandb=false"])
    info = job.init(cfg)
    policy = job.build_policy(cfg, ckpt, info)
    model, opt, _ = job.optimizer_for(policy, 1e-3, 0.0, 0.0, 0, cfg)
    hf_cfg = load_hf_config(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)

    g = torch.Generator().manual_seed(0)
    B, G = 3, 4
    items = []
    for b in range(B):
        frames = torch.randint(0, 256, (4, 56, 84, 3), generator=g, dtype=torch.uint8)
        pv, grid = patchify(normalize_frames(frames))
        grid = grid.view(1, 3)
        ids = torch.tensor(tok(chat_prompt(f"question {b}?", num_video_tokens(grid[0])))["input_ids"])
        pos = get_rope_index(ids.view(1, -1), hf_cfg.video_token_id, grid, [0.5], 2, 2)[:, 0]
        embeds = policy.encode_video(pv, grid) if policy.visual is not None else None
        p = Prepared(None, "", RolloutRequest(ids, pos, embeds), grid, 0.5, hf_cfg.video_token_id)
        for _ in range(G):
            n = int(torch.randint(2, 9, (1,), generator=g))
            items.append((p, torch.randint(10, 300, (n,), generator=g).tolist()))
    batch = build_batch(items, tok.convert_tokens_to_ids("<|endoftext|>"))
    T = batch.resp_mask.shape[1]
    mask = batch.resp_mask.view(B, G, T)
    rewards = torch.tensor([[1.0, 0.0, 2.0, 0.5], [1.0, 1.0, 1.0, 1.0], [0.25, 1.5, 1.0, 0.0]])  # group 1: σ_r = 0
    noise = torch.randn(B * G, T, generator=g) * 0.3
    logp0, _ = token_logprobs(model, batch)
    result = {}
    if logp0 is not None:
        old = ((logp0 - noise) * batch.resp_mask).view(B, G, T)
        ref = ((logp0 + 0.5 * noise) * batch.resp_mask).view(B, G, T)
        result["logp"] = logp0
    pairs = rebel_pairs(range(B), G, cfg.seed, 5)
    for name in ALGORITHMS:
        extra = ["algo.beta=0.05"] if name != "dapo" else []  # DAPO at its paper default: no KL
        if name == "gspo":
            extra += ["algo.clip_eps_low=0.02", "algo.clip_eps_high=0.03"]  # some sequences inside the clip
        algo = load_config(None, [f"algo.name={name}", *extra]).algo
        stats = algo_advantages(algo, rewards)
        norm = Normalizers.of(mask, stats.valid)

        def loss_fn(logp, _e, rows):
            s = slice(rows.start // G, rows.stop // G)
            return objective(algo, logp.view(-1, G, T), old[s], ref[s], stats.advantages[s], mask[s],
                             stats.valid[s], norm, rewards=rewards[s], pairs=pairs[s], max_new_tokens=8)

        model.zero_grad_buffer()
        opt.zero_grad()
        res = forward_backward(model, batch, loss_fn if logp0 is not None else None, forward_only=False,
                               rows_per_microbatch=G)
        grads = {n: gather_tp(p, n, p.main_grad.view_as(p)).clone() for n, p in policy.lm.named_parameters()}
        result[name] = {"loss": res.loss.detach(), "metrics": combine_metrics(res.metrics),
                        "grads": dict(megatron_to_hf(grads, policy.shape, layer_offset=0))}
    if ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0:
        torch.save(result, os.path.join(out, "result.pt"))
    torch.distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
