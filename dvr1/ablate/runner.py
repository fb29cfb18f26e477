"""Running an ablation grid: the `dvr1` command lines of the shared SFT and of every run, emitted for a cluster
(`emit`) or executed here one subprocess at a time (`run_grid`), with a record per run so a rerun resumes."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from typing import Callable, Optional

from dvr1.ablate.grid import RUN_RECORD, Grid, GridError, Run, check_configs, expand_grid, read_record


# ---- commands --------------------------------------------------------------------------------------------------

def _launcher(grid: Grid, launcher: Optional[str], local: bool) -> list[str]:
    text = launcher or grid.launcher
    if text:
        return shlex.split(text)
    return [sys.executable if local else "python", "-m", "dvr1.cli"]


def sft_commands(grid: Grid, launcher: list[str]) -> list[tuple[str, list[str]]]:
    """[(stage, argv)] of the shared SFT stage: `sft` (unless `sft.init`) and `eval --name sft` (if `sft.eval`).
    A vidchain grid: `vidchain --stop-after sft` (CoTasks SFT and its DVC eval), or with `sft.init` its eval only."""
    ov = grid.overrides + grid.sft_overrides + [f"run_dir={grid.sft_dir}"]
    if grid.task == "vidchain":
        if not grid.sft_init:
            return [("sft", launcher + ["vidchain", "-c", grid.base, "--stop-after", "sft"] + ov)]
        return [("eval_sft", launcher + ["eval", "--task", "dvc", "-c", grid.base, "--model", grid.sft_hf, "--name",
                                         "sft"] + ov)]
    out = []
    if not grid.sft_init:
        out.append(("sft", launcher + ["sft", "-c", grid.base] + ov))
    if grid.sft_eval:
        out.append(("eval_sft", launcher + ["eval", "-c", grid.base, "--model", grid.sft_hf, "--name", "sft"] + ov))
    return out


def run_commands(grid: Grid, run: Run, launcher: list[str]) -> list[tuple[str, list[str]]]:
    """[("train", argv), ("eval", argv)] of one run; a vidchain run is one ("train", argv): `dvr1 vidchain --init
    <sft_hf> --sft-eval <sft eval JSON>` (M-DPO from the shared SFT model, then its eval)."""
    if grid.task == "vidchain":
        return [("train", launcher + ["vidchain", "-c", grid.base, "--init", grid.sft_hf, "--sft-eval",
                                      grid.sft_eval_path] + run.overrides)]
    return [("train", launcher + ["train", "-c", grid.base, "--init", grid.sft_hf] + run.overrides),
            ("eval", launcher + ["eval", "-c", grid.base, "--model", run.hf_dir, "--name", "rl"] + run.overrides)]


def select_runs(grid: Grid, arms: Optional[list[str]] = None, seeds: Optional[list[int]] = None) -> list:
    """The grid's runs (`expand_grid`) of the ``arms`` / ``seeds`` subsets (None: all; `--arms` / `--seeds`).
    Raises GridError naming an arm or seed the grid does not have."""
    for a in arms or []:
        if a not in grid.arms:
            raise GridError(f"--arms: {a!r} is not an arm of {grid.path} ({', '.join(grid.arms)})")
    for s in seeds or []:
        if s not in grid.seeds:
            raise GridError(f"--seeds: {s} is not a seed of {grid.path} ({', '.join(map(str, grid.seeds))})")
    return [r for r in expand_grid(grid) if (not arms or r.arm in arms) and (seeds is None or r.seed in seeds)]


def emit(grid: Grid, fmt: str, launcher: Optional[str] = None, arms: Optional[list[str]] = None,
         seeds: Optional[list[int]] = None) -> str:
    """Shell text for a cluster. fmt="commands": the SFT lines, then one line per run (skipped when its eval JSON
    exists). fmt="sbatch": a Slurm array script, one task per run, to submit after the SFT job (header says how).
    ``arms`` / ``seeds``: only those runs (:func:`select_runs`). Raises GridError for another fmt or subset."""
    lw = _launcher(grid, launcher, local=False)
    sft = " && ".join(shlex.join(c) for _, c in sft_commands(grid, lw)) or "true"
    todo = select_runs(grid, arms, seeds)
    lines = []
    for r in todo:
        cmds = " && ".join(shlex.join(c) for _, c in run_commands(grid, r, lw))
        lines.append(f"test -f {shlex.quote(r.eval_path)} || {{ {cmds}; }}")
    n = len(lines)
    n_arms, n_seeds = len({r.arm for r in todo}), len({r.seed for r in todo})
    if fmt == "commands":
        head = [f"# dvr1 ablation grid {grid.name!r}: {n} runs ({n_arms} arms x {n_seeds} seeds)",
                "# shared SFT (run first):", sft, "# runs (independent of each other):"]
        return "\n".join(head + lines) + "\n"
    if fmt != "sbatch":
        raise GridError(f"--emit {fmt!r}: must be one of commands, sbatch")
    opts = {"job-name": f"dvr1-{grid.name}", "output": os.path.join(grid.out, "slurm-%A_%a.out")}
    opts.update({str(k): v for k, v in grid.slurm.items()})
    script = ["#!/bin/bash",
              f"# dvr1 ablation grid {grid.name!r}: {n} runs, one array task each ({n_arms} arms x {n_seeds} seeds).",
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
        rec = read_record(r.run_dir)
        if rec is not None and rec.get("overrides") != r.overrides:
            raise GridError(f"{r.run_dir}: made with overrides {rec.get('overrides')} but the grid now gives "
                            f"{r.overrides}; use another --out or delete the run directory")
        if rec is not None and rec.get("init", grid.sft_hf) != grid.sft_hf:
            raise GridError(f"{r.run_dir}: trained from {rec['init']} but the grid now starts from {grid.sft_hf}; "
                            "use another --out or delete the run directory")


LOCK = "ablate.lock"
SFT_LOCK_POLL_S = 10.0  # how often a runner waiting for the shared SFT's lock looks again (seconds)


def try_lock(run_dir: str) -> Optional[str]:
    """Take ``<run_dir>/ablate.lock`` for this process (created exclusively; it holds ``host pid``). Returns None when
    taken, else who holds it (``"pid N on host H"``): two `dvr1 ablate` processes on one grid (e.g. lanes given
    overlapping `--arms`) must not train one run directory at once. A lock left by a dead process of this host is
    replaced; one of another host (a shared file system) is left alone."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, pid = open(path).read().split()
            except (OSError, ValueError):  # removed meanwhile, or half-written: look again
                continue
            if host == socket.gethostname() and not _alive(int(pid)):
                os.remove(path)  # stale: its process is gone
                continue
            return f"pid {pid} on host {host}"
        with os.fdopen(fd, "w") as f:
            f.write(_me())
        return None
    return f"another process (could not take {path})"


def unlock(run_dir: str) -> None:
    """Release the lock :func:`try_lock` took (only if this process holds it)."""
    path = os.path.join(run_dir, LOCK)
    try:
        if open(path).read() == _me():
            os.remove(path)
    except OSError:
        pass


def _me() -> str:
    """This process's lock content: ``host pid``."""
    return f"{socket.gethostname()} {os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _execute(argv: list[str], log_path: str) -> tuple[int, float]:
    """Run `argv` (cwd = this process's cwd), appending stdout+stderr to `log_path`. Returns (rc, wall seconds)."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    t0 = time.time()
    with open(log_path, "a") as f:
        f.write(f"\n$ {shlex.join(argv)}\n")
        f.flush()
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT).returncode
    return rc, time.time() - t0


def _ckpt_step(run_dir: str, stage: str = "rl") -> Optional[str]:
    p = os.path.join(run_dir, stage, "ckpt", "latest")
    return open(p).read().strip() if os.path.exists(p) else None


def run_sft(grid: Grid, launcher: Optional[str] = None, echo: Callable[[str], None] = print) -> None:
    """The shared SFT stage (skipped when the SFT checkpoint / eval_sft.json exist). Raises GridError if it fails:
    every run depends on it."""
    waited = False
    while (holder := try_lock(grid.sft_dir)) is not None:  # another runner trains the shared SFT: wait for it
        if not waited:
            echo(f"[ablate] sft: {grid.sft_dir} is locked by {holder} (another dvr1 ablate); waiting for it")
            waited = True
        time.sleep(SFT_LOCK_POLL_S)
    try:
        _run_sft_stages(grid, launcher, echo)
    finally:
        unlock(grid.sft_dir)
    if not os.path.exists(os.path.join(grid.sft_hf, "config.json")):
        raise GridError(f"{grid.path}: sft.init: {grid.sft_hf} is not a HF checkpoint directory")


def _run_sft_stages(grid: Grid, launcher: Optional[str], echo: Callable[[str], None]) -> None:
    for stage, argv in sft_commands(grid, _launcher(grid, launcher, local=True)):
        done = (grid.sft_eval_path if grid.task == "vidchain"  # the vidchain SFT stage ends with its eval
                else os.path.join(grid.sft_hf, "model.safetensors") if stage == "sft" else grid.sft_eval_path)
        if os.path.exists(done):
            echo(f"[ablate] {stage}: {done} exists, skipping")
            continue
        echo(f"[ablate] {stage}: {shlex.join(argv)}")
        rc, wall = _execute(argv, os.path.join(grid.sft_dir, "ablate.log"))
        if rc != 0:
            raise GridError(f"{grid.path}: shared {stage} failed (exit {rc}); see {grid.sft_dir}/ablate.log")
        echo(f"[ablate] {stage}: done in {wall / 60:.1f} min")


def run_grid(grid: Grid, launcher: Optional[str] = None, arms: Optional[list[str]] = None,
             seeds: Optional[list[int]] = None, echo: Callable[[str], None] = print) -> list[dict]:
    """Execute the grid locally, one subprocess at a time: the shared SFT, then every run's train and eval.

    Skips runs whose eval JSON exists; evaluates without training when `rl/hf` exists; otherwise trains (resuming
    from `rl/ckpt` when there). A failing stage is recorded in `<run_dir>/ablate_run.json` (status
    "failed:<stage>", exit code, wall seconds) and the grid continues. Each run holds ``<run_dir>/ablate.lock``
    while it trains and evaluates (:func:`try_lock`): a run another `dvr1 ablate` process holds is skipped here
    (status "locked"), so parallel lanes never train one run at once; the shared SFT's lock is waited for. Returns
    one record per run (dict with arm, seed, status: done | skipped | locked | failed:train | failed:eval).
    Raises GridError for an invalid config (checked first), a run dir made with other overrides, or a failed SFT.
    """
    check_configs(grid)
    check_resume(grid)
    todo = select_runs(grid, arms, seeds)
    run_sft(grid, launcher, echo)
    lw = _launcher(grid, launcher, local=True)
    out = []
    for i, r in enumerate(todo):
        tag = f"[ablate {i + 1}/{len(todo)}] {r.arm} seed {r.seed}"
        holder = try_lock(r.run_dir)
        if holder is not None:
            echo(f"{tag}: {r.run_dir} is locked by {holder} (another dvr1 ablate runs it), skipping")
            out.append({"arm": r.arm, "seed": r.seed, "status": "locked"})
            continue
        try:
            status = _run_one(grid, r, lw, tag, echo)
        finally:
            unlock(r.run_dir)
        out.append({"arm": r.arm, "seed": r.seed, "status": status})
    return out


def _run_one(grid: Grid, r: Run, lw: list[str], tag: str, echo: Callable[[str], None]) -> str:
    """One run's train and eval (its lock held); writes its record and returns its status."""
    if os.path.exists(r.eval_path):  # finished earlier (checked under the lock: no other runner is finishing it)
        echo(f"{tag}: {r.eval_path} exists, skipping")
        return "skipped"
    rec = read_record(r.run_dir) or {"arm": r.arm, "seed": r.seed, "overrides": r.overrides,
                                     "init": grid.sft_hf, "attempts": []}
    status = "done"
    for stage, argv in run_commands(grid, r, lw):
        if stage == "train" and r.task == "rl" and os.path.exists(os.path.join(r.hf_dir, "model.safetensors")):
            echo(f"{tag}: {r.hf_dir} exists, evaluating only")
            continue
        step = _ckpt_step(r.run_dir, r.stage) if stage == "train" else None
        what = "RL" if r.task == "rl" else "M-DPO"
        echo(f"{tag}: {stage}" + (f" (resuming from {what} step {step})" if step else ""))
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
    return status

