"""Metrics: one JSON line per step (`<run_dir>/metrics/<stage>.jsonl`), wandb (offline by default), tensorboard
(optional), and PNG plots of reward, accuracy and the vanishing-advantage ratio (DVR1 Fig. 3) at the end.

Only the first global rank writes. A resumed run truncates the JSONL to the steps before the resume point, so
curves never hold a step twice.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

from dvr1.parallel import grid

log = logging.getLogger(__name__)

RL_SMOOTH = 10  # steps in the rolling mean drawn over the raw RL reward / accuracy points (plot_run)


class MetricsLogger:
    """Args: run_dir; stage name ("sft", "rl"); log_cfg (`dvr1.config.LogConfig`); config dict for wandb;
    resume_step: drop JSONL lines with step >= resume_step (steps are 1-based)."""

    def __init__(self, run_dir: str, stage: str, log_cfg=None, config: Optional[dict] = None,
                 resume_step: int = 0):
        self.writer = grid.is_writer()
        self.path = os.path.join(run_dir, "metrics", f"{stage}.jsonl")
        self.stage = stage
        self._wandb = None
        self._tb = None
        if not self.writer:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if os.path.exists(self.path):
            keep = [l for l in open(self.path) if l.strip() and json.loads(l).get("step", 0) <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(keep)
        if log_cfg is not None and log_cfg.wandb and log_cfg.wandb_mode != "disabled":
            try:
                import wandb

                os.environ.setdefault("WANDB_SILENT", "true")
                self._wandb = wandb.init(project=log_cfg.project, name=f"{os.path.basename(run_dir)}-{stage}",
                                         dir=run_dir, mode=log_cfg.wandb_mode, config=config, reinit="finish_previous")
            except Exception as e:  # wandb is for convenience; the JSONL is the record
                log.warning("wandb disabled: %s", e)
        if log_cfg is not None and log_cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard", stage))

    def log(self, step: int, metrics: dict) -> None:
        if not self.writer:
            return
        row = {"step": step, **{k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {f"{self.stage}/{k}": v for k, v in row.items() if isinstance(v, float) and k != "step"}
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
        if self._tb is not None:
            self._tb.close()


def reduce_metrics(metrics: dict) -> dict:
    """Average the float metrics over the data-parallel group (TP/PP ranks of a DP rank already agree).

    Every DP rank must call it with the same keys (they run the same code path)."""
    import torch

    _, dp = grid.dp_layout()
    if dp == 1:
        return metrics
    keys = [k for k, v in metrics.items() if isinstance(v, (int, float))]
    t = grid.dp_all_reduce(torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64))
    t /= dp
    return {**metrics, **dict(zip(keys, t.tolist()))}


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    return [json.loads(l) for l in open(path) if l.strip()]


def plot_run(run_dir: str) -> list[str]:
    """Write PNG plots from `<run_dir>/metrics/*.jsonl` and `<run_dir>/eval_*.json`; returns the paths written.

    rl_reward.png: mean reward (and format/accuracy/IoU components) per RL step, each raw series faint under its
    trailing rolling mean over `RL_SMOOTH` steps in bold (`dvr1.plots.rolling_mean`); rl_vanishing_advantage.png: the
    fraction of groups with zero reward std per step (DVR1 Fig. 3 left); sft_loss.png (log y): the training NLL per step
    (`nll`: unweighted, so comparable; older runs: `loss`), the validation loss (`val_loss`, every `sft.val_every`
    steps) and the answer tokens' validation NLL (`val_answer_loss`); accuracy.png: test accuracy
    per task after SFT and after RL. VidChain (`dvr1.vidchain.job`): vidchain_sft_loss.png and, per M-DPO step
    (`dvr1.vidchain.mdpo`, TRL's DPO metric names), mdpo_rewards.png (implicit rewards of chosen / rejected and
    their margin), mdpo_accuracy.png (preference accuracy), mdpo_logps.png, mdpo_pairs.png (pairs formed, per chain
    step, and used) and mdpo_gaps.png (mean winner − loser metric gap, per chain step).
    """
    from dvr1.plots import figure, rolling_mean

    out = []
    plots = os.path.join(run_dir, "plots")
    os.makedirs(plots, exist_ok=True)

    def line(rows, keys, title, ylabel, name, smooth=1, labels=None, logy=False):
        rows = [r for r in rows if any(k in r for k in keys)]
        if not rows:
            return
        path = os.path.join(plots, name)
        if smooth > 1:
            title += f" — bold: rolling mean over {smooth} steps"
        with figure(path, figsize=(6, 3.5), dpi=110, xlabel="step", ylabel=ylabel, title=title,
                    title_fontsize=9 if smooth > 1 else None) as ax:
            for k in keys:
                pts = [(r["step"], r[k]) for r in rows if k in r]
                if not pts:
                    continue
                label = (labels or {}).get(k, k)
                if smooth > 1:  # the raw points faint, their rolling mean bold in the same colour
                    steps, ys = zip(*pts)
                    raw, = ax.plot(steps, ys, alpha=0.3, linewidth=0.8)
                    ax.plot(steps, rolling_mean(ys, smooth), color=raw.get_color(), linewidth=2, label=label)
                else:
                    ax.plot(*zip(*pts), label=label, marker="." if len(pts) < 60 else None)
            if logy:
                ax.set_yscale("log")
        out.append(path)

    rl = read_jsonl(os.path.join(run_dir, "metrics", "rl.jsonl"))
    line(rl, ["reward/mean", "reward/format", "reward/accuracy", "reward/iou"], "RL reward (original groups)",
         "reward", "rl_reward.png", smooth=RL_SMOOTH)
    line(rl, ["vanishing_advantage_ratio"], "Vanishing-advantage ratio (groups with σ_r = 0)", "fraction",
         "rl_vanishing_advantage.png")
    sft = read_jsonl(os.path.join(run_dir, "metrics", "sft.jsonl"))
    train_key = "nll" if any("nll" in r for r in sft) else "loss"  # runs before `nll` was logged: the loss
    labels = {train_key: "train (batch of the step)", "val_loss": "validation (val split)",
              "val_answer_loss": "validation, answer tokens only"}
    line(sft, [train_key, "val_loss", "val_answer_loss"], "SFT loss (mean NLL per response token, log scale)", "nats",
         "sft_loss.png", logy=True, labels=labels)

    vsft = read_jsonl(os.path.join(run_dir, "metrics", "vidchain_sft.jsonl"))
    line(vsft, ["loss"], "CoTasks SFT loss (mean NLL per response token)", "nats", "vidchain_sft_loss.png")
    mdpo = read_jsonl(os.path.join(run_dir, "metrics", "vidchain_mdpo.jsonl"))
    kinds = ("count", "segments", "captions")
    line(mdpo, ["rewards/chosen", "rewards/rejected", "rewards/margins"],
         "M-DPO implicit rewards β·(log π_θ − log π_ref)", "nats", "mdpo_rewards.png")
    line(mdpo, ["rewards/accuracies"], "M-DPO preference accuracy (chosen reward > rejected)", "fraction of pairs",
         "mdpo_accuracy.png")
    line(mdpo, ["logps/chosen", "logps/rejected"], "M-DPO policy log-probs of the responses (summed)", "nats",
         "mdpo_logps.png")
    line(mdpo, ["pairs", *(f"pairs/{k}" for k in kinds), "pairs_used"],
         "M-DPO pairs formed per step (gap ≥ threshold)", "pairs", "mdpo_pairs.png")
    line(mdpo, ["gap", *(f"gap/{k}" for k in kinds)], "M-DPO winner − loser metric gap of the pairs", "score (0-100)",
         "mdpo_gaps.png")

    evals = {}
    for stage in ("sft", "rl"):
        p = os.path.join(run_dir, f"eval_{stage}.json")
        if os.path.exists(p):
            evals[stage] = json.load(open(p))
    if evals:
        tasks = sorted({t for e in evals.values() for t in e["per_task"]})
        width = 0.8 / len(evals)
        path = os.path.join(plots, "accuracy.png")
        with figure(path, figsize=(7, 3.5), dpi=110, ylabel="test accuracy", title="Accuracy per task type",
                    grid=None, legend_fontsize=None) as ax:
            for j, (stage, e) in enumerate(evals.items()):
                vals = [e["per_task"].get(t, {}).get("accuracy", 0.0) for t in tasks]
                ax.bar([i + j * width for i in range(len(tasks))], vals, width, label=f"after {stage.upper()}")
            ax.set_xticks([i + width * (len(evals) - 1) / 2 for i in range(len(tasks))], tasks, fontsize=8)
            ax.set_ylim(0, 1)
        out.append(path)
    return out
