"""Native rollout engine: KV-cache sampling over the megatron-core policy itself.

All prompts of a call are decoded in one batch. One prefill runs over the B prompts, left-padded to the longest
(padding slots are never attended), and its KV cache is repeated for the G responses of each prompt; then one token
per step for the B*G rows (prompt-major: row b*G + g is response g of prompt b). A row that emits a stop token leaves
the batch, and its cache rows are dropped.

The forward is megatron-core's own, the one the trainer runs (`GPTModel` -> `TransformerBlock` -> `TransformerLayer`:
QKV projection, mrope, output projection, MLP, TP collectives), with one module swapped for the duration of a call:
each layer's core attention becomes `_CachedAttention`, which writes the step's keys and values (RoPE already
applied) into `KVCache` and attends over the cache with `torch.nn.functional.scaled_dot_product_attention`.
Why not megatron-core's `StaticInferenceContext`: it caches keys *before* RoPE, so each decode step rotates the whole
cache again in every layer (`transformer/attention.py`, `_adjust_key_value_for_inference` slices
`k_pos_emb[:sequence_end]`, then `apply_rotary_pos_emb` over all cached keys), and copies the GQA groups out to the
query heads; that was most of a decode step at 32 rows (docs/BENCHMARKS.md). Its dynamic context asserts
flash-attn >= 2.7.3 (CUDA only).

Under TP every rank runs the same loop with the same generator state, so all TP ranks sample the same tokens
(logits are gathered over the vocabulary for sampling only) and drop the same rows. Under PP each stage runs its
layers with its own KV cache; activations `[tokens, rows, hidden]` go stage to stage (point-to-point over the PP
group), the last stage samples, and the sampled tokens and their log-probs are broadcast back to every stage before
the next decode step.

Sequence parallel: `generate` runs with SP switched off (`Qwen25VLPolicy.sequence_parallel_off`; same TP math,
activations replicated over TP): a decode step holds one token per row, which cannot be split over the sequence, and
the no-grad prefill keeps only one layer's activations alive, so SP would save little there.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dvr1.models.rope import continue_positions
from dvr1.parallel import grid
from dvr1.rollout.base import RolloutOutput, RolloutRequest, SamplingParams, sample_next


class KVCache:
    """The key/value cache of one `generate` call, shared by every layer of this stage.

    Per layer, keys and values `[rows, groups/tp, capacity, head_dim]` (RoPE applied to the keys). Rows are
    left-padded: `start` int64 `[rows]` is the first real slot of each row; `length` slots are filled, the same
    for every row. `mask` / `causal` are the attention mask of the forward in progress (see `begin`).
    """

    def __init__(self, start: torch.Tensor, capacity: int, device=None):
        self.start, self.capacity, self.length = start.to(device), capacity, 0
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.mask, self.causal = None, False

    def begin(self, new: int) -> None:
        """Before a forward over `new` tokens per row: the mask every layer uses. Query slot i sees key slots
        j <= i from the row's `start` on; a padding slot sees only itself (a fully masked row would give NaN)."""
        end = self.length + new
        self.causal = self.length == 0 and new > 1 and not bool(self.start.any())
        if self.causal or (new == 1 and not bool(self.start.any())):
            self.mask = None
            return
        keys = torch.arange(end, device=self.start.device)
        queries = torch.arange(self.length, end, device=self.start.device)
        real = keys[None, None, :] >= self.start[:, None, None]  # [rows, 1, end]
        self.mask = ((keys[None, :] <= queries[:, None]) & (real | (keys[None, :] == queries[:, None])))[:, None]

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor):
        """Store `key`, `value` `[new, rows, groups, head_dim]` at slots [length, length + new); returns the layer's
        filled cache `[rows, groups, length + new, head_dim]` (keys, values)."""
        if layer not in self.kv:
            rows, groups = key.shape[1], key.shape[2]
            self.kv[layer] = (key.new_empty(rows, groups, self.capacity, key.shape[3]),
                              value.new_empty(rows, groups, self.capacity, value.shape[3]))
        k, v = self.kv[layer]
        end = self.length + key.shape[0]
        k[:, :, self.length:end] = key.permute(1, 2, 0, 3)
        v[:, :, self.length:end] = value.permute(1, 2, 0, 3)
        return k[:, :, :end], v[:, :, :end]

    def advance(self, new: int) -> None:
        self.length += new

    def repeat_rows(self, n: int) -> None:
        """Each row becomes `n` consecutive rows (one prompt's prefill serves its G responses)."""
        self.start = self.start.repeat_interleave(n)
        self.kv = {i: (k.repeat_interleave(n, 0), v.repeat_interleave(n, 0)) for i, (k, v) in self.kv.items()}

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (int64 indices, ascending): finished responses leave the batch."""
        rows = rows.to(self.start.device)
        self.start = self.start[rows]
        self.kv = {i: (k[rows], v[rows]) for i, (k, v) in self.kv.items()}


class _CachedAttention(torch.nn.Module):
    """Stands in for one layer's core attention during `generate`: same call and result shapes as megatron-core's
    `DotProductAttention` (query `[new, rows, heads/tp, head_dim]`, key/value `[new, rows, groups/tp, head_dim]`
    -> `[new, rows, heads/tp * head_dim]`), attending over the cached keys and values. The `attention_mask` argument
    is ignored: the cache holds the mask."""

    def __init__(self, cache: KVCache, layer: int, scale: float):
        super().__init__()
        self.cache, self.layer, self.scale = cache, layer, scale

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        k, v = self.cache.append(self.layer, key, value)
        out = F.scaled_dot_product_attention(query.permute(1, 2, 0, 3), k, v, attn_mask=self.cache.mask,
                                             is_causal=self.cache.causal, scale=self.scale, enable_gqa=True)
        return out.permute(2, 0, 1, 3).reshape(query.shape[0], query.shape[1], -1)


@contextmanager
def _cached_attention(policy, cache: KVCache):
    """Swap every local layer's core attention for a `_CachedAttention` on `cache`; restored on exit."""
    saved = []
    try:
        for i, layer in enumerate(policy.lm.decoder.layers):
            attn = layer.self_attention
            core = attn.core_attention
            scale = getattr(core, "softmax_scale", None) or policy.config.kv_channels ** -0.5
            saved.append((attn, core))
            attn.core_attention = _CachedAttention(cache, i, scale)
        yield
    finally:
        for attn, core in saved:
            attn.core_attention = core


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
        if not requests:
            return []
        was_training = self.policy.training
        self.policy.eval()
        try:
            with self.policy.sequence_parallel_off():  # a decode step's one token per row cannot be split over TP
                return self._generate(requests, sampling, desc)
        finally:
            self.policy.train(was_training)

    def _device(self) -> torch.device:
        """Where the policy's weights are (``cuda:N`` under CUDA, else ``cpu``)."""
        return next(self.policy.parameters()).device

    # ---- pipeline parallel plumbing (no-ops at PP=1) -----------------------------------------------------------
    def _pp(self):
        return grid.pp_layout()[1]

    def _stage_forward(self, ids, pos, video, video_mask):
        """This stage's layers on `ids` `[rows, new]`; returns the final hidden states `[new, rows, hidden]` on the
        last stage, else None."""
        p = self.policy
        if self._pp() == 1:
            return p(ids, pos, video_embeds=video, video_mask=video_mask, return_hidden=True)
        if not p.pre_process:
            hidden = torch.empty(ids.shape[1], ids.shape[0], p.config.hidden_size, dtype=p.config.params_dtype,
                                 device=ids.device)
            p.set_input_tensor(grid.recv_from_prev_stage(hidden))
        out = p(ids, pos, video_embeds=video, video_mask=video_mask, return_hidden=True)
        if not p.post_process:
            grid.send_to_next_stage(out)
            return None
        return out

    def _from_last_stage(self, tok, lp):
        """Broadcast the last stage's sampled tokens `[rows]` and log-probs `[rows]` to every PP stage."""
        last = self._pp() - 1
        return grid.pp_broadcast(tok, last), grid.pp_broadcast(lp, last)

    def _next_logits(self, ids, pos, cache: KVCache, video=None, video_mask=None):
        """One forward of `ids` `[rows, new]` through the cache; the last position's logits `[rows, vocab]` (full
        vocabulary, gathered over TP) on the last stage, else None."""
        cache.begin(ids.shape[1])
        dev = cache.start.device  # the policy's device; the sampler's bookkeeping and sampling stay on the CPU
        hidden = self._stage_forward(ids.to(dev), pos.to(dev), None if video is None else video.to(dev),
                                     None if video_mask is None else video_mask.to(dev))
        cache.advance(ids.shape[1])
        if hidden is None:
            return None
        logits, _ = self.policy.lm.output_layer(hidden[-1:], weight=self.policy.output_weight(),
                                                runtime_gather_output=True)
        return logits[0].float().cpu()

    def _sample(self, logits, rows: int, sp: SamplingParams):
        if logits is not None:
            tok, lp = sample_next(logits, sp.temperature, sp.top_p, self.generator)
        else:
            tok, lp = torch.zeros(rows, dtype=torch.long), torch.zeros(rows)
        return self._from_last_stage(tok, lp)

    def _prompt_batch(self, requests: list[RolloutRequest]):
        """Left-padded prompts: ids `[B, L]`, positions `[3, B, L]`, first real slot `[B]`, video embeddings in row
        order and the mask of the slots they fill `[B, L]` (None, None without video)."""
        lens = torch.tensor([r.prompt_ids.numel() for r in requests])
        L = int(lens.max())
        start = L - lens
        ids = torch.zeros(len(requests), L, dtype=torch.long)
        pos = torch.zeros(3, len(requests), L, dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, start[i]:] = r.prompt_ids
            pos[:, i, start[i]:] = r.position_ids
        embeds = [r.video_embeds for r in requests if r.video_embeds is not None]
        if not embeds:
            return ids, pos, start, None, None
        has_video = torch.tensor([r.video_embeds is not None for r in requests])
        real = torch.arange(L)[None, :] >= start[:, None]
        video_mask = (ids == self.policy.info.video_token_id) & real & has_video[:, None]
        return ids, pos, start, torch.cat(embeds), video_mask

    def _generate(self, requests: list[RolloutRequest], sp: SamplingParams, desc: str) -> list[RolloutOutput]:
        B, n, T = len(requests), sp.n, sp.max_new_tokens
        ids, pos, start, video, video_mask = self._prompt_batch(requests)
        after = continue_positions(pos[:, :, -1:], T).repeat_interleave(n, 1)  # [3, B*n, T]
        stop = torch.tensor(list(sp.stop_token_ids), dtype=torch.long)
        toks = torch.zeros(B * n, T, dtype=torch.long)
        lps = torch.zeros(B * n, T)
        length = torch.full((B * n,), T)
        finished = torch.zeros(B * n, dtype=torch.bool)
        rows = torch.arange(B * n)  # the output row of each row still decoding
        cache = KVCache(start, ids.shape[1] + T, device=self._device())
        with _cached_attention(self.policy, cache):
            logits = self._next_logits(ids, pos, cache, video, video_mask)
            cache.repeat_rows(n)
            if logits is not None:
                logits = logits.repeat_interleave(n, 0)
            for t in tqdm(range(T), desc=desc, leave=False, disable=not self.progress):
                tok, lp = self._sample(logits, rows.numel(), sp)
                toks[rows, t], lps[rows, t] = tok, lp
                done = torch.isin(tok, stop)
                finished[rows[done]] = True
                length[rows[done]] = t + 1
                if t == T - 1 or bool(done.all()):
                    break
                if bool(done.any()):
                    keep = (~done).nonzero().squeeze(1)
                    rows, tok = rows[keep], tok[keep]
                    cache.keep(keep)
                logits = self._next_logits(tok[:, None], after[:, rows, t:t + 1], cache)
        outputs = []
        for b in range(B):
            out = RolloutOutput()
            for i in range(b * n, (b + 1) * n):
                k = int(length[i])
                out.token_ids.append(toks[i, :k].tolist())
                out.logprobs.append(lps[i, :k].tolist())
                out.finished.append(bool(finished[i]))
            outputs.append(out)
        return outputs
