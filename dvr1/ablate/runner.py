"""Ablation grids: arms (config overrides) x seeds -> runs -> one table and the paper's plots (DVR1 Table 4, Fig. 3).

A grid YAML (see `examples/ablations/*.yaml`, docs/ABLATIONS.md):

    name: paper_table4
    base: examples/tiny_cpu.yaml          # `dvr1` config every run starts from (path relative to the cwd)
    out: runs/ablate/paper_table4         # optional; default runs/ablate/<name>
    overrides: [rl.steps=20, log.wandb=false]   # shared by the SFT and every run
    sft: {init: null, overrides: [], eval: true}  # ONE shared SFT checkpoint (or an existing HF dir as `init`)
    arms:                                 # order kept: it is the table's row order
      grpo: [algo.name=grpo, da_aug.enabled=false]
      reg_grpo_da_aug: [algo.name=reg_grpo, da_aug.enabled=true]
    seeds: [0, 1, 2]
    paper_order: [grpo, reg_grpo_da_aug]  # optional: expected ordering, low -> high accuracy (checked in the report)
    launcher: python -m dvr1.cli          # optional: how emitted commands start dvr1 (e.g. torchrun ... -m dvr1.cli)
    slurm: {partition: gpu, time: "04:00:00"}   # optional: `#SBATCH --key=value` lines for --emit sbatch

Every arm x seed is one run directory `<out>/<arm>/seed<k>/`: `dvr1 train --init <sft_hf> <overrides> <arm>
seed=k run_dir=...` then `dvr1 eval --model <run>/rl/hf --name rl` (the RL arms differ only in RL; data and SFT are
shared). Runs execute one subprocess at a time, so a crashed run is recorded (`ablate_run.json`) and the grid goes
on. Rerunning the grid skips runs whose `eval_rl.json` exists, evaluates runs whose `rl/hf` exists, and resumes
runs with a partial `rl/ckpt` (the trainer resumes itself, `dvr1.train.job._train_loop`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import yaml

RUN_RECORD = "ablate_run.json"  # per run: arm, seed, overrides, attempts [{stage, rc, wall_s}], status
_KEYS = {"name", "base", "out", "overrides", "sft", "arms", "seeds", "paper_order", "launcher", "slurm"}
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

    @property
    def sft_dir(self) -> str:
        """Run directory of the shared SFT stage (tiny checkpoint, SFT checkpoint, eval_sft.json)."""
        return os.path.join(self.out, "sft")

    @property
    def sft_hf(self) -> str:
        """HF checkpoint every arm starts from (and uses as its reference policy)."""
        return self.sft_init or os.path.join(self.sft_dir, "sft", "hf")


@dataclass
class Run:
    """One arm x seed. `overrides` = shared + arm + `seed=k` + `run_dir=...` (the exact `dvr1` config overrides)."""

    arm: str
    seed: int
    run_dir: str
    overrides: list[str]

    @property
    def eval_path(self) -> str:
        return os.path.join(self.run_dir, "eval_rl.json")

    @property
    def hf_dir(self) -> str:
        return os.path.join(self.run_dir, "rl", "hf")


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
    return Grid(name=name, path=path, base=base, out=out or doc.get("out") or os.path.join("runs", "ablate", name),
                overrides=_overrides(doc.get("overrides"), f"{path}: overrides") + list(extra_overrides or []),
                arms={a: _overrides(v, f"{path}: arms.{a}") for a, v in arms.items()}, seeds=list(seeds),
                sft_init=sft.get("init"), sft_overrides=_overrides(sft.get("overrides"), f"{path}: sft.overrides"),
                sft_eval=bool(sft.get("eval", True)), paper_order=order, launcher=doc.get("launcher"),
                slurm=dict(slurm))


def expand_grid(grid: Grid) -> list[Run]:
    """All runs, arm-major in the YAML's arm order, then seeds in the listed order (deterministic)."""
    return [Run(arm, s, os.path.join(grid.out, arm, f"seed{s}"),
                grid.overrides + ov + [f"seed={s}", f"run_dir={os.path.join(grid.out, arm, f'seed{s}')}"])
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


# ---- commands --------------------------------------------------------------------------------------------------

def _launcher(grid: Grid, launcher: Optional[str], local: bool) -> list[str]:
    text = launcher or grid.launcher
    if text:
        return shlex.split(text)
    return [sys.executable if local else "python", "-m", "dvr1.cli"]


def sft_commands(grid: Grid, launcher: list[str]) -> list[tuple[str, list[str]]]:
    """[(stage, argv)] of the shared SFT stage: `sft` (unless `sft.init`) and `eval --name sft` (if `sft.eval`)."""
    ov = grid.overrides + grid.sft_overrides + [f"run_dir={grid.sft_dir}"]
    out = []
    if not grid.sft_init:
        out.append(("sft", launcher + ["sft", "-c", grid.base] + ov))
    if grid.sft_eval:
        out.append(("eval_sft", launcher + ["eval", "-c", grid.base, "--model", grid.sft_hf, "--name", "sft"] + ov))
    return out


def run_commands(grid: Grid, run: Run, launcher: list[str]) -> list[tuple[str, list[str]]]:
    """[("train", argv), ("eval", argv)] of one run."""
    return [("train", launcher + ["train", "-c", grid.base, "--init", grid.sft_hf] + run.overrides),
            ("eval", launcher + ["eval", "-c", grid.base, "--model", run.hf_dir, "--name", "rl"] + run.overrides)]


def emit(grid: Grid, fmt: str, launcher: Optional[str] = None) -> str:
    """Shell text for a cluster. fmt="commands": the SFT lines, then one line per run (skipped when its eval JSON
    exists). fmt="sbatch": a Slurm array script, one task per run, to submit after the SFT job (header says how).
    Raises GridError for another fmt."""
    lw = _launcher(grid, launcher, local=False)
    sft = " && ".join(shlex.join(c) for _, c in sft_commands(grid, lw)) or "true"
    lines = []
    for r in expand_grid(grid):
        train, ev = (shlex.join(c) for _, c in run_commands(grid, r, lw))
        lines.append(f"test -f {shlex.quote(r.eval_path)} || {{ {train} && {ev}; }}")
    n = len(lines)
    if fmt == "commands":
        head = [f"# dvr1 ablation grid {grid.name!r}: {n} runs ({len(grid.arms)} arms x {len(grid.seeds)} seeds)",
                "# shared SFT (run first):", sft, "# runs (independent of each other):"]
        return "\n".join(head + lines) + "\n"
    if fmt != "sbatch":
        raise GridError(f"--emit {fmt!r}: must be one of commands, sbatch")
    opts = {"job-name": f"dvr1-{grid.name}", "output": os.path.join(grid.out, "slurm-%A_%a.out")}
    opts.update({str(k): v for k, v in grid.slurm.items()})
    script = ["#!/bin/bash",
              f"# dvr1 ablation grid {grid.name!r}: {n} runs, one array task each ({len(grid.arms)} arms x "
              f"{len(grid.seeds)} seeds).",
              "# 1) the shared SFT:  jid=$(sbatch --parsable " + " ".join(
                  shlex.quote(f"--{k}={v}") for k, v in grid.slurm.items()) + " --wrap " + shlex.quote(sft) + ")",
              "# 2) this array:      sbatch --dependency=afterok:$jid THIS_FILE",
              f"#SBATCH --array=0-{n - 1}"]
    script += [f"#SBATCH --{k}={v}" for k, v in opts.items()]
    script += ["set -euo pipefail", f"mkdir -p {shlex.quote(grid.out)}", "RUNS=("]
    script += [f"  {shlex.quote(l)}" for l in lines]
    script += [")", 'echo "dvr1 ablation task ${SLURM_ARRAY_TASK_ID}: ${RUNS[$SLURM_ARRAY_TASK_ID]}"',
               'eval "${RUNS[$SLURM_ARRAY_TASK_ID]}"']
    return "\n".join(script) + "\n"


# ---- local execution --------------------------------------------------------------------------------------------

def _read_record(run_dir: str) -> Optional[dict]:
    p = os.path.join(run_dir, RUN_RECORD)
    return json.load(open(p)) if os.path.exists(p) else None


def _write_record(run_dir: str, rec: dict) -> None:
    os.makedirs(run_dir, exist_ok=True)
    tmp = os.path.join(run_dir, RUN_RECORD + ".tmp")
    with open(tmp, "w") as f:
        json.dump(rec, f, indent=1)
    os.replace(tmp, os.path.join(run_dir, RUN_RECORD))


def check_resume(grid: Grid) -> None:
    """A run directory made with other overrides or another SFT init must not be resumed or skipped as if it were
    this grid's. Raises GridError naming the run directory and both override lists (or both init paths)."""
    for r in expand_grid(grid):
        rec = _read_record(r.run_dir)
        if rec is not None and rec.get("overrides") != r.overrides:
            raise GridError(f"{r.run_dir}: made with overrides {rec.get('overrides')} but the grid now gives "
                            f"{r.overrides}; use another --out or delete the run directory")
        if rec is not None and rec.get("init", grid.sft_hf) != grid.sft_hf:
            raise GridError(f"{r.run_dir}: trained from {rec['init']} but the grid now starts from {grid.sft_hf}; "
                            "use another --out or delete the run directory")


def _execute(argv: list[str], log_path: str) -> tuple[int, float]:
    """Run `argv` (cwd = this process's cwd), appending stdout+stderr to `log_path`. Returns (rc, wall seconds)."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    t0 = time.time()
    with open(log_path, "a") as f:
        f.write(f"\n$ {shlex.join(argv)}\n")
        f.flush()
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT).returncode
    return rc, time.time() - t0


def _ckpt_step(run_dir: str) -> Optional[str]:
    p = os.path.join(run_dir, "rl", "ckpt", "latest")
    return open(p).read().strip() if os.path.exists(p) else None


def run_sft(grid: Grid, launcher: Optional[str] = None, echo: Callable[[str], None] = print) -> None:
    """The shared SFT stage (skipped when the SFT checkpoint / eval_sft.json exist). Raises GridError if it fails:
    every run depends on it."""
    for stage, argv in sft_commands(grid, _launcher(grid, launcher, local=True)):
        done = (os.path.join(grid.sft_hf, "model.safetensors") if stage == "sft"
                else os.path.join(grid.sft_dir, "eval_sft.json"))
        if os.path.exists(done):
            echo(f"[ablate] {stage}: {done} exists, skipping")
            continue
        echo(f"[ablate] {stage}: {shlex.join(argv)}")
        rc, wall = _execute(argv, os.path.join(grid.sft_dir, "ablate.log"))
        if rc != 0:
            raise GridError(f"{grid.path}: shared {stage} failed (exit {rc}); see {grid.sft_dir}/ablate.log")
        echo(f"[ablate] {stage}: done in {wall / 60:.1f} min")
    if not os.path.exists(os.path.join(grid.sft_hf, "config.json")):
        raise GridError(f"{grid.path}: sft.init: {grid.sft_hf} is not a HF checkpoint directory")


def run_grid(grid: Grid, launcher: Optional[str] = None, arms: Optional[list[str]] = None,
             seeds: Optional[list[int]] = None, echo: Callable[[str], None] = print) -> list[dict]:
    """Execute the grid locally, one subprocess at a time: the shared SFT, then every run's train and eval.

    Skips runs whose eval JSON exists; evaluates without training when `rl/hf` exists; otherwise trains (resuming
    from `rl/ckpt` when there). A failing stage is recorded in `<run_dir>/ablate_run.json` (status
    "failed:<stage>", exit code, wall seconds) and the grid continues. Returns one record per run (dict with arm,
    seed, status: done | skipped | failed:train | failed:eval).
    Raises GridError for an invalid config (checked first), a run dir made with other overrides, or a failed SFT.
    """
    check_configs(grid)
    check_resume(grid)
    for a in arms or []:
        if a not in grid.arms:
            raise GridError(f"--arms: {a!r} is not an arm of {grid.path} ({', '.join(grid.arms)})")
    run_sft(grid, launcher, echo)
    lw = _launcher(grid, launcher, local=True)
    todo = [r for r in expand_grid(grid) if (not arms or r.arm in arms) and (seeds is None or r.seed in seeds)]
    out = []
    for i, r in enumerate(todo):
        tag = f"[ablate {i + 1}/{len(todo)}] {r.arm} seed {r.seed}"
        if os.path.exists(r.eval_path):
            echo(f"{tag}: {r.eval_path} exists, skipping")
            out.append({"arm": r.arm, "seed": r.seed, "status": "skipped"})
            continue
        rec = _read_record(r.run_dir) or {"arm": r.arm, "seed": r.seed, "overrides": r.overrides,
                                            "init": grid.sft_hf, "attempts": []}
        status = "done"
        for stage, argv in run_commands(grid, r, lw):
            if stage == "train" and os.path.exists(os.path.join(r.hf_dir, "model.safetensors")):
                echo(f"{tag}: {r.hf_dir} exists, evaluating only")
                continue
            step = _ckpt_step(r.run_dir) if stage == "train" else None
            echo(f"{tag}: {stage}" + (f" (resuming from RL step {step})" if step else ""))
            rc, wall = _execute(argv, os.path.join(r.run_dir, "ablate.log"))
            rec["attempts"].append({"stage": stage, "rc": rc, "wall_s": wall, "resumed_from": step,
                                    "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - wall))})
            if rc != 0:
                status = f"failed:{stage}"
                echo(f"{tag}: {stage} FAILED (exit {rc}); log: {os.path.join(r.run_dir, 'ablate.log')}")
                break
            echo(f"{tag}: {stage} done in {wall / 60:.1f} min")
        rec["status"] = status
        _write_record(r.run_dir, rec)
        out.append({"arm": r.arm, "seed": r.seed, "status": status})
    return out


# ---- collect + aggregate ---------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """What one run left on disk. status: done (eval JSON) | failed | incomplete (metrics, no eval) | missing."""

    arm: str
    seed: int
    run_dir: str
    status: str
    eval: Optional[dict]
    metrics: list[dict]  # rows of <run_dir>/metrics/rl.jsonl, sorted by step
    wall_s: Optional[float]  # sum of the recorded train + eval subprocess wall seconds (ablate_run.json)


def collect(grid: Grid) -> list[RunResult]:
    """Read every run of the grid (in `expand_grid` order); never raises for a missing or partial run."""
    from dvr1.train.metrics import read_jsonl

    res = []
    for r in expand_grid(grid):
        ev = json.load(open(r.eval_path)) if os.path.exists(r.eval_path) else None
        rows = sorted(read_jsonl(os.path.join(r.run_dir, "metrics", "rl.jsonl")), key=lambda x: x["step"])
        rec = _read_record(r.run_dir)
        wall = sum(a["wall_s"] for a in rec["attempts"]) if rec and rec.get("attempts") else None
        if ev is not None:
            status = "done"
        elif rec and str(rec.get("status", "")).startswith("failed"):
            status = "failed"
        elif rows:
            status = "incomplete"
        else:
            status = "missing"
        res.append(RunResult(r.arm, r.seed, r.run_dir, status, ev, rows, wall))
    return res


def run_values(r: RunResult) -> dict[str, float]:
    """Scalars of one finished run: accuracy, acc/<task>, mean_iou (from the eval JSON, fractions in [0, 1]);
    va_final / va_mean (last-step / mean-over-steps vanishing-advantage ratio, ALGORITHMS §5); wall_min."""
    v = {}
    if r.eval is not None:
        v["accuracy"] = float(r.eval["accuracy"])
        v["mean_iou"] = float(r.eval["mean_iou"])
        for t, d in r.eval.get("per_task", {}).items():
            v[f"acc/{t}"] = float(d["accuracy"])
    va = [row["vanishing_advantage_ratio"] for row in r.metrics if "vanishing_advantage_ratio" in row]
    if va:
        v["va_final"] = float(va[-1])
        v["va_mean"] = float(sum(va) / len(va))
    if r.wall_s is not None:
        v["wall_min"] = r.wall_s / 60.0
    return v


def _mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and SAMPLE std (ddof=1; NaN for one value)."""
    n = len(xs)
    m = sum(xs) / n
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else float("nan")
    return m, s


def aggregate(grid: Grid, results: list[RunResult]) -> dict[str, dict]:
    """Per arm (grid order): {"seeds_done": [k..], "not_done": {status: [k..]}, "values": {metric: {"mean", "std",
    "n", "per_seed": {k: x}}}} over the arm's DONE runs only; std is the sample std (ddof=1), NaN when n = 1."""
    out = {}
    for arm in grid.arms:
        rs = [r for r in results if r.arm == arm]
        done = [r for r in rs if r.status == "done"]
        not_done: dict[str, list[int]] = {}
        for r in rs:
            if r.status != "done":
                not_done.setdefault(r.status, []).append(r.seed)
        per_seed: dict[str, dict[int, float]] = {}
        for r in done:
            for k, x in run_values(r).items():
                per_seed.setdefault(k, {})[r.seed] = x
        values = {}
        for k, d in per_seed.items():
            m, s = _mean_std(list(d.values()))
            values[k] = {"mean": m, "std": s, "n": len(d), "per_seed": d}
        out[arm] = {"seeds_done": [r.seed for r in done], "not_done": not_done, "values": values}
    return out


# ---- report -----------------------------------------------------------------------------------------------------

def _fmt(v: Optional[dict], scale: float = 1.0, digits: int = 1) -> str:
    if not v:
        return "n/a"
    m = f"{v['mean'] * scale:.{digits}f}"
    return m + (f" ± {v['std'] * scale:.{digits}f}" if v["n"] > 1 else " (n=1)")


def _notes(not_done: dict[str, list[int]]) -> str:
    parts = []
    for status, seeds in not_done.items():
        parts.append(f"{status}: seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")
    return "; ".join(parts)


def format_report(grid: Grid, agg: dict, sft_eval: Optional[dict] = None) -> str:
    """The Markdown report: the table (rows = arms; mean ± sample std over seeds), notes, and the ordering check."""
    tasks = sorted({k[4:] for a in agg.values() for k in a["values"] if k.startswith("acc/")}
                   | set((sft_eval or {}).get("per_task", {})))
    head = (["arm", "seeds"] + [f"{t} acc. %" for t in tasks] +
            ["all acc. %", "mean IoU", "VA ratio final", "VA ratio mean", "wall min", "not done"])
    lines = [f"### Ablation `{grid.name}` ({len(grid.arms)} arms x seeds {grid.seeds})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if sft_eval is not None:
        row = ["SFT (no RL; shared init)", "–"]
        row += [f"{100 * sft_eval['per_task'][t]['accuracy']:.1f}" if t in sft_eval["per_task"] else "n/a"
                for t in tasks]
        row += [f"{100 * sft_eval['accuracy']:.1f}", f"{sft_eval['mean_iou']:.3f}", "–", "–", "–", ""]
        lines.append("| " + " | ".join(row) + " |")
    for arm, a in agg.items():
        v = a["values"]
        row = [arm, f"{len(a['seeds_done'])}/{len(grid.seeds)}"]
        row += [_fmt(v.get(f"acc/{t}"), 100) for t in tasks]
        row += [_fmt(v.get("accuracy"), 100), _fmt(v.get("mean_iou"), 1, 3), _fmt(v.get("va_final"), 1, 3),
                _fmt(v.get("va_mean"), 1, 3), _fmt(v.get("wall_min"), 1, 1), _notes(a["not_done"])]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Mean ± sample standard deviation (ddof=1) over the seeds that finished (n=1: no std). Accuracy "
              "in % of the test split (grounding: IoU ≥ 0.5); mean IoU over grounding questions; VA ratio = "
              "fraction of the step's groups whose rewards are all equal (vanishing advantage, DVR1 Fig. 3), at "
              "the last RL step and averaged over steps; wall = train + eval subprocess time of the run."]
    if grid.paper_order:
        lines += ["", ordering_check(grid.paper_order, agg)]
    return "\n".join(lines) + "\n"


def ordering_check(order: list[str], agg: dict) -> str:
    """Whether mean overall accuracy follows `order` (low -> high), with each adjacent pair's gap and seed spread."""
    acc = {a: agg[a]["values"].get("accuracy") for a in order}
    if any(v is None for v in acc.values()):
        return "Paper ordering: not checked (an arm has no finished run)."
    held = all(acc[x]["mean"] < acc[y]["mean"] for x, y in zip(order, order[1:]))
    parts = []
    for x, y in zip(order, order[1:]):
        gap = 100 * (acc[y]["mean"] - acc[x]["mean"])
        spread = 100 * max((acc[z]["std"] for z in (x, y) if acc[z]["n"] > 1), default=float("nan"))
        within = "" if math.isnan(spread) else (" (within the seed std)" if abs(gap) <= spread else
                                                 " (larger than the seed std)")
        parts.append(f"{y} − {x} = {gap:+.1f} pts, max std {spread:.1f}{within}")
    observed = " < ".join(sorted(order, key=lambda a: acc[a]["mean"]))
    return (f"Paper ordering {' < '.join(order)} by mean overall accuracy: **{'held' if held else 'did not hold'}**"
            f" (observed: {observed})." + (" " + "; ".join(parts) + "." if parts else ""))


def _curve(results: list[RunResult], key: str,
           smooth: int) -> tuple[list[int], list[float], list[float], list[float]]:
    """Mean, min and max over seeds per step of `key` (each seed's series first smoothed by a trailing moving
    average of `smooth` steps). Steps held by at least one seed."""
    by_step: dict[int, list[float]] = {}
    for r in results:
        pts = [(row["step"], row[key]) for row in r.metrics if key in row]
        for i, (s, _) in enumerate(pts):
            w = [y for _, y in pts[max(0, i - smooth + 1): i + 1]]
            by_step.setdefault(int(s), []).append(sum(w) / len(w))
    steps = sorted(by_step)
    return (steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], [min(by_step[s]) for s in steps],
            [max(by_step[s]) for s in steps])


def plot_report(grid: Grid, results: list[RunResult], agg: dict, plot_dir: str, smooth: int = 1) -> list[str]:
    """PNGs (matplotlib, Agg): reward_vs_step.png and vanishing_advantage_vs_step.png (per arm: mean over seeds,
    band = min–max over seeds), accuracy_per_arm.png (per task type and overall: bars = mean, error bars = ±1
    sample std, dots = seeds). Only finished runs are drawn. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(plot_dir, exist_ok=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    done = [r for r in results if r.status == "done"]
    paths = []
    sm = f", moving average over {smooth} steps" if smooth > 1 else ""
    for key, name, title, ylabel in (
            ("reward/mean", "reward_vs_step.png", "Mean reward of the policy's rollout groups (before DA-Aug)",
             "reward"),
            ("vanishing_advantage_ratio", "vanishing_advantage_vs_step.png",
             "Vanishing-advantage ratio (groups with σ_r = 0)", "fraction of groups")):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for i, arm in enumerate(grid.arms):
            steps, mean, lo, hi = _curve([r for r in done if r.arm == arm], key, smooth)
            if not steps:
                continue
            c = colors[i % len(colors)]
            n = len(agg[arm]["seeds_done"])
            ax.plot(steps, mean, color=c, label=f"{arm} (n={n})")
            ax.fill_between(steps, lo, hi, color=c, alpha=0.2, linewidth=0)
        ax.set_xlabel("RL step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\nline: mean over seeds; band: min–max over seeds{sm}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = os.path.join(plot_dir, name)
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)

    tasks = sorted({k[4:] for a in agg.values() for k in a["values"] if k.startswith("acc/")}) + ["all"]
    fig, ax = plt.subplots(figsize=(max(6.5, 1.3 * len(tasks) + 2), 4))
    width = 0.8 / max(len(grid.arms), 1)
    for i, (arm, a) in enumerate(agg.items()):
        xs, ms, es = [], [], []
        for j, t in enumerate(tasks):
            v = a["values"].get("accuracy" if t == "all" else f"acc/{t}")
            if not v:
                continue
            x = j + (i - (len(grid.arms) - 1) / 2) * width
            xs.append(x)
            ms.append(100 * v["mean"])
            es.append(100 * v["std"] if v["n"] > 1 else 0.0)
            ax.scatter([x] * v["n"], [100 * y for y in v["per_seed"].values()], color="k", s=6, zorder=3)
        ax.bar(xs, ms, width, yerr=es, capsize=3, color=colors[i % len(colors)], label=arm)
    ax.set_xticks(range(len(tasks)), tasks, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Test accuracy per arm\nbar: mean over seeds; error bar: ±1 sample std (ddof=1); dots: seeds",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    p = os.path.join(plot_dir, "accuracy_per_arm.png")
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    return paths


def report(grid: Grid, smooth: int = 1) -> dict:
    """Collect, aggregate, and write `<out>/report.md`, `<out>/results.json` (the aggregate) and `<out>/plots/*.png`.
    Returns {"markdown": text, "report": path, "results": path, "plots": [paths]}."""
    results = collect(grid)
    agg = aggregate(grid, results)
    sft_p = os.path.join(grid.sft_dir, "eval_sft.json")
    sft_eval = json.load(open(sft_p)) if os.path.exists(sft_p) else None
    os.makedirs(grid.out, exist_ok=True)
    plots = plot_report(grid, results, agg, os.path.join(grid.out, "plots"), smooth)
    md = format_report(grid, agg, sft_eval)
    md += "\n" + "\n".join(f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in plots) + "\n"
    rp, jp = os.path.join(grid.out, "report.md"), os.path.join(grid.out, "results.json")
    with open(rp, "w") as f:
        f.write(md)
    with open(jp, "w") as f:
        json.dump({"grid": grid.path, "arms": agg, "sft": sft_eval and {k: sft_eval[k] for k in
                                                                       ("accuracy", "mean_iou", "per_task")},
                   "runs": [{"arm": r.arm, "seed": r.seed, "status": r.status, "run_dir": r.run_dir}
                            for r in results]}, f, indent=1, default=str)
    return {"markdown": md, "report": rp, "results": jp, "plots": plots}


# ---- command line -----------------------------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None) -> int:
    """`dvr1 ablate GRID.yaml [key=value ...] [--out DIR] [--emit commands|sbatch] [--report-only] [--no-report]
    [--arms A,B] [--seeds 0,1] [--sft-init HF_DIR] [--launcher "..."] [--smooth N]`.
    Exit code 0, or 1 if a run failed, 2 on a GridError."""
    p = argparse.ArgumentParser(prog="dvr1 ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", help="grid YAML (examples/ablations/*.yaml)")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every run and the SFT")
    p.add_argument("--out", default=None, help="output directory (default: the grid's `out`)")
    p.add_argument("--emit", choices=("commands", "sbatch"), default=None,
                   help="print the commands / a Slurm array script instead of running")
    p.add_argument("--report-only", action="store_true", help="only collect finished runs and write the report")
    p.add_argument("--no-report", action="store_true", help="run without writing the report")
    p.add_argument("--arms", default=None, help="comma-separated subset of arms to run")
    p.add_argument("--seeds", default=None, help="comma-separated subset of seeds to run")
    p.add_argument("--sft-init", default=None,
                   help="an existing HF SFT checkpoint to start every arm from (replaces the grid's sft.init)")
    p.add_argument("--launcher", default=None, help='how to start dvr1, e.g. "torchrun --nproc-per-node 8 -m dvr1.cli"')
    p.add_argument("--smooth", type=int, default=1, help="moving-average window (steps) of the curves")
    a = p.parse_args(argv)
    try:
        grid = load_grid(a.grid, a.out, a.overrides)
        if a.sft_init:
            grid.sft_init = a.sft_init
        if a.emit:
            sys.stdout.write(emit(grid, a.emit, a.launcher))
            return 0
        failed = []
        if not a.report_only:
            seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else None
            recs = run_grid(grid, a.launcher, a.arms.split(",") if a.arms else None, seeds,
                            echo=lambda s: print(s, flush=True))
            failed = [r for r in recs if r["status"].startswith("failed")]
        if not a.no_report:
            rep = report(grid, a.smooth)
            print("\n" + rep["markdown"] + f"\nreport: {rep['report']}\nplots: {', '.join(rep['plots'])}", flush=True)
        if failed:
            print(f"[ablate] {len(failed)} run(s) failed: " + ", ".join(f"{r['arm']} seed {r['seed']}" for r in failed),
                  file=sys.stderr)
            return 1
        return 0
    except GridError as e:
        print(f"dvr1 ablate: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
