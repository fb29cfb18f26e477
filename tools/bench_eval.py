"""Evaluation time: the native sampler vs colocated vLLM (`eval.engine`), the same checkpoint and records.

Runs `dvr1.train.evaluate.evaluate` (greedy, `eval.max_new_tokens`, batches of 8 records) on ``eval.split`` of the
config's dataset (built first if missing, as the main job does) twice: with the native KV-cache sampler and with the
vLLM engine `dvr1.train.job.evaluation_engine` starts for ``eval.engine=vllm``. Both runs prepare the records the same
way (video decoding + the policy's vision tower, `dvr1.train.inputs.InputBuilder`); the table splits each run's wall
time into generation (the engine's ``generate`` calls) and the rest. The vLLM engine's start-up is timed separately
(once per process: later evals reuse the engine). The runs use ``model.mrope_rule=qwen`` unless the overrides
say otherwise, so the native sampler uses vLLM's mrope rule and their answers can be compared record for record.

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=. python tools/bench_eval.py [-c examples/tiny_cpu.yaml] [--model HF_DIR]
[key=value ...]`` (default model: the config's tiny checkpoint, made on first use). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time


class _Timed:
    """A rollout engine whose ``generate`` calls are timed and their response tokens counted."""

    def __init__(self, engine):
        self.engine, self.seconds, self.tokens = engine, 0.0, 0

    def generate(self, requests, sampling, **kw):
        t0 = time.perf_counter()
        outs = self.engine.generate(requests, sampling, **kw)
        self.seconds += time.perf_counter() - t0
        self.tokens += sum(len(ids) for o in outs for ids in o.token_ids)
        return outs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-c", "--config", default="examples/tiny_cpu.yaml")
    p.add_argument("--model", default=None, help="HF checkpoint to evaluate (default: the config's tiny checkpoint)")
    p.add_argument("--batch", type=int, default=8, help="records per generate call (dvr1 eval: 8)")
    p.add_argument("--repeat", type=int, default=3, help="evals per engine, taking turns; the median is shown")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. eval.max_samples=40")
    a = p.parse_args(argv)

    from dvr1.config import load_config
    from dvr1.train import job
    from dvr1.train.evaluate import evaluate
    from dvr1.train.inputs import InputBuilder

    cfg = load_config(a.config, ["log.wandb=false", "log.progress=false", "model.mrope_rule=qwen",
                                 *a.overrides])
    pinfo = job.init(cfg)
    job.ensure_data(cfg)
    hf = a.model or job.ensure_model(cfg)
    recs = job.records(cfg, cfg.eval.split)
    if cfg.eval.max_samples:
        recs = recs[: cfg.eval.max_samples]
    policy = job.build_policy(cfg, hf, pinfo, trainable=False)
    tok = job.tokenizer(hf)

    engines = {}
    for name in ("native", "vllm"):
        cfg.eval.engine = name
        t0 = time.perf_counter()
        engines[name] = job.evaluation_engine(cfg, policy, hf)
        engines[name + "_start"] = time.perf_counter() - t0
    runs, answers = {"native": [], "vllm": []}, {}
    for _ in range(a.repeat):
        for name in ("native", "vllm"):  # the engines take turns: a load change on shared cores hits both
            engine = _Timed(engines[name])
            # a fresh builder: every run decodes and encodes its videos (the builder caches them)
            builder = InputBuilder(policy, tok, cfg.video, max_prompt_tokens=job.max_prompt_tokens(cfg, hf))
            t0 = time.perf_counter()
            res = evaluate(engine, builder, tok, recs, cfg.eval.max_new_tokens, batch=a.batch)
            runs[name].append((time.perf_counter() - t0, engine.seconds, engine.tokens, res))
            answers[name] = [s["response"] for s in res["samples"]]
    rows = []
    for name in ("native", "vllm"):
        wall, gen, tokens, res = sorted(runs[name], key=lambda r: r[0])[len(runs[name]) // 2]  # the median run
        rows.append((name, engines[name + "_start"], wall, gen, res["n"], tokens, res["accuracy"]))

    same = answers["vllm"] == answers["native"]
    base = rows[0][2]
    print(f"\n{rows[0][4]} records of {cfg.data.root}/{cfg.eval.split}.jsonl, model {hf}, greedy, at most "
          f"{cfg.eval.max_new_tokens} new tokens, {a.batch} records per generate call, {cfg.threads or 'all'} torch "
          f"threads, median of {a.repeat} evals per engine; first {len(answers['native'])} answers equal: "
          f"{'yes' if same else 'NO'}\n")
    print("| engine | engine start (s) | eval wall (s) | of which generate (s) | records/s | generated tokens | "
          "tokens/s (generate) | accuracy | eval time vs native |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, start, wall, gen, n, tokens, acc in rows:
        print(f"| {name} | {start:.1f} | {wall:.1f} | {gen:.1f} | {n / wall:.2f} | {tokens} | {tokens / gen:.0f} | "
              f"{acc:.3f} | {base / wall:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
