"""CoTasks inputs and SFT (VidChain; ALGORITHMS §7).

:class:`ChainInputs` turns (record, chain, turn k, earlier answers) into a `dvr1.train.inputs.Prepared` whose prompt
is the multi-turn chat of :func:`dvr1.vidchain.cotasks.multiturn_prompt` (video in the first user turn). The video
is decoded and encoded once per record by the shared `InputBuilder` (frozen vision tower) and cached here.

:class:`CoTasksSFTTrainer`: teacher-forced SFT on every turn of a chain: the prompt of turn k holds the ground-truth
answers of turns < k, the target is turn k's answer + ``<|im_end|>``; loss = mean NLL per target token through
`dvr1.parallel.forward.forward_backward` (the RL log-prob path). Summed over turns this is the NLL of all assistant
turns of the conversation.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict

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
    """Multi-turn CoTasks prompts for one policy (`builder`: `dvr1.train.inputs.InputBuilder`)."""

    def __init__(self, builder, cache_size: int = 4096):
        self.builder = builder
        self.tok = builder.tokenizer
        self.info = builder.info
        self._embeds: OrderedDict = OrderedDict()
        self.cache_size = cache_size

    def _video(self, record):
        vin = self.builder.video(record)
        if record.id not in self._embeds:
            self._embeds[record.id] = self.builder.encode(vin.video)
            while len(self._embeds) > self.cache_size:
                self._embeds.popitem(last=False)
        embeds, grid = self._embeds[record.id]
        return embeds, grid, vin.second_per_grid

    def turns(self, record, chain: str, event: int | None = None) -> list[Turn]:
        """Ground-truth turns of ``chain`` for ``record`` (``"ground"`` uses event index ``event``)."""
        if chain == "ground":
            e = 0 if event is None else event
            return chain_turns(chain, [record.events[e]], [record.captions[e]], record.duration)
        return chain_turns(chain, record.events, record.captions, record.duration)

    def prepare(self, record, turns: list[Turn], k: int) -> Prepared:
        """Prompt for turn ``k`` with ``turns[:k]`` answers as the history.

        Returns: `Prepared` (prompt ids int64 ``[L]``, mrope positions ``[3, L]``, video embeds ``[V, hidden]``).
        Raises: `dvr1.data.video.VideoError` for an unreadable video.
        """
        embeds, grid, spg = self._video(record)
        text = multiturn_prompt(turns, k, num_video_tokens(grid[0], self.info.merge_size))
        ids = torch.tensor(self.tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        pos = get_rope_index(ids.view(1, -1), self.info.video_token_id, grid, [spg], self.info.merge_size,
                             self.info.tokens_per_second, self.info.mrope_rule)[:, 0]
        req = RolloutRequest(prompt_ids=ids, position_ids=pos, video_embeds=embeds, video_grid_thw=grid,
                             second_per_grid=spg)
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
                out.append((self.inputs.prepare(rec, turns, k), self.inputs.answer_ids(t.answer, self.eos)))
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
