"""One Reg-GRPO step of the policy at a given TP/PP; saves loss, log-probs, HF-named full gradients, greedy rollout.

    torchrun --nproc-per-node N rl_step_parallel.py CKPT OUT TP PP [FLAGS]

FLAGS, comma-separated: `fused` (train through fused_linear_logprobs), `sp` (parallel.sequence_parallel=true),
`both` (then also run the other log-prob path on the same batch and save its loss/log-probs/gradients under
"other"), `packed` (the log-prob and training passes run packed, `model.packing`, one group per microbatch; every
pack's `(R, C)` and seq_lens are saved as "packed_shapes"), `varied` (sequences of 66 to 239 tokens: clips of 6 and
80 video tokens, responses of 1 to 100; without it 71-token prompts and 3-8 token responses). The batch is fixed
(seeded) and identical for every layout with the same `varied`; old/reference log-probs are the policy's own
log-probs shifted by fixed noise so that rho != 0. Run at TP=1/PP=1 for the reference and compare
(tests/distributed).
`vision`: afterwards the same step again with `model.freeze_vision=false` (a second policy from the same checkpoint,
the batch carrying pixel values): the first stage's vision-tower gradients (`vision_grads`), its loss
(`vision_loss`) and the largest difference of those gradients between the TP ranks (`vision_tp_spread`).
"""

import os
import sys

import torch


def main(ckpt, out, tp, pp, flags=()):
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

    fused = "fused" in flags
    result = {}
    cfg = load_config(None, [f"parallel.tp={tp}", f"parallel.pp={pp}", "log.wandb=false",
                             f"parallel.sequence_parallel={'true' if 'sp' in flags else 'false'}"])
    info = job.init(cfg)
    policy = job.build_policy(cfg, ckpt, info)
    model, opt, sched = job.optimizer_for(policy, 1e-3, 0.0, 0.0, 0, cfg)
    hf_cfg = load_hf_config(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)

    g = torch.Generator().manual_seed(0)
    B, G = 2, 3
    # "varied": clips of 6 and 80 video tokens, responses of 1 to 100 tokens (sequences of 66 to 239 tokens)
    clips = [(2, 56, 84, 3), (8, 112, 140, 3)] if "varied" in flags else [(4, 56, 84, 3)] * B
    resp_lens = [[1, 80, 2], [100, 1, 3]] if "varied" in flags else None
    items, prepared, pixels = [], [], []
    for b in range(B):
        frames = torch.randint(0, 256, clips[b], generator=g, dtype=torch.uint8)
        pv, grid = patchify(normalize_frames(frames))
        grid = grid.view(1, 3)
        pixels.append(pv)
        ids = torch.tensor(tok(chat_prompt(f"question {b}?", num_video_tokens(grid[0])))["input_ids"])
        pos = get_rope_index(ids.view(1, -1), hf_cfg.video_token_id, grid, [0.5], 2, 2)[:, 0]
        embeds = policy.encode_video(pv, grid) if policy.visual is not None else None
        p = Prepared(None, "", RolloutRequest(ids, pos, embeds), grid, 0.5, hf_cfg.video_token_id)
        prepared.append(p)
        for j in range(G):
            n = resp_lens[b][j] if resp_lens else int(torch.randint(3, 9, (1,), generator=g))
            items.append((p, torch.randint(10, 300, (n,), generator=g).tolist()))
    batch = build_batch(items, tok.convert_tokens_to_ids("<|endoftext|>"))
    T = batch.resp_mask.shape[1]
    mask = batch.resp_mask.view(B, G, T)
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.5, 1.0]])
    stats = group_advantages(rewards)
    noise = torch.randn(B * G, T, generator=g) * 0.1
    kw = dict(packing=True, rows_per_microbatch=G) if "packed" in flags else {}
    result["packed_shapes"] = record_packed_shapes()
    logp0, ent0 = token_logprobs(model, batch, compute_entropy=True, **kw)
    if logp0 is not None:
        old = ((logp0 - noise) * batch.resp_mask).view(B, G, T)
        ref = ((logp0 + 0.5 * noise) * batch.resp_mask).view(B, G, T)
        result["logp"], result["entropy"] = logp0, ent0
        norm = Normalizers.of(mask, stats.valid)

        def loss_fn(logp, _, rows):  # whole groups: this microbatch's share of the batch loss
            gs = slice(rows.start // G, rows.stop // G)
            return reg_grpo_loss(logp.view(-1, G, T), old[gs], ref[gs], stats.advantages[gs], mask[gs],
                                 stats.valid[gs], beta=0.1, norm=norm)
    else:
        loss_fn = None

    result["seq_len"] = batch.input_ids.shape[1]

    def step(fused_path):
        """One forward/backward through the schedule (finalize_model_grads included); loss, log-probs, grads."""
        model.zero_grad_buffer()
        opt.zero_grad()
        res = forward_backward(model, batch, loss_fn, forward_only=False, fused=fused_path, **kw)
        got = {} if res is None else {"loss": res.loss.detach(), "logp_train": res.logp}
        grads = {n: gather_tp(p, n, p.main_grad.view_as(p)) for n, p in policy.lm.named_parameters()}
        offset = ps.get_pipeline_model_parallel_rank() * (policy.shape.num_layers // pp)
        got["grads"] = dict(megatron_to_hf(grads, policy.shape, layer_offset=offset))
        return got

    if "both" in flags:
        result["other"] = step(not fused)
    result.update(step(fused))
    if policy.lm.post_process:  # did the output layer's weight gradient go straight into DDP's main_grad?
        result["output_grad_in_main_grad"] = bool(getattr(policy.output_weight(), "grad_added_to_main_grad", False))

    engine = NativeRolloutEngine(policy, seed=0)
    outs = engine.generate([p.request for p in prepared], SamplingParams(n=2, temperature=0.0, max_new_tokens=5))
    result["greedy"] = [o.token_ids for o in outs]
    outs = engine.generate([p.request for p in prepared], SamplingParams(n=3, temperature=1.0, max_new_tokens=5))
    result["sampled"] = [o.token_ids for o in outs]
    if "vision" in flags:
        result.update(vision_step(cfg, ckpt, info, prepared, pixels, items, loss_fn, fused))
    if ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0:
        torch.save(result, os.path.join(out, f"pp{ps.get_pipeline_model_parallel_rank()}.pt"))
    torch.distributed.barrier()


def record_packed_shapes() -> list:
    """A list that receives `(R, C)` and the microbatch's seq_lens of every `dvr1.parallel.packing.pack` call the
    passes make (`forward_backward` calls it through the module), to check the layout the numbers came from."""
    from dvr1.parallel import packing

    shapes, original = [], packing.pack

    def pack(mb, **kw):
        out = original(mb, **kw)
        shapes.append((tuple(out.shape), list(out.seq_lens)))
        return out

    packing.pack = pack
    return shapes


def vision_step(cfg, ckpt, info, prepared, pixels, items, loss_fn, fused):
    """The same step with the vision tower trained: its gradients come from the tower run inside the pass."""
    import dataclasses

    from dvr1.parallel import grid
    from dvr1.parallel.forward import forward_backward
    from dvr1.train import job
    from dvr1.train.inputs import build_batch

    from transformers import AutoTokenizer

    policy = job.build_policy(cfg, ckpt, info, train_vision=True)
    model, opt, _ = job.optimizer_for(policy, 1e-3, 0.0, 0.0, 0, cfg)
    swap = {}
    for p, pv in zip(prepared, pixels):  # same prompts, the clip's pixel values instead of the embeddings
        req = dataclasses.replace(p.request, video_embeds=None, video_grid_thw=p.video_grid_thw,
                                  pixel_values_videos=pv if policy.vision_trainable else None)
        swap[id(p)] = dataclasses.replace(p, request=req)
    pad = AutoTokenizer.from_pretrained(ckpt).convert_tokens_to_ids("<|endoftext|>")
    batch = build_batch([(swap[id(p)], r) for p, r in items], pad)
    model.zero_grad_buffer()
    opt.zero_grad()
    res = forward_backward(model, batch, loss_fn, forward_only=False, fused=fused)
    out = {}
    if res is not None:
        out["vision_loss"] = res.loss.detach()
    if policy.visual is not None:
        grads = {f"visual.{n}": p.main_grad.view_as(p).clone() for n, p in policy.visual.named_parameters()}
        out["vision_grads"] = grads
        flat = torch.cat([v.flatten() for v in grads.values()])
        gathered = grid.tp_all_gather(flat)
        out["vision_tp_spread"] = max(float((x - gathered[0]).abs().max()) for x in gathered)
    return out


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
         tuple(sys.argv[5].split(",")) if len(sys.argv) > 5 else ())
