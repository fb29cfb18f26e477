"""An ablation grid file, parsed and checked, and its runs (arm x seed -> run directory and `dvr1` overrides).

The YAML format is in :mod:`dvr1.ablate` and docs/ABLATIONS.md; `dvr1.ablate.runner` executes the runs,
`dvr1.ablate.report` reads what they left.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import yaml

RUN_RECORD = "ablate_run.json"  # per run: arm, seed, overrides, attempts [{stage, rc, wall_s}], status
_KEYS = {"name", "base", "out", "overrides", "sft", "arms", "seeds", "paper_order", "launcher", "slurm", "task"}
# what a run trains, and where it leaves its results: "rl" (`dvr1 train` + `dvr1 eval`; the SFT is `dvr1 sft`) or
# "vidchain" (`dvr1 vidchain --init` = M-DPO + its DVC/grounding eval; the SFT is `dvr1 vidchain --stop-after sft`)
TASKS = {
    "rl": {"stage": "rl", "eval": "eval_rl.json", "sft_stage": "sft", "sft_eval": "eval_sft.json"},
    "vidchain": {"stage": "vidchain_mdpo", "eval": "eval_vidchain_mdpo.json", "sft_stage": "vidchain_sft",
                 "sft_eval": "eval_vidchain_sft.json"},
}
_SFT_KEYS = {"init", "overrides", "eval"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_RESERVED = ("run_dir", "seed")  # set by the runner per run


class GridError(ValueError):
    """A grid YAML (or a run directory it points at) is invalid; the message names the file and the field."""


@dataclass
class Grid:
    """A parsed grid file. `arms` keeps the YAML order; paths are as written (relative to the cwd)."""

    name: str
    path: str
    base: str
    out: str
    overrides: list[str]
    arms: dict[str, list[str]]
    seeds: list[int]
    sft_init: Optional[str] = None
    sft_overrides: list[str] = field(default_factory=list)
    sft_eval: bool = True
    paper_order: Optional[list[str]] = None
    launcher: Optional[str] = None
    slurm: dict = field(default_factory=dict)
    task: str = "rl"  # a key of TASKS

    @property
    def sft_dir(self) -> str:
        """Run directory of the shared SFT stage (tiny checkpoint, SFT checkpoint, eval_sft.json)."""
        return os.path.join(self.out, "sft")

    @property
    def sft_hf(self) -> str:
        """HF checkpoint every arm starts from (and uses as its reference policy)."""
        return self.sft_init or os.path.join(self.sft_dir, TASKS[self.task]["sft_stage"], "hf")

    @property
    def sft_eval_path(self) -> str:
        """The shared SFT model's eval JSON (`eval_sft.json`; VidChain: `eval_vidchain_sft.json`)."""
        return os.path.join(self.sft_dir, TASKS[self.task]["sft_eval"])


@dataclass
class Run:
    """One arm x seed. `overrides` = shared + arm + `seed=k` + `run_dir=...` (the exact `dvr1` config overrides)."""

    arm: str
    seed: int
    run_dir: str
    overrides: list[str]
    task: str = "rl"

    @property
    def stage(self) -> str:
        """The trained stage's name: its directory under run_dir and its metrics/<stage>.jsonl."""
        return TASKS[self.task]["stage"]

    @property
    def eval_path(self) -> str:
        return os.path.join(self.run_dir, TASKS[self.task]["eval"])

    @property
    def hf_dir(self) -> str:
        return os.path.join(self.run_dir, self.stage, "hf")


# ---- grid file -> runs ----------------------------------------------------------------------------------------

def _overrides(value, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise GridError(f"{where}: expected a list of key=value strings, got {type(value).__name__}")
    for i, o in enumerate(value):
        if not isinstance(o, str) or "=" not in o or o.startswith("="):
            raise GridError(f"{where}[{i}]: {o!r} is not a key=value override")
        if o.split("=", 1)[0].strip() in _RESERVED:
            raise GridError(f"{where}[{i}]: {o!r}: the ablation runner sets {' and '.join(_RESERVED)} per run")
    return list(value)


def load_grid(path: str, out: Optional[str] = None, extra_overrides: Optional[list[str]] = None) -> Grid:
    """Parse and check a grid YAML. `out` replaces the file's `out`; `extra_overrides` are appended to `overrides`.

    Raises GridError naming the file and the field (unknown key, bad arm name, empty arms/seeds, duplicate seed,
    a `run_dir`/`seed` override, a `paper_order` arm that is not in `arms`, a missing base config).
    """
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise GridError(f"{path}: no such grid file") from None
    except yaml.YAMLError as e:
        raise GridError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise GridError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise GridError(f"{path}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_KEYS))})")
    for key in ("base", "arms", "seeds"):
        if key not in doc:
            raise GridError(f"{path}: missing required key {key!r}")
    name = str(doc.get("name") or os.path.splitext(os.path.basename(path))[0])
    base = doc["base"]
    if not isinstance(base, str) or not os.path.exists(base):
        raise GridError(f"{path}: base: config {base!r} does not exist (paths are relative to the cwd, {os.getcwd()})")
    arms = doc["arms"]
    if not isinstance(arms, dict) or not arms:
        raise GridError(f"{path}: arms: expected a non-empty mapping name -> [key=value, ...]")
    for a in arms:
        if not isinstance(a, str) or not _NAME_RE.match(a) or a == "sft":
            raise GridError(f"{path}: arms: {a!r} is not a valid arm name (letters, digits, _.+-; not 'sft')")
    seeds = doc["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in seeds):
        raise GridError(f"{path}: seeds: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise GridError(f"{path}: seeds: duplicate seed in {seeds}")
    sft = doc.get("sft") or {}
    if not isinstance(sft, dict) or set(sft) - _SFT_KEYS:
        raise GridError(f"{path}: sft: expected a mapping with keys {', '.join(sorted(_SFT_KEYS))}")
    order = doc.get("paper_order")
    if order is not None:
        if not isinstance(order, list) or not all(o in arms for o in order) or len(set(order)) != len(order):
            raise GridError(f"{path}: paper_order: {order!r} must list distinct arm names from arms")
    slurm = doc.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise GridError(f"{path}: slurm: expected a mapping of sbatch options")
    task = doc.get("task", "rl")
    if task not in TASKS:
        raise GridError(f"{path}: task: {task!r} must be one of {', '.join(TASKS)}")
    if task != "rl" and order is not None:
        raise GridError(f"{path}: paper_order: the ordering check is by RL accuracy; a {task} grid has none")
    return Grid(name=name, path=path, base=base, out=out or doc.get("out") or os.path.join("runs", "ablate", name),
                overrides=_overrides(doc.get("overrides"), f"{path}: overrides") + list(extra_overrides or []),
                arms={a: _overrides(v, f"{path}: arms.{a}") for a, v in arms.items()}, seeds=list(seeds),
                sft_init=sft.get("init"), sft_overrides=_overrides(sft.get("overrides"), f"{path}: sft.overrides"),
                sft_eval=bool(sft.get("eval", True)), paper_order=order, launcher=doc.get("launcher"),
                slurm=dict(slurm), task=task)


def expand_grid(grid: Grid) -> list[Run]:
    """All runs, arm-major in the YAML's arm order, then seeds in the listed order (deterministic)."""
    return [Run(arm, s, os.path.join(grid.out, arm, f"seed{s}"),
                grid.overrides + ov + [f"seed={s}", f"run_dir={os.path.join(grid.out, arm, f'seed{s}')}"], grid.task)
            for arm, ov in grid.arms.items() for s in grid.seeds]


def check_configs(grid: Grid) -> None:
    """Load every run's (and the SFT's) config with `dvr1.config.load_config`, so a bad key fails before any run.

    Raises GridError naming the grid file, the arm and OmegaConf's / ConfigError's message.
    """
    from dvr1.config import load_config

    checks = [("sft", grid.overrides + grid.sft_overrides + [f"run_dir={grid.sft_dir}"])]
    checks += [(f"arms.{r.arm} (seed {r.seed})", r.overrides) for r in expand_grid(grid)]
    for where, ov in checks:
        try:
            load_config(grid.base, ov)
        except Exception as e:  # OmegaConf's errors name the key; keep its message
            first = (str(e).strip().splitlines() or [""])[0]
            raise GridError(f"{grid.path}: {where}: {type(e).__name__}: {first}") from None


def read_record(run_dir: str) -> Optional[dict]:
    """The run's `RUN_RECORD` (written by the runner), or None when the run never started."""
    p = os.path.join(run_dir, RUN_RECORD)
    return json.load(open(p)) if os.path.exists(p) else None
