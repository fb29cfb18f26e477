"""The report of an ablation grid: what every run left on disk, aggregated over seeds (mean ± sample std), as a
Markdown table with the paper-ordering check, `results.json`, and PNG plots (DVR1 Table 4, Fig. 3)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Optional

from dvr1.ablate.grid import Grid, expand_grid, read_record

# VidChain grids (task: vidchain): the DVC / grounding columns of the eval JSON (0-100) and the DPO curves
VIDCHAIN_COLUMNS = (("SODA_c", "SODA_c"), ("METEOR", "METEOR"), ("CIDEr", "CIDEr"), ("METEOR@0.5", "METEOR@0.5"),
                    ("count_acc", "count acc."), ("mIoU", "mIoU"), ("R1@0.5", "R1@0.5"), ("R1@0.7", "R1@0.7"))
VIDCHAIN_CURVES = (("rewards/margins", "dpo_margin_vs_step.png", "M-DPO reward margin (chosen − rejected)", "nats"),
                   ("rewards/accuracies", "dpo_accuracy_vs_step.png", "M-DPO preference accuracy",
                    "fraction of pairs"),
                   ("loss", "dpo_loss_vs_step.png", "M-DPO loss", "nats"),
                   ("pairs", "dpo_pairs_vs_step.png", "M-DPO pairs formed per step", "pairs"))
_LAST = 5  # steps the "last" DPO values average over


# ---- collect + aggregate ---------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """What one run left on disk. status: done (eval JSON) | failed | incomplete (metrics, no eval) | missing."""

    arm: str
    seed: int
    run_dir: str
    status: str
    eval: Optional[dict]
    metrics: list[dict]  # rows of <run_dir>/metrics/<stage>.jsonl (rl.jsonl, vidchain_mdpo.jsonl), sorted by step
    wall_s: Optional[float]  # sum of the recorded train + eval subprocess wall seconds (ablate_run.json)


def collect(grid: Grid) -> list[RunResult]:
    """Read every run of the grid (in `expand_grid` order); never raises for a missing or partial run."""
    from dvr1.train.metrics import read_jsonl

    res = []
    for r in expand_grid(grid):
        ev = json.load(open(r.eval_path)) if os.path.exists(r.eval_path) else None
        rows = sorted(read_jsonl(os.path.join(r.run_dir, "metrics", f"{r.stage}.jsonl")), key=lambda x: x["step"])
        rec = read_record(r.run_dir)
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


def vidchain_values(ev: dict) -> dict[str, float]:
    """The :data:`VIDCHAIN_COLUMNS` of a `dvr1.vidchain.job.evaluate_vidchain` result (0-100; None values left out)."""
    flat = {"SODA_c": ev.get("SODA_c"), "count_acc": ev.get("count_acc"), "parse_rate": ev.get("parse_rate"),
            **ev.get("dvc", {}), **ev.get("grounding", {})}
    return {k: float(flat[k]) for k, _ in VIDCHAIN_COLUMNS if flat.get(k) is not None}


def run_values(r: RunResult) -> dict[str, float]:
    """Scalars of one finished run: accuracy, acc/<task>, mean_iou (from the eval JSON, fractions in [0, 1]);
    va_final / va_mean (last-step / mean-over-steps vanishing-advantage ratio, ALGORITHMS §5); rollouts_per_step
    (mean responses generated per RL step, all ranks and rollout kinds: `rollouts/total`); reward_final (last step's
    mean reward); wall_min.
    A vidchain run (eval_vidchain_mdpo.json): :func:`vidchain_values`; ``pref_acc_last`` / ``margin_last`` (mean
    `rewards/accuracies` / `rewards/margins` over the last 5 M-DPO steps), ``margin_first`` (first step);
    ``changed`` (greedy answers on the eval split that differ from the SFT model's, `vidchain_results.json`);
    wall_min."""
    v = {}
    if r.eval is not None and "dvc" in r.eval:
        v.update(vidchain_values(r.eval))
        acc = [row["rewards/accuracies"] for row in r.metrics if "rewards/accuracies" in row]
        margin = [row["rewards/margins"] for row in r.metrics if "rewards/margins" in row]
        if acc:
            v["pref_acc_last"] = sum(acc[-_LAST:]) / len(acc[-_LAST:])
            v["margin_last"] = sum(margin[-_LAST:]) / len(margin[-_LAST:])
            v["margin_first"] = float(margin[0])
        res = os.path.join(r.run_dir, "vidchain_results.json")
        changed = json.load(open(res)).get("changed") if os.path.exists(res) else None
        if changed:
            v["changed"] = float(changed["chain_changed"] + changed["grounding_changed"])
            v["changed_of"] = float(changed["chain"] + changed["grounding"])
    elif r.eval is not None:
        v["accuracy"] = float(r.eval["accuracy"])
        v["mean_iou"] = float(r.eval["mean_iou"])
        for t, d in r.eval.get("per_task", {}).items():
            v[f"acc/{t}"] = float(d["accuracy"])
    va = [row["vanishing_advantage_ratio"] for row in r.metrics if "vanishing_advantage_ratio" in row]
    if va:
        v["va_final"] = float(va[-1])
        v["va_mean"] = float(sum(va) / len(va))
    spent = [row["rollouts/total"] for row in r.metrics if "rollouts/total" in row]
    if spent:
        v["rollouts_per_step"] = float(sum(spent) / len(spent))
    rewards = [row["reward/mean"] for row in r.metrics if "reward/mean" in row]
    if rewards:
        v["reward_final"] = float(rewards[-1])
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


def _split(sft_eval: Optional[dict]) -> str:
    """The split a vidchain grid was evaluated on: the shared SFT eval's ``split`` (`vidchain.eval_split`; eval
    JSONs written before it was recorded: "test")."""
    return (sft_eval or {}).get("split") or "test"


def format_vidchain_report(grid: Grid, agg: dict, sft_eval: Optional[dict] = None) -> str:
    """The Markdown report of a vidchain grid: the SFT row (before M-DPO) and one row per arm (after; mean ± sample
    std over seeds) of the DVC / grounding metrics, the DPO training values and the changed greedy outputs; then,
    per arm, which metrics moved beyond the seed spread."""
    head = (["arm", "seeds"] + [c for _, c in VIDCHAIN_COLUMNS] +
            ["pref. acc. (last 5)", "margin first → last 5", "changed answers", "wall min", "not done"])
    lines = [f"### Ablation `{grid.name}`: VidChain M-DPO ({len(grid.arms)} arms x seeds {grid.seeds})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sft = vidchain_values(sft_eval) if sft_eval is not None else {}
    if sft_eval is not None:
        row = ["CoTasks SFT (before M-DPO; shared)", "–"] + [f"{sft[k]:.2f}" if k in sft else "n/a"
                                                            for k, _ in VIDCHAIN_COLUMNS]
        lines.append("| " + " | ".join(row + ["–", "–", "–", "–", ""]) + " |")
    for arm, a in agg.items():
        v = a["values"]
        changed = (f"{_fmt(v.get('changed'), 1, 1)} of {v['changed_of']['mean']:.0f}" if v.get("changed_of")
                   else "n/a")
        margin = (f"{_fmt(v.get('margin_first'), 1, 3)} → {_fmt(v.get('margin_last'), 1, 3)}"
                  if v.get("margin_last") else "n/a")
        row = [arm, f"{len(a['seeds_done'])}/{len(grid.seeds)}"] + [_fmt(v.get(k), 1, 2) for k, _ in VIDCHAIN_COLUMNS]
        row += [_fmt(v.get("pref_acc_last"), 1, 3), margin, changed, _fmt(v.get("wall_min"), 1, 1),
                _notes(a["not_done"])]
        lines.append("| " + " | ".join(row) + " |")
    split = _split(sft_eval)
    lines += ["", f"{split.capitalize()} split, 0-100 (DVC: METEOR/CIDEr averaged over tIoU {{0.3, 0.5, 0.7, 0.9}}, "
              "SODA_c; grounding: mIoU, R1@tIoU). Mean ± sample standard deviation (ddof=1) over the seeds that "
              "finished (n=1: no std). Preference accuracy and reward margin (TRL's rewards/accuracies, "
              "rewards/margins) are means over the last 5 M-DPO steps (margin: first step → last 5); changed "
              f"answers = greedy {split} answers (chain turns and grounding queries) that differ from the SFT model's."]
    if sft:
        lines += ["", "Change against the SFT model (mean over seeds − SFT), beyond the seed spread when |Δ| > std:"]
        for arm, a in agg.items():
            parts = []
            for k, name in VIDCHAIN_COLUMNS:
                x = a["values"].get(k)
                if x is None or k not in sft:
                    continue
                d = x["mean"] - sft[k]
                tag = ("" if x["n"] < 2 else " (beyond the seed std)" if abs(d) > x["std"] else " (within the seed std)")
                parts.append(f"{name} {d:+.2f}{tag}")
            lines.append(f"- {arm}: " + ("; ".join(parts) if parts else "no finished run"))
    return "\n".join(lines) + "\n"


def format_report(grid: Grid, agg: dict, sft_eval: Optional[dict] = None) -> str:
    """The Markdown report: the table (rows = arms; mean ± sample std over seeds), notes, and the ordering check.
    A vidchain grid: :func:`format_vidchain_report`."""
    if grid.task == "vidchain":
        return format_vidchain_report(grid, agg, sft_eval)
    tasks = sorted({k[4:] for a in agg.values() for k in a["values"] if k.startswith("acc/")}
                   | set((sft_eval or {}).get("per_task", {})))
    head = (["arm", "seeds"] + [f"{t} acc. %" for t in tasks] +
            ["all acc. %", "mean IoU", "VA ratio final", "VA ratio mean", "rollouts / step", "wall min", "not done"])
    lines = [f"### Ablation `{grid.name}` ({len(grid.arms)} arms x seeds {grid.seeds})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if sft_eval is not None:
        row = ["SFT (no RL; shared init)", "–"]
        row += [f"{100 * sft_eval['per_task'][t]['accuracy']:.1f}" if t in sft_eval["per_task"] else "n/a"
                for t in tasks]
        row += [f"{100 * sft_eval['accuracy']:.1f}", f"{sft_eval['mean_iou']:.3f}", "–", "–", "–", "–", ""]
        lines.append("| " + " | ".join(row) + " |")
    for arm, a in agg.items():
        v = a["values"]
        row = [arm, f"{len(a['seeds_done'])}/{len(grid.seeds)}"]
        row += [_fmt(v.get(f"acc/{t}"), 100) for t in tasks]
        row += [_fmt(v.get("accuracy"), 100), _fmt(v.get("mean_iou"), 1, 3), _fmt(v.get("va_final"), 1, 3),
                _fmt(v.get("va_mean"), 1, 3), _fmt(v.get("rollouts_per_step"), 1, 0), _fmt(v.get("wall_min"), 1, 1),
                _notes(a["not_done"])]
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
    from dvr1.plots import rolling_mean

    by_step: dict[int, list[float]] = {}
    for r in results:
        pts = [(row["step"], row[key]) for row in r.metrics if key in row]
        for (s, _), y in zip(pts, rolling_mean([y for _, y in pts], smooth)):
            by_step.setdefault(int(s), []).append(y)
    steps = sorted(by_step)
    return (steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], [min(by_step[s]) for s in steps],
            [max(by_step[s]) for s in steps])


def _plot_vidchain_bars(grid: Grid, agg: dict, plot_dir: str, sft_eval: Optional[dict], colors) -> str:
    """dvc_per_arm.png: the DVC / grounding metrics after M-DPO per arm (bar = mean, error bar = ±1 sample std,
    dots = seeds) beside the SFT model's (before)."""
    from dvr1.plots import figure

    sft = vidchain_values(sft_eval) if sft_eval is not None else {}
    keys = [k for k, _ in VIDCHAIN_COLUMNS]
    groups = (["SFT"] if sft else []) + list(grid.arms)
    width = 0.8 / max(len(groups), 1)
    p = os.path.join(plot_dir, "dvc_per_arm.png")
    split = _split(sft_eval)
    with figure(p, figsize=(max(6.5, 1.1 * len(keys) + 2), 4), dpi=120, ylabel=f"{split} score (0-100)", grid="y",
                title="DVC and grounding after M-DPO per arm (SFT = before)\nbar: mean over seeds; error bar: ±1 "
                      "sample std (ddof=1); dots: seeds", title_fontsize=9) as ax:
        for i, g in enumerate(groups):
            xs, ms, es = [], [], []
            for j, k in enumerate(keys):
                x = j + (i - (len(groups) - 1) / 2) * width
                if g == "SFT":
                    if k in sft:
                        xs.append(x)
                        ms.append(sft[k])
                        es.append(0.0)
                    continue
                v = agg[g]["values"].get(k)
                if not v:
                    continue
                xs.append(x)
                ms.append(v["mean"])
                es.append(v["std"] if v["n"] > 1 else 0.0)
                ax.scatter([x] * v["n"], list(v["per_seed"].values()), color="k", s=6, zorder=3)
            ax.bar(xs, ms, width, yerr=es, capsize=3, color="0.6" if g == "SFT" else colors[i % len(colors)],
                   label=g)
        ax.set_xticks(range(len(keys)), [c for _, c in VIDCHAIN_COLUMNS], fontsize=8)
    return p


def plot_report(grid: Grid, results: list[RunResult], agg: dict, plot_dir: str, smooth: int = 1,
                sft_eval: Optional[dict] = None) -> list[str]:
    """PNGs (matplotlib, Agg): reward_vs_step.png and vanishing_advantage_vs_step.png (per arm: mean over seeds,
    band = min–max over seeds), accuracy_per_arm.png (per task type and overall: bars = mean, error bars = ±1
    sample std, dots = seeds). A vidchain grid: the :data:`VIDCHAIN_CURVES` (DPO margin, preference accuracy, loss,
    pairs per M-DPO step, same bands) and dvc_per_arm.png (`sft_eval` drawn as the before bars). Only finished runs
    are drawn. Returns the paths written."""
    import matplotlib

    from dvr1.plots import figure

    os.makedirs(plot_dir, exist_ok=True)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    done = [r for r in results if r.status == "done"]
    paths = []
    sm = f", moving average over {smooth} steps" if smooth > 1 else ""
    curves = VIDCHAIN_CURVES if grid.task == "vidchain" else (
        ("reward/mean", "reward_vs_step.png", "Mean reward of the policy's rollout groups (before DA-Aug)", "reward"),
        ("vanishing_advantage_ratio", "vanishing_advantage_vs_step.png",
         "Vanishing-advantage ratio (groups with σ_r = 0)", "fraction of groups"))
    for key, name, title, ylabel in curves:
        p = os.path.join(plot_dir, name)
        with figure(p, figsize=(6.5, 4), dpi=120, xlabel="M-DPO step" if grid.task == "vidchain" else "RL step",
                    ylabel=ylabel, title_fontsize=9,
                    title=f"{title}\nline: mean over seeds; band: min–max over seeds{sm}") as ax:
            for i, arm in enumerate(grid.arms):
                steps, mean, lo, hi = _curve([r for r in done if r.arm == arm], key, smooth)
                if not steps:
                    continue
                c = colors[i % len(colors)]
                n = len(agg[arm]["seeds_done"])
                ax.plot(steps, mean, color=c, label=f"{arm} (n={n})")
                ax.fill_between(steps, lo, hi, color=c, alpha=0.2, linewidth=0)
        paths.append(p)
    if grid.task == "vidchain":
        return paths + [_plot_vidchain_bars(grid, agg, plot_dir, sft_eval, colors)]

    tasks = sorted({k[4:] for a in agg.values() for k in a["values"] if k.startswith("acc/")}) + ["all"]
    width = 0.8 / max(len(grid.arms), 1)
    p = os.path.join(plot_dir, "accuracy_per_arm.png")
    with figure(p, figsize=(max(6.5, 1.3 * len(tasks) + 2), 4), dpi=120, ylabel="test accuracy (%)", grid="y",
                title="Test accuracy per arm\nbar: mean over seeds; error bar: ±1 sample std (ddof=1); dots: seeds",
                title_fontsize=9) as ax:
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
        ax.set_ylim(0, 100)
    paths.append(p)
    return paths


def write_report(grid: Grid, smooth: int = 1) -> dict:
    """Collect, aggregate, and write `<out>/report.md`, `<out>/results.json` (the aggregate) and `<out>/plots/*.png`.
    Returns {"markdown": text, "report": path, "results": path, "plots": [paths]}."""
    results = collect(grid)
    agg = aggregate(grid, results)
    sft_p = grid.sft_eval_path
    sft_eval = json.load(open(sft_p)) if os.path.exists(sft_p) else None
    os.makedirs(grid.out, exist_ok=True)
    plots = plot_report(grid, results, agg, os.path.join(grid.out, "plots"), smooth, sft_eval)
    md = format_report(grid, agg, sft_eval)
    md += "\n" + "\n".join(f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in plots) + "\n"
    rp, jp = os.path.join(grid.out, "report.md"), os.path.join(grid.out, "results.json")
    with open(rp, "w") as f:
        f.write(md)
    with open(jp, "w") as f:
        sft_summary = (None if sft_eval is None else vidchain_values(sft_eval) if grid.task == "vidchain"
                       else {k: sft_eval[k] for k in ("accuracy", "mean_iou", "per_task")})
        json.dump({"grid": grid.path, "arms": agg, "sft": sft_summary,
                   "runs": [{"arm": r.arm, "seed": r.seed, "status": r.status, "run_dir": r.run_dir}
                            for r in results]}, f, indent=1, default=str)
    return {"markdown": md, "report": rp, "results": jp, "plots": plots}

