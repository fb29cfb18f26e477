"""Which training records a step draws: an epoch-wise random order, resumable, sharded over data-parallel ranks.

Used by every training stage (SFT, RL, VidChain's CoTasks SFT and M-DPO).
"""

from __future__ import annotations

import torch

from dvr1.data.schema import NoUsableRecords


class PromptSampler:
    """Epoch-wise random order over records, resumable, sharded over data-parallel ranks.

    Every rank draws the same permutation (same seed); DP rank r takes positions r, r + dp, r + 2dp, ... so the DP
    ranks see disjoint prompts and TP/PP ranks of one DP rank see the same ones. State = (epoch, position, order,
    generator). Records whose video fails to load are reported once and dropped for the rest of the run; when all are,
`next` raises `dvr1.data.schema.NoUsableRecords` (a RuntimeError).
    """

    def __init__(self, records, seed: int, dp_rank: int = 0, dp_size: int = 1):
        self.records = list(records)
        if len(self.records) < dp_size:
            raise ValueError(f"PromptSampler: {len(self.records)} records cannot be sharded over {dp_size} DP ranks")
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.pos = 0, 0
        self.order = torch.randperm(len(self.records), generator=self.generator).tolist()
        self.bad: set[str] = set()

    def next(self):
        for _ in range(2 * len(self.records) + 2 * self.dp_size):
            if self.pos + self.dp_size > len(self.order):
                self.epoch += 1
                self.pos = 0
                self.order = torch.randperm(len(self.records), generator=self.generator).tolist()
            r = self.records[self.order[self.pos + self.dp_rank]]
            self.pos += self.dp_size
            if r.id not in self.bad:
                return r
        raise NoUsableRecords("PromptSampler: every training record of this rank failed to load")

    @staticmethod
    def global_order(per_rank: list[list]) -> list:
        """The global batch in the order one DP=1 sampler draws it, from each DP rank's draws (in DP-rank order):
        rank r's i-th item is global position ``i * dp + r``. All ranks must hold the same number of items."""
        if len({len(x) for x in per_rank}) > 1:
            raise ValueError(f"PromptSampler.global_order: DP ranks hold different counts {[len(x) for x in per_rank]}")
        return [x for items in zip(*per_rank) for x in items]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "order": self.order, "generator": self.generator.get_state(),
                "bad": sorted(self.bad)}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos, self.order = s["epoch"], s["pos"], list(s["order"])
        self.generator.set_state(s["generator"])
        self.bad = set(s["bad"])
