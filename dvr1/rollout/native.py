"""Native rollout engine: KV-cache sampling over the megatron-core policy itself.

Each prompt's group of G responses is decoded together as one batch of G identical prompts (so no prompt padding
is needed): one prefill over the prompt, then one token per step using megatron-core's `StaticInferenceContext`
KV cache (`megatron/core/inference/contexts/static_context.py`; on CPU its allocation is redirected by
`megatron_patches.inference_kv_cache`). Rows that have emitted a stop token keep decoding padding that is cut off.

Under TP every rank runs the same loop with the same generator state, so all TP ranks sample the same tokens
(logits are gathered over the vocabulary for sampling only). Under PP each stage runs its layers with its own KV
cache; activations `[tokens, G, hidden]` go stage to stage (point-to-point over the PP group), the last stage samples,
and the sampled tokens and their log-probs are broadcast back to every stage before the next decode step.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from dvr1.models.rope import continue_positions
from dvr1.parallel import grid
from dvr1.rollout.base import RolloutOutput, RolloutRequest, SamplingParams, sample_next


class NativeRolloutEngine:
    """Args: policy (`dvr1.models.qwen2_5_vl.Qwen25VLPolicy`), seed for the sampling generator, progress bar flag."""

    def __init__(self, policy, seed: int = 0, progress: bool = False):
        self.policy = policy
        self.generator = torch.Generator().manual_seed(seed)
        self.progress = progress

    def sync_weights(self, policy) -> float:
        return 0.0  # the native engine samples from the trained module itself

    def sleep(self) -> None:
        return None  # nothing to release: the native engine is the policy itself

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    @torch.no_grad()
    def generate(self, requests: list[RolloutRequest], sampling: SamplingParams, desc: str = "rollout") -> list[RolloutOutput]:
        was_training = self.policy.training
        self.policy.eval()
        try:
            it = tqdm(requests, desc=desc, leave=False, disable=not self.progress)
            return [self._generate_one(r, sampling) for r in it]
        finally:
            self.policy.train(was_training)

    # ---- pipeline parallel plumbing (no-ops at PP=1) -----------------------------------------------------------
    def _pp(self):
        return grid.pp_layout()[1]

    def _stage_forward(self, ids, pos, video, ctx):
        """This stage's layers on `ids` (the new tokens); returns logits `[G, 1, vocab]` on the last stage, else None."""
        if self._pp() == 1:
            return self.policy(ids, pos, video_embeds=video, inference_context=ctx, runtime_gather_output=True)
        p = self.policy
        if not p.pre_process:
            hidden = torch.empty(ids.shape[1], ids.shape[0], p.config.hidden_size, dtype=p.config.params_dtype)
            p.set_input_tensor(grid.recv_from_prev_stage(hidden))
        out = p(ids, pos, video_embeds=video, inference_context=ctx, runtime_gather_output=True)
        if not p.post_process:
            grid.send_to_next_stage(out)
            return None
        return out

    def _from_last_stage(self, tok, lp):
        """Broadcast the last stage's sampled tokens `[G]` and log-probs `[G]` to every PP stage."""
        last = self._pp() - 1
        return grid.pp_broadcast(tok, last), grid.pp_broadcast(lp, last)

    def _generate_one(self, req: RolloutRequest, sp: SamplingParams) -> RolloutOutput:
        from megatron.core.inference.contexts import StaticInferenceContext

        n, L, T = sp.n, req.prompt_ids.numel(), sp.max_new_tokens
        ids = req.prompt_ids.view(1, L).expand(n, L)
        prompt_pos = req.position_ids.view(3, 1, L).expand(3, n, L)
        pos = torch.cat([prompt_pos, continue_positions(prompt_pos[:, :, -1:], T)], dim=2)
        video = None if req.video_embeds is None else req.video_embeds.repeat(n, 1)
        ctx = StaticInferenceContext(n, L + T)
        logits = self._stage_forward(ids, pos[:, :, :L], video, ctx)
        ctx.sequence_len_offset += L
        stop = torch.tensor(sp.stop_token_ids or [-1])
        out_tok, out_lp = [], []
        done = torch.zeros(n, dtype=torch.bool)
        for t in range(T):
            if logits is not None:
                tok, lp = sample_next(logits[:, -1, :], sp.temperature, sp.top_p, self.generator)
            else:
                tok, lp = torch.zeros(n, dtype=torch.long), torch.zeros(n)
            tok, lp = self._from_last_stage(tok, lp)
            out_tok.append(tok)
            out_lp.append(lp)
            done |= torch.isin(tok, stop)
            if bool(done.all()) or t == T - 1:
                break
            logits = self._stage_forward(tok[:, None], pos[:, :, : L + t + 1], None, ctx)
            ctx.sequence_len_offset += 1
        toks = torch.stack(out_tok, 1)
        lps = torch.stack(out_lp, 1)
        result = RolloutOutput()
        for i in range(n):
            row = toks[i].tolist()
            hit = [j for j, x in enumerate(row) if x in sp.stop_token_ids]
            end = hit[0] + 1 if hit else len(row)
            result.token_ids.append(row[:end])
            result.logprobs.append(lps[i, :end].tolist())
            result.finished.append(bool(hit))
        return result
