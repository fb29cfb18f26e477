"""One Reg-GRPO step of the policy at a given TP/PP; saves loss, log-probs, entropy, HF-named full gradients, greedy
rollout.

    torchrun --nproc-per-node N rl_step_parallel.py CKPT OUT TP PP [fused] [packed]

The batch is fixed (seeded) and identical for every layout: videos of 6 and 144 tokens and responses of 1 to 15
tokens, so the sequences' lengths differ by ~3x; old/reference log-probs are the policy's own log-probs shifted by
fixed noise so that rho != 0. `packed`: the log-prob and training passes run packed (`model.packing`), one group
per microbatch (so under PP the two microbatches are packed to a common length). Run at TP=1/PP=1 for the
reference and compare (tests/distributed).
"""

import os
import sys

import torch


def main(ckpt, out, tp, pp, fused=False, packed=False):
    from dvr1.config import load_config
    from dvr1.data.processing import normalize_frames, num_video_tokens, patchify
    from dvr1.models.export import gather_tp
    from dvr1.models.hf_mapping import megatron_to_hf
    from dvr1.models.qwen2_5_vl import load_hf_config
    from dvr1.models.rope import get_rope_index
    from dvr1.models.tokenizer import chat_prompt
    from dvr1.parallel.forward import forward_backward
    from dvr1.rl.advantages import group_advantages
    from dvr1.rl.losses import Normalizers, reg_grpo_loss
    from dvr1.rollout.base import RolloutRequest, SamplingParams
    from dvr1.rollout.native import NativeRolloutEngine
    from dvr1.train import job
    from dvr1.train.inputs import Prepared, build_batch, token_logprobs
    from megatron.core import parallel_state as ps
    from transformers import AutoTokenizer

    cfg = load_config(None, [f"parallel.tp={tp}", f"parallel.pp={pp}", "log.wandb=false"])
    info = job.init(cfg)
    policy = job.build_policy(cfg, ckpt, info)
    model, opt, sched = job.optimizer_for(policy, 1e-3, 0.0, 0.0, 0, cfg)
    hf_cfg = load_hf_config(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)

    g = torch.Generator().manual_seed(0)
    B, G = 2, 3
    items, prepared = [], []
    for b in range(B):
        shape = (2, 56, 84, 3) if b == 0 else (12, 112, 168, 3)  # 6 and 144 video tokens
        frames = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        pv, grid = patchify(normalize_frames(frames))
        grid = grid.view(1, 3)
        ids = torch.tensor(tok(chat_prompt(f"question {b}?" * (1 + 4 * b), num_video_tokens(grid[0])))["input_ids"])
        pos = get_rope_index(ids.view(1, -1), hf_cfg.video_token_id, grid, [0.5], 2, 2)[:, 0]
        embeds = policy.encode_video(pv, grid) if policy.visual is not None else None
        p = Prepared(None, "", RolloutRequest(ids, pos, embeds), grid, 0.5, hf_cfg.video_token_id)
        prepared.append(p)
        for _ in range(G):
            items.append((p, torch.randint(10, 300, (int(torch.randint(1, 16, (1,), generator=g)),), generator=g).tolist()))
    batch = build_batch(items, tok.convert_tokens_to_ids("<|endoftext|>"))
    T = batch.resp_mask.shape[1]
    mask = batch.resp_mask.view(B, G, T)
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.5, 1.0]])
    stats = group_advantages(rewards)
    noise = torch.randn(B * G, T, generator=g) * 0.1
    kw = dict(packing=True, rows_per_microbatch=G) if packed else {}
    logp0, ent0 = token_logprobs(model, batch, compute_entropy=True, **kw)
    result = {"seq_lens": batch.seq_lens}
    if logp0 is not None:
        old = ((logp0 - noise) * batch.resp_mask).view(B, G, T)
        ref = ((logp0 + 0.5 * noise) * batch.resp_mask).view(B, G, T)
        result["logp"], result["entropy"] = logp0, ent0
        norm = Normalizers.of(mask, stats.valid)

        def loss_fn(logp, _, rows):
            gs = slice(rows.start // G, rows.stop // G)
            return reg_grpo_loss(logp.view(-1, G, T), old[gs], ref[gs], stats.advantages[gs], mask[gs],
                                 stats.valid[gs], beta=0.1, norm=norm)
    else:
        loss_fn = None

    model.zero_grad_buffer()
    opt.zero_grad()
    res = forward_backward(model, batch, loss_fn, forward_only=False, fused=fused, **kw)
    if res is not None:
        result["loss"] = res.loss.detach()
    grads = {n: gather_tp(p, n, p.main_grad.view_as(p)) for n, p in policy.lm.named_parameters()}
    offset = ps.get_pipeline_model_parallel_rank() * (policy.shape.num_layers // pp)
    result["grads"] = dict(megatron_to_hf(grads, policy.shape, layer_offset=offset))
    if policy.lm.post_process:  # did the output layer's weight gradient go straight into DDP's main_grad?
        result["output_grad_in_main_grad"] = bool(getattr(policy.output_weight(), "grad_added_to_main_grad", False))

    engine = NativeRolloutEngine(policy, seed=0)
    outs = engine.generate([p.request for p in prepared], SamplingParams(n=2, temperature=0.0, max_new_tokens=5))
    result["greedy"] = [o.token_ids for o in outs]
    outs = engine.generate([p.request for p in prepared], SamplingParams(n=3, temperature=1.0, max_new_tokens=5))
    result["sampled"] = [o.token_ids for o in outs]
    if ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0:
        torch.save(result, os.path.join(out, f"pp{ps.get_pipeline_model_parallel_rank()}.pt"))
    torch.distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), "fused" in sys.argv[5:], "packed" in sys.argv[5:])
