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
    task: rl                              # optional: rl (default) | vidchain (M-DPO runs, docs/VIDCHAIN.md)

Every arm x seed is one run directory `<out>/<arm>/seed<k>/`: `dvr1 train --init <sft_hf> <overrides> <arm>
seed=k run_dir=...` then `dvr1 eval --model <run>/rl/hf --name rl` (the RL arms differ only in RL; data and SFT are
shared). Runs execute one subprocess at a time, so a crashed run is recorded (`ablate_run.json`) and the grid goes
on. Rerunning the grid skips runs whose `eval_rl.json` exists, evaluates runs whose `rl/hf` exists, and resumes
runs with a partial `rl/ckpt` (the trainer resumes itself, `dvr1.train.job._train_loop`).

Modules: `dvr1.ablate.grid` (the file -> runs), `dvr1.ablate.runner` (commands, local execution),
`dvr1.ablate.report` (table, results.json, plots); this package re-exports their public names and holds `main`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from dvr1.ablate.grid import RUN_RECORD, Grid, GridError, Run, check_configs, expand_grid, load_grid, read_record
from dvr1.ablate.report import RunResult, aggregate, collect, format_report, ordering_check, plot_report, \
    run_values, write_report
from dvr1.ablate.runner import check_resume, emit, run_commands, run_grid, run_sft, sft_commands

__all__ = ["RUN_RECORD", "Grid", "GridError", "Run", "RunResult", "aggregate", "check_configs", "check_resume",
           "collect", "emit", "expand_grid", "format_report", "load_grid", "main", "ordering_check", "plot_report",
           "read_record", "run_commands", "run_grid", "run_sft", "run_values", "sft_commands", "write_report"]


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
    a = p.parse_intermixed_args(argv)  # key=value overrides may come before or after the options
    try:
        grid = load_grid(a.grid, a.out, a.overrides)
        if a.sft_init:
            grid.sft_init = a.sft_init
        arms = a.arms.split(",") if a.arms else None
        try:
            seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else None
        except ValueError:
            raise GridError(f"--seeds {a.seeds}: must be comma-separated integers, e.g. --seeds 0,1") from None
        if a.emit:
            sys.stdout.write(emit(grid, a.emit, a.launcher, arms, seeds))
            return 0
        failed = []
        if not a.report_only:
            recs = run_grid(grid, a.launcher, arms, seeds, echo=lambda s: print(s, flush=True))
            failed = [r for r in recs if r["status"].startswith("failed")]
            locked = [r for r in recs if r["status"] == "locked"]
            if locked:
                print(f"[ablate] {len(locked)} run(s) left to the dvr1 ablate that holds their lock: "
                      + ", ".join(f"{r['arm']} seed {r['seed']}" for r in locked), flush=True)
        if not a.no_report:
            rep = write_report(grid, a.smooth)
            print("\n" + rep["markdown"] + f"\nreport: {rep['report']}\nplots: {', '.join(rep['plots'])}", flush=True)
        if failed:
            print(f"[ablate] {len(failed)} run(s) failed: " + ", ".join(f"{r['arm']} seed {r['seed']}" for r in failed),
                  file=sys.stderr)
            return 1
        return 0
    except GridError as e:
        print(f"dvr1 ablate: {e}", file=sys.stderr)
        return 2
