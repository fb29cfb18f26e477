"""DA-Aug difficulty check (issue 16; DVR1 §3.3, docs/ALGORITHMS.md §4): does the SFT model's greedy test accuracy
fall as DA-Aug's frame noise rises, and rise as its hints grow?

Conditions, each a full greedy eval (`dvr1.train.evaluate.evaluate`, `eval.max_new_tokens`) of `eval.split`:

- ``noise L`` for perturbation levels L = 0 .. `da_aug.max_level`: every clip gets the noise a DA-Aug difficulty
  increase gives it, ``v + σ0 · L · N(0, I)`` on the normalised frames (plus `da_aug.mask_fraction` frame masking),
  by the trainer's own op (`dvr1.train.inputs.InputBuilder.noisy_video`, as `dvr1.train.rl.RLTrainer.augment`
  calls it). σ0 = `da_aug.sigma0`. Each level draws from ``torch.Generator().manual_seed(--seed)`` (records in order),
  so level 2's noise is exactly twice level 1's (common random numbers). ``noise 0`` is plain eval: σ = 0 adds
  nothing, the inputs equal the unaugmented ones.
- ``hint G`` for guidance levels G = 1 .. `da_aug.max_level`: the prompt carries the hint a DA-Aug difficulty
  decrease gives (`dvr1.rl.augment.make_hint` of the trace, at level G of `da_aug.max_level`, no-leak filtered).
  DA-Aug takes the trace from the group's best correct rollout (`select_trace`); this check has no rollouts, so the
  trace is the record's SFT target (`dvr1.data.prompts.sft_response`: the record's reasoning, else the synthetic
  set's construction reasoning) — a correct trace of the kind the SFT model was trained to write. A record whose
  hint comes out empty (a short trace at a low level, or every kept sentence leaking the answer) is evaluated
  without a hint, as DA-Aug leaves it unaugmented; the table counts them ("empty hints").

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=. python tools/da_aug_check.py --model HF_DIR -c CONFIG [key=value ...] [--out DIR]

Prints a markdown table (condition, accuracy overall and per task, n) and whether accuracy falls with noise and rises
with hints; with ``--out``, writes ``da_aug_check.json`` / ``.md`` / ``.png`` there.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from dvr1.data.prompts import sft_response
from dvr1.rl.augment import make_hint, split_sentences
from dvr1.train.evaluate import evaluate


class AugmentedBuilder:
    """An `InputBuilder` whose ``prepare(record)`` applies one DA-Aug condition, for `evaluate`.

    `noise_level` (a float >= 0): ``video=builder.noisy_video(record, sigma0, noise_level, mask_fraction, gen)``;
    `hint_level` (an int in [1, max_level]): ``hint=make_hint(sft_response(record), hint_level, max_level, answer,
    options)``. ``hints`` records, per record id, the hint given (``""`` for none)."""

    def __init__(self, builder, sigma0: float = 0.0, max_level: int = 3, mask_fraction: float = 0.0,
                 noise_level: float | None = None, hint_level: int | None = None, seed: int = 0):
        if (noise_level is None) == (hint_level is None):
            raise ValueError("AugmentedBuilder: give exactly one of noise_level and hint_level")
        self.builder, self.sigma0, self.max_level, self.mask_fraction = builder, sigma0, max_level, mask_fraction
        self.noise_level, self.hint_level = noise_level, hint_level
        self.generator = torch.Generator().manual_seed(seed)
        self.hints: dict[str, str] = {}

    @property
    def skips(self):
        return getattr(self.builder, "skips", None)

    def prepare(self, record, **kw):
        if self.noise_level is not None:
            video = self.builder.noisy_video(record, self.sigma0, self.noise_level, self.mask_fraction, self.generator)
            return self.builder.prepare(record, video=video, **kw)
        hint = make_hint(sft_response(record), self.hint_level, self.max_level, record.answer, record.options)
        self.hints[record.id] = hint
        return self.builder.prepare(record, hint=hint or None, **kw)


def run_check(engine, builder, tokenizer, records, da_aug, max_new_tokens: int = 64, seed: int = 0,
              strict: bool = False) -> dict:
    """Evaluate every condition (module docstring). `da_aug`: the config's `da_aug` section (sigma0, max_level,
    mask_fraction). Returns ``{"settings": {...}, "conditions": [{"condition", "kind" ("noise"/"hint"), "level",
    "sigma" (noise) or "empty_hints"/"mean_hint_sentences" (hint), "n", "accuracy", "format", "per_task": {task:
    accuracy}, "outputs": every record's response (`evaluate`'s "outputs")}], "tasks": [...], "noise_falls": bool,
    "hints_rise": bool}``."""
    L = int(da_aug.max_level)
    conditions = []
    for kind, levels in (("noise", range(0, L + 1)), ("hint", range(1, L + 1))):
        for level in levels:
            if kind == "noise":
                aug = AugmentedBuilder(builder, da_aug.sigma0, L, da_aug.mask_fraction, noise_level=float(level),
                                       seed=seed)
            else:
                aug = AugmentedBuilder(builder, da_aug.sigma0, L, hint_level=level, seed=seed)
            res = evaluate(engine, aug, tokenizer, records, max_new_tokens, strict=strict)
            row = {"condition": f"{kind} {level}", "kind": kind, "level": level, "n": res["n"],
                   "accuracy": res["accuracy"], "format": res["format"],
                   "per_task": {t: d["accuracy"] for t, d in res["per_task"].items()},
                   "n_per_task": {t: d["n"] for t, d in res["per_task"].items()},
                   "outputs": res["outputs"]}
            if kind == "noise":
                row["sigma"] = da_aug.sigma0 * level
            else:
                hints = list(aug.hints.values())
                row["empty_hints"] = sum(not h for h in hints)
                row["mean_hint_sentences"] = sum(len(split_sentences(h)) for h in hints) / max(len(hints), 1)
            conditions.append(row)
    tasks = sorted({t for c in conditions for t in c["per_task"]})
    noise = [c["accuracy"] for c in conditions if c["kind"] == "noise"]
    hint = [noise[0]] + [c["accuracy"] for c in conditions if c["kind"] == "hint"]  # guidance 0 = no hint = noise 0
    return {"settings": {"sigma0": da_aug.sigma0, "max_level": L, "mask_fraction": da_aug.mask_fraction,
                         "seed": seed, "max_new_tokens": max_new_tokens, "hint_trace": "sft_response (record)"},
            "conditions": conditions, "tasks": tasks,
            "noise_falls": _monotone(noise, -1), "hints_rise": _monotone(hint, +1)}


def _monotone(xs: list[float], sign: int) -> bool:
    """True when ``xs`` never moves against `sign` (-1: falls, +1: rises) and ends strictly beyond its start."""
    return all(sign * (b - a) >= 0 for a, b in zip(xs, xs[1:])) and sign * (xs[-1] - xs[0]) > 0


def format_table(result: dict) -> str:
    """Markdown: one row per condition; columns condition, σ / hint info, n, overall accuracy, per-task accuracy."""
    tasks = result["tasks"]
    lines = ["| condition | σ or empty hints | n | accuracy | " + " | ".join(tasks) + " |",
             "|---|---|---|---|" + "---|" * len(tasks)]
    for c in result["conditions"]:
        info = f"σ={c['sigma']:g}" if c["kind"] == "noise" else f"{c['empty_hints']} empty"
        lines.append(f"| {c['condition']} | {info} | {c['n']} | **{c['accuracy']:.3f}** | " + " | ".join(
            f"{c['per_task'][t]:.3f}" if t in c["per_task"] else "–" for t in tasks) + " |")
    return "\n".join(lines)


def verdict(result: dict) -> str:
    """Two sentences: whether accuracy falls with noise and rises with hints (DVR1 §3.3's assumption)."""
    acc = {c["condition"]: c["accuracy"] for c in result["conditions"]}
    noise = " → ".join(f"{v:.3f}" for k, v in acc.items() if k.startswith("noise"))
    hint = " → ".join([f"{acc['noise 0']:.3f}"] + [f"{v:.3f}" for k, v in acc.items() if k.startswith("hint")])
    return (f"Accuracy {'falls' if result['noise_falls'] else 'does NOT fall monotonically'} as noise rises "
            f"(levels 0..{result['settings']['max_level']}: {noise}); it "
            f"{'rises' if result['hints_rise'] else 'does NOT rise monotonically'} as hints rise (guidance 0 = no "
            f"hint, then 1..{result['settings']['max_level']}: {hint}). DVR1 §3.3 assumes both: "
            f"{'holds' if result['noise_falls'] and result['hints_rise'] else 'does not hold'} here."
            + _empty_note(result))


def _empty_note(result: dict) -> str:
    rows = [c for c in result["conditions"] if c.get("kind") == "hint" and c.get("empty_hints")]
    if not rows:
        return ""
    return (" Records with an empty hint (too short a reasoning, or every kept sentence leaks the answer; evaluated "
            "without one, as DA-Aug leaves them unaugmented): "
            + ", ".join(f"{c['condition']} {c['empty_hints']}/{c['n']}" for c in rows) + ".")


def plot(result: dict, path: str) -> None:
    """Accuracy vs level (noise: perturbation level; hints: guidance level, 0 = no hint), overall and per task."""
    from dvr1.plots import figure

    noise = [c for c in result["conditions"] if c["kind"] == "noise"]
    hint = [noise[0]] + [c for c in result["conditions"] if c["kind"] == "hint"]
    with figure(path, figsize=(7, 4), dpi=120, ylabel="test accuracy (greedy)", xlabel="level",
                title=f"DA-Aug difficulty check (σ0={result['settings']['sigma0']:g})") as ax:
        for rows, name, color in ((noise, "frame noise (perturb level)", "tab:red"),
                                  (hint, "hint (guidance level)", "tab:blue")):
            lv = [c["level"] for c in rows]  # the hint curve starts at noise 0 = guidance 0 (no hint)
            ax.plot(lv, [c["accuracy"] for c in rows], "o-", color=color, lw=2, label=f"{name}, overall")
            for t in result["tasks"]:
                ax.plot(lv, [c["per_task"].get(t, float("nan")) for c in rows], ":", color=color, alpha=0.35)
        ax.set_xticks(range(result["settings"]["max_level"] + 1))
        ax.plot([], [], ":", color="gray", label="per task")


def write(result: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "da_aug_check.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "da_aug_check.md"), "w") as f:
        f.write(format_table(result) + "\n\n" + verdict(result) + "\n")
    plot(result, os.path.join(out, "da_aug_check.png"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="HF checkpoint directory (the SFT model)")
    p.add_argument("-c", "--config", default=None)
    p.add_argument("--out", default=None, help="directory for da_aug_check.{json,md,png}")
    p.add_argument("--seed", type=int, default=0, help="seed of the frame noise (each level)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. eval.max_samples=40")
    a = p.parse_args(argv)

    from dvr1.config import load_config
    from dvr1.parallel import grid
    from dvr1.train import job
    from dvr1.train.inputs import InputBuilder

    cfg = load_config(a.config, ["log.wandb=false", *a.overrides])
    job.setup_logging()
    pinfo = job.init(cfg)
    recs = job.records(cfg, cfg.eval.split)
    if cfg.eval.max_samples:
        recs = recs[: cfg.eval.max_samples]
    policy = job.build_policy(cfg, a.model, pinfo, trainable=False)
    tok = job.tokenizer(a.model)
    engine = job.evaluation_engine(cfg, policy, a.model)
    builder = InputBuilder(policy, tok, cfg.video, max_prompt_tokens=job.max_prompt_tokens(cfg, a.model),
                           strict=cfg.data.strict, prompt_style=job.prompt_style(cfg))
    result = run_check(engine, builder, tok, recs, cfg.da_aug, cfg.eval.max_new_tokens, seed=a.seed,
                       strict=cfg.data.strict)
    result["settings"].update(model=os.path.abspath(a.model), split=cfg.eval.split, data=job.data_root(cfg))
    print(f"\n{cfg.eval.split} split of {job.data_root(cfg)}, model {a.model}, greedy, noise seed {a.seed}; hints "
          f"from each record's SFT reasoning (dvr1.data.prompts.sft_response) as the trace\n")
    print(format_table(result) + "\n\n" + verdict(result))
    if a.out and grid.is_writer():
        write(result, a.out)
        print(f"\nwritten: {os.path.join(a.out, 'da_aug_check')}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
