"""DA-Aug decisions under DP: each rank draws its shard of the prompts (PromptSampler), scores them with a fixed
fake reward, and asks RLTrainer.assess_difficulty; writes {step: {record id: (direction, guide, perturb)}} and the
final history per rank to OUT/da_aug_dp_rank{r}.json. With no torchrun (one process) it is the DP=1 reference.

    torchrun --nproc-per-node 2 tests/distributed/scripts/da_aug_dp.py OUT [ENABLED]
"""

import json
import sys
import types
import zlib

from dvr1.config import load_config
from dvr1.data.sampler import PromptSampler
from dvr1.parallel import grid
from dvr1.parallel.setup import destroy_parallel, init_parallel
from dvr1.rl.difficulty import DifficultyController, RewardHistory
from dvr1.train.rl import RLTrainer

B, STEPS = 4, 6
RECORDS = [types.SimpleNamespace(id=f"r{i}") for i in range(12)]


def reward(record_id: str, step: int) -> float:
    """A deterministic group-mean reward in [0, 2] per (record, step)."""
    return (zlib.crc32(f"{record_id}:{step}".encode()) % 2001) / 1000.0


def run(out_dir: str, enabled: bool = True) -> dict:
    init_parallel(tp=1, pp=1, seed=0)
    dp_rank, dp = grid.dp_layout()
    t = object.__new__(RLTrainer)
    # window 5 < B * steps and not a multiple of B: which values fall out of the window depends on their order
    t.cfg = load_config(None, ["da_aug.window=5", "da_aug.margin=0.05", f"da_aug.enabled={str(enabled).lower()}"])
    t.history = RewardHistory(t.cfg.da_aug.window)
    t.controller = DifficultyController(t.cfg.da_aug, t.history)
    sampler = PromptSampler(RECORDS, seed=3, dp_rank=dp_rank, dp_size=dp)
    result = {"steps": {}, "dp": dp}
    for step in range(STEPS):
        recs = [sampler.next() for _ in range(B // dp)]
        decisions = t.assess_difficulty([reward(r.id, step) for r in recs])
        result["steps"][str(step)] = {r.id: None if decisions is None else
                                      [d.direction, d.guide_level, round(d.perturb_level, 12)]
                                      for r, d in zip(recs, decisions or [None] * len(recs))}
    result["history"] = t.history.state_dict()
    with open(f"{out_dir}/da_aug_dp_rank{grid.global_rank()}.json", "w") as f:
        json.dump(result, f)
    destroy_parallel()
    return result


if __name__ == "__main__":
    run(sys.argv[1], len(sys.argv) < 3 or sys.argv[2] == "true")
