"""The rollout interface: every engine (native megatron-core sampler, colocated vLLM) is the same call.

    outputs = engine.generate(requests, SamplingParams(n=G, temperature=1.0, max_new_tokens=64))

A request is one prompt (chat-formatted token ids with `<|video_pad|>` placeholders already expanded) and its video;
an output holds the `n` sampled responses as token ids (ending with the stop token when one was produced) and the
engine's own per-token log-probs. The trainer always recomputes old-policy log-probs itself (ALGORITHMS §3: the
loss never uses an engine's numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch


@dataclass
class SamplingParams:
    """n: responses per prompt (the group size G); temperature 0 = greedy; top_p nucleus mass in (0, 1];
    max_new_tokens: response budget in tokens; stop_token_ids: generation ends after any of these."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop_token_ids: tuple[int, ...] = ()


@dataclass
class RolloutRequest:
    """prompt_ids: int64 `[prompt_len]`; position_ids: int64 `[3, prompt_len]` (mrope, `dvr1.models.rope`);
    video_embeds: `[num_video_tokens, hidden]` from the policy's vision tower (no gradients); video_grid_thw: int64
    `[1, 3]` patch grid and second_per_grid: seconds per temporal grid step (engines that compute mrope positions
    themselves, vLLM, need both); pixel_values_videos `[patches, 1176]`: set by `dvr1.train.inputs.InputBuilder` when
    the policy trains its tower (`model.freeze_vision=false`), so the training pass can encode the clip with
    gradients; the rollout engines sample from `video_embeds`."""

    prompt_ids: torch.Tensor
    position_ids: torch.Tensor
    video_embeds: Optional[torch.Tensor] = None
    pixel_values_videos: Optional[torch.Tensor] = None
    video_grid_thw: Optional[torch.Tensor] = None
    second_per_grid: Optional[float] = None


@dataclass
class RolloutOutput:
    """token_ids: n lists of response token ids; logprobs: n lists (same lengths) of the engine's log-probs of each
    sampled token under the untempered policy; finished: whether a stop token ended the response."""

    token_ids: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)


class RolloutEngine(Protocol):
    def generate(self, requests: list[RolloutRequest], sampling: SamplingParams,
                 desc: str = "rollout") -> list[RolloutOutput]:
        """One `RolloutOutput` per request, in order (`desc` labels the progress bar)."""

    def sync_weights(self, policy) -> float:
        """Refit the engine with the policy's current weights; returns seconds spent (0 for the native engine)."""
        ...

    def sleep(self) -> None:
        """Release accelerator memory until the next `generate` (vLLM on GPUs); a no-op where nothing is held."""
        ...

    def state_dict(self) -> dict:
        ...

    def load_state_dict(self, state: dict) -> None:
        ...


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator):
    """Sample one token per row.

    Args:
        logits: float `[batch, vocab]` (full vocabulary, fp32).
        temperature: 0 = greedy (argmax); otherwise logits / temperature.
        top_p: keep the smallest set of tokens whose probability mass reaches top_p (nucleus sampling).
    Returns:
        (token ids int64 `[batch]`, their log-probs under the untempered distribution, float32 `[batch]`).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    if temperature <= 0:
        tok = logits.argmax(dim=-1)
    else:
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        if top_p < 1.0:
            sorted_p, idx = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the top token
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
