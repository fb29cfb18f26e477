"""Colocated vLLM engine after optimizer steps and a weight sync, at a given TP/PP; saves what the test compares.

    torchrun --nproc-per-node N vllm_sync.py CKPT OUT TP PP

Per rank (OUT/rank{r}.pt): greedy tokens of vLLM and of the native sampler on 3 video prompts, vLLM's sampled-token
log-probs before and after the sync, sampled rollouts (n=2, temperature 1) of the checkpoint's weights and how many
of the 3 requests this rank's engine generated itself (PP splits them over the stages), the trainer's recomputed log-probs of vLLM's responses (last stage), vLLM's
prompt log-probs and the trainer's (positions after the video depend on second_per_grid_ts), the seconds the sync
took, and the HF names a sync sends next to the checkpoint's tensor names. The policy trains its vision tower
(`model.freeze_vision=false`, issue 16): the requests carry pixel values, the optimizer steps move the tower, the
prompts are re-encoded with it afterwards (as `InputBuilder` does after an update), and vLLM's own vision tower
after the sync is compared with the trainer's (`vllm_visual_diff`, `vllm_visual_vs_untrained`, `tower_moved`).
"""

import os
import sys

import torch

SPG = 0.7  # seconds per grid step of the test prompts (see below)


def main(ckpt, out, tp, pp):
    import torch.distributed as dist

    from dvr1.config import load_config
    from dvr1.data.processing import normalize_frames, num_video_tokens, patchify
    from dvr1.models.qwen2_5_vl import load_hf_config
    from dvr1.models.rope import get_rope_index
    from dvr1.models.tokenizer import chat_prompt
    from dvr1.parallel.forward import forward_backward
    from dvr1.rollout.base import RolloutRequest, SamplingParams
    from dvr1.rollout.native import NativeRolloutEngine
    from dvr1.train import job
    from dvr1.train.inputs import Prepared, build_batch, token_logprobs
    from transformers import AutoTokenizer

    cfg = load_config(None, [f"parallel.tp={tp}", f"parallel.pp={pp}", "log.wandb=false", "rollout.engine=vllm",
                             "rollout.max_model_len=1024", "model.freeze_vision=false"])
    info = job.init(cfg)
    policy = job.build_policy(cfg, ckpt, info, train_vision=True)
    tower0 = {n: p.detach().clone() for n, p in policy.visual.named_parameters()} if policy.visual else {}
    model, opt, sched = job.optimizer_for(policy, 2e-2, 0.0, 0.0, 0, cfg)
    hf_cfg = load_hf_config(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.convert_tokens_to_ids("<|endoftext|>")

    g = torch.Generator().manual_seed(0)
    prepared = []
    # 12 frames of 56x84 -> grid (6, 4, 6), 0.7 s per grid step: temporal positions 0, 1, 2, 4, 5, 7 (vLLM's default
    # of 1 s would give 0, 2, ..., 10; a float32 0.7 s reaching vLLM's float64 product gives 6 at step 5), spatial
    # 2 x 3, so the text after the video resumes at +8 under the default "qwen" rule (+3 under transformers 5.19's)
    rule = cfg.model.mrope_rule
    for b in range(3):
        frames = torch.randint(0, 256, (12, 56, 84, 3), generator=g, dtype=torch.uint8)
        pv, grid = patchify(normalize_frames(frames))
        grid = grid.view(1, 3)
        prompt = chat_prompt(f"question {b}? describe the motion", num_video_tokens(grid[0]))
        ids = torch.tensor(tok(prompt)["input_ids"])
        pos = get_rope_index(ids.view(1, -1), hf_cfg.video_token_id, grid, [SPG], 2, 2, rule)[:, 0]
        with torch.no_grad():
            embeds = policy.encode_video(pv, grid) if policy.visual is not None else None
        prepared.append(Prepared(None, "", RolloutRequest(ids, pos, embeds, video_grid_thw=grid, second_per_grid=SPG,
                                                          pixel_values_videos=pv if policy.visual else None),
                                 grid, SPG, hf_cfg.video_token_id))
    engine = job.rollout_engine(cfg, policy, ckpt)
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=12, stop_token_ids=(eos,))
    before = engine.generate([p.request for p in prepared], greedy)
    # sampled rollouts of the checkpoint's weights (n=2, temperature 1): under PP each stage generates its share of
    # the 3 prompts (stage 0: prompts 0 and 2, stage 1: prompt 1) and the outputs are gathered; the test compares
    # them with the PP=1 run's
    sampled = engine.generate([p.request for p in prepared],
                              SamplingParams(n=2, temperature=1.0, max_new_tokens=8, stop_token_ids=(eos,)))
    local_requests = engine.local_requests

    # two optimizer steps that raise the log-likelihood of fixed responses (a plain SFT loss)
    items = [(p, torch.randint(10, 300, (6,), generator=g).tolist()) for p in prepared]
    batch = build_batch(items, pad)
    for _ in range(2):
        model.zero_grad_buffer()
        opt.zero_grad()
        forward_backward(model, batch, lambda logp, _e, rows: (-(logp * batch.resp_mask[rows]).sum()
                                                               / batch.resp_mask.sum(), {}), forward_only=False)
        opt.step()
    seconds = engine.sync_weights(model)
    for p in prepared:  # the trained tower's embeddings of the prompts (what InputBuilder hands out after an update)
        if policy.visual is not None:
            with torch.no_grad():
                p.request.video_embeds = policy.encode_video(p.request.pixel_values_videos, p.video_grid_thw)
    after = engine.generate([p.request for p in prepared], greedy)
    native = NativeRolloutEngine(policy).generate([p.request for p in prepared], greedy)
    check = build_batch([(p, o.token_ids[0]) for p, o in zip(prepared, after)], pad)
    trainer_logp, _ = token_logprobs(model, check)

    result = {"rule": rule, "vllm": [o.token_ids[0] for o in after], "native": [o.token_ids[0] for o in native],
              "vllm_logp": [o.logprobs[0] for o in after], "vllm_logp_before": [o.logprobs[0] for o in before],
              "sync_seconds": seconds, "resp_mask": check.resp_mask,
              "sampled": [o.token_ids for o in sampled], "sampled_logp": [o.logprobs for o in sampled],
              "local_requests": local_requests}
    if trainer_logp is not None:
        result["trainer_logp"] = trainer_logp

    # prompt log-probs: every position after the video depends on second_per_grid_ts reaching vLLM's mrope
    from vllm import SamplingParams as VSP
    from vllm.inputs import TokensPrompt

    r = prepared[0].request
    e = engine._video_embeds([r])[0]
    o = engine.llm.generate([TokensPrompt(prompt_token_ids=engine._prompt_ids(r, e), **engine._mm(r, e))],
                            VSP(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False), use_tqdm=False)[0]
    ids = r.prompt_ids.tolist()
    result["vllm_prompt_logp"] = [d[t].logprob for d, t in zip(o.prompt_logprobs[1:], ids[1:])]
    p0 = prepared[0]
    other = "transformers5" if rule == "qwen" else "qwen"  # the other rule: its log-probs must NOT match vLLM's
    pos_other = get_rope_index(r.prompt_ids.view(1, -1), hf_cfg.video_token_id, p0.video_grid_thw, [SPG], 2, 2,
                               other)[:, 0]
    p_other = Prepared(None, "", RolloutRequest(r.prompt_ids, pos_other, r.video_embeds, r.pixel_values_videos,
                                                   p0.video_grid_thw, SPG),
                       p0.video_grid_thw, SPG, hf_cfg.video_token_id)
    for key, p in (("trainer_prompt_logp", p0), ("trainer_prompt_logp_other_rule", p_other)):
        whole = build_batch([(p, ids[-1:])], pad)  # the prompt's tokens are targets of the shifted logits
        whole.resp_index = torch.arange(len(ids) - 1).view(1, -1)
        whole.resp_mask = torch.ones(1, len(ids) - 1)
        plogp, _ = token_logprobs(model, whole)
        if plogp is not None:
            result[key] = plogp[0]

    # completeness: the names a sync sends are exactly the checkpoint's tensor names (vLLM raises on an unknown name)
    from megatron.core.utils import unwrap_model
    from safetensors import safe_open

    from dvr1.models.export import iter_full_state_for_hf

    result["sent_names"] = sorted(n for n, _ in iter_full_state_for_hf(unwrap_model(model)))
    # the refit carried the trained tower: every vision tensor vLLM still holds as a tensor equals the trainer's
    # trained one (gate/up fused in vLLM). vLLM's CPU linear layers keep only a oneDNN handle of their weight (an
    # empty tensor is left), so those weights are not comparable here; norms, biases, the patch embedding are.
    if policy.visual is not None:
        mine = {n: p.detach() for n, p in policy.visual.named_parameters()}

        def fused(d, name):
            if ".mlp.gate_up_proj." in name:
                return torch.cat([d[name.replace("gate_up_proj", "gate_proj")],
                                  d[name.replace("gate_up_proj", "up_proj")]])
            return d[name]

        theirs = engine.llm.apply_model(lambda m: {n: p.detach().cpu().clone() for n, p in m.visual.named_parameters()})
        theirs = theirs[0] if isinstance(theirs, list) else theirs
        same = {n: t for n, t in theirs.items() if t.numel() and t.shape == fused(mine, n).shape}
        result.update(
            vllm_visual_compared=len(same),
            vllm_visual_diff=max(float((t.float() - fused(mine, n).float()).abs().max()) for n, t in same.items()),
            vllm_visual_vs_untrained=max(float((t.float() - fused(tower0, n).float()).abs().max())
                                         for n, t in same.items()),
            tower_moved=max(float((mine[n] - v).abs().max()) for n, v in tower0.items()))
    with safe_open(os.path.join(ckpt, "model.safetensors"), "pt") as f:
        result["checkpoint_names"] = sorted(f.keys())
    torch.save(result, os.path.join(out, f"rank{dist.get_rank()}.pt"))
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
