"""CoTasks inputs and SFT (VidChain; ALGORITHMS §7).

:class:`ChainInputs` turns (record, chain, turn k, earlier answers) into a `dvr1.train.inputs.Prepared` whose prompt
is the multi-turn chat of :func:`dvr1.vidchain.cotasks.multiturn_prompt` (video in the first user turn). The video
comes from the shared `InputBuilder` (`InputBuilder.clip_inputs`): decoded once per clip, its embeddings cached under
the tower's version, so a frozen tower encodes each clip once and a trained one (`sft.freeze_vision` /
`rl.freeze_vision` / `model.freeze_vision` = false) once per clip and update; with a trained tower every request also
carries the clip's pixel values, and the training pass runs the tower with gradients.

:class:`CoTasksSFTTrainer`: teacher-forced SFT on every turn of a chain: the prompt of turn k holds the ground-truth
answers of turns < k, the target is turn k's answer + ``<|im_end|>``; loss = mean NLL per target token through
`dvr1.parallel.forward.forward_backward` (the RL log-prob path). Summed over turns this is the NLL of all assistant
turns of the conversation. With a trained tower the SFT rows carry pixel values only (``embed=False``: the pass
encodes them), so the tower + merger get gradients.
"""

from __future__ import annotations

import logging
import random

import torch

from dvr1.data.processing import num_video_tokens
from dvr1.models.rope import get_rope_index
from dvr1.parallel.forward import forward_backward
from dvr1.parallel.grid import broadcast_from_last_stage
from dvr1.rollout.base import RolloutRequest
from dvr1.train.inputs import Prepared, build_batch
from dvr1.vidchain.cotasks import Turn, chain_turns, multiturn_prompt

log = logging.getLogger(__name__)


class ChainInputs:
    """Multi-turn CoTasks prompts for one policy (`builder`: `dvr1.train.inputs.InputBuilder`, which owns the clip and
    embedding caches)."""

    def __init__(self, builder):
        self.builder = builder
        self.tok = builder.tokenizer
        self.info = builder.info

    def turns(self, record, chain: str, event: int | None = None) -> list[Turn]:
        """Ground-truth turns of ``chain`` for ``record`` (``"ground"`` uses event index ``event``)."""
        if chain == "ground":
            e = 0 if event is None else event
            return chain_turns(chain, [record.events[e]], [record.captions[e]], record.duration)
        return chain_turns(chain, record.events, record.captions, record.duration)

    def prepare(self, record, turns: list[Turn], k: int, embed: bool = True) -> Prepared:
        """Prompt for turn ``k`` with ``turns[:k]`` answers as the history.

        ``embed=False``: no no-grad video embeddings when the tower trains (a training pass that encodes the pixel
        values itself: SFT); ignored for a frozen tower (`InputBuilder.clip_inputs`).
        Returns: `Prepared` (prompt ids int64 ``[L]``, mrope positions ``[3, L]``, video embeds ``[V, hidden]`` or
        None, and with a trained tower the clip's ``pixel_values_videos``).
        Raises: `dvr1.data.video.VideoError` for an unreadable video.
        """
        embeds, grid, pixels, spg = self.builder.clip_inputs(record, embed)
        text = multiturn_prompt(turns, k, num_video_tokens(grid[0], self.info.merge_size))
        ids = torch.tensor(self.tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        pos = get_rope_index(ids.view(1, -1), self.info.video_token_id, grid, [spg], self.info.merge_size,
                             self.info.tokens_per_second, self.info.mrope_rule)[:, 0]
        req = RolloutRequest(prompt_ids=ids, position_ids=pos, video_embeds=embeds, video_grid_thw=grid,
                             second_per_grid=spg, pixel_values_videos=pixels)
        return Prepared(record, text, req, grid, spg, self.info.video_token_id)

    def answer_ids(self, text: str, eos: int) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] + [eos]


class CoTasksSFTTrainer:
    """One `step()` = ``batch_size`` records, each with a random chain from ``chains``, all of its turns as rows.

    Args: model/optimizer/scheduler from `dvr1.train.job.optimizer_for`; inputs: :class:`ChainInputs`;
    records: `DenseCaptionRecord` list; chains: chain names; seed: sampling seed (state is resumable).
    """

    def __init__(self, model, optimizer, scheduler, inputs: ChainInputs, records, chains, batch_size: int,
                 seed: int = 0):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.inputs, self.records, self.chains, self.batch_size = inputs, list(records), list(chains), batch_size
        self.rng = random.Random(seed)
        self.eos = inputs.tok.convert_tokens_to_ids("<|im_end|>")
        self.pad = inputs.tok.convert_tokens_to_ids("<|endoftext|>")

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, s: dict) -> None:
        self.rng.setstate(s["rng"])

    def items(self) -> list:
        out = []
        for _ in range(self.batch_size):
            rec = self.records[self.rng.randrange(len(self.records))]
            chain = self.chains[self.rng.randrange(len(self.chains))]
            turns = self.inputs.turns(rec, chain, self.rng.randrange(len(rec.events)))
            for k, t in enumerate(turns):
                # a trained tower encodes the clip inside the training pass (no rollout needs no-grad embeddings)
                prepared = self.inputs.prepare(rec, turns, k, embed=False)
                out.append((prepared, self.inputs.answer_ids(t.answer, self.eos)))
        return out

    def step(self) -> dict:
        batch = build_batch(self.items(), self.pad)
        n_tok = batch.resp_mask.sum()

        def loss_fn(logp, _entropy, *_rows):
            return -(logp * batch.resp_mask).sum() / n_tok, {}

        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        res = forward_backward(self.model, batch, loss_fn, forward_only=False)
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(1)
        loss = broadcast_from_last_stage(None if res is None else float(res.loss))
        return {"loss": loss, "grad_norm": float(grad_norm or 0.0), "lr": self.optimizer.param_groups[0]["lr"],
                "tokens": float(n_tok)}
