"""Benchmark the per-token log-prob path: peak memory and time of forward+backward (TP=1, CPU).

Variants (each in a fresh subprocess, so one variant's allocations never affect another's numbers):
  naive           logits = hidden @ W.T (fp32, materialised [tokens, vocab]), log_softmax, gather
  vocab_parallel  dvr1.parallel.logprobs.vocab_parallel_logprobs on GIVEN logits [tokens, vocab] (they are an
                  input here: created before measuring, gradient w.r.t. the logits only)
  fused           dvr1.parallel.logprobs.fused_linear_logprobs(hidden, W, target): logits never materialised

Memory is measured from Linux /proc/self/status: after the inputs exist, the peak-RSS counter VmHWM is reset by
writing "5" to /proc/self/clear_refs, one forward+backward runs, and the peak is read back. Columns:
  peak RSS            the process's peak resident set during the step (bytes; includes Python, torch, inputs)
  peak above inputs   peak RSS minus the resident set just before the step (bytes)
  working memory      peak above inputs minus the bytes of the gradients the step must return (W.grad and
                      hidden.grad, or logits.grad) -- the scratch memory of the method itself
Time is the median wall time (seconds) of --repeats forward+backward steps, each as above; CPU time is the
process's user+system seconds over the same step (all threads; less sensitive than wall time to other processes
sharing the cores, though OpenMP spin-waiting still inflates it under contention).

With --ddp the output weight is set up as megatron DDP holds it in training: a pre-allocated fp32 `main_grad`
(part of the inputs) and the `grad_added_to_main_grad` flag. naive's autograd weight gradient is then added into
main_grad and dropped, as DDP's backward hook does; fused adds straight into main_grad
(`weight_grad_to_main_grad=True`, megatron's gradient-accumulation-fusion contract), so no weight-gradient tensor
exists. "working memory" then subtracts only hidden.grad.

Usage: python tools/bench_logprob.py [--vocab 151936 --tokens 2048 --hidden 2048 --repeats 3 --chunk-size 1024]
       [--ddp]
"""

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = ("naive", "vocab_parallel", "fused")


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status (Linux only)")


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(args):
    import torch

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from dvr1.parallel.logprobs import fused_linear_logprobs, vocab_parallel_logprobs

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, h, v = args.tokens, args.hidden, args.vocab
    hidden = torch.randn(n, h).requires_grad_(True)
    weight = (torch.randn(v, h) * 0.02).requires_grad_(True)
    target = torch.randint(0, v, (n,))
    wts = torch.rand(n) + 0.5  # a per-token upstream gradient, as an RL loss gives
    logits = None
    if args.ddp:
        weight.main_grad = torch.zeros_like(weight)  # resident before measuring, like DDP's grad buffer
        weight.grad_added_to_main_grad = False
    if args.worker == "vocab_parallel":
        with torch.no_grad():
            logits = (hidden @ weight.t()).requires_grad_(True)

    def step():
        if args.worker == "naive":
            lp = torch.log_softmax((hidden @ weight.t()).float(), -1).gather(-1, target[:, None]).squeeze(-1)
        elif args.worker == "vocab_parallel":
            lp, _ = vocab_parallel_logprobs(logits, target, chunk_size=args.chunk_size)
        else:
            lp, _ = fused_linear_logprobs(hidden, weight, target, chunk_size=args.chunk_size,
                                          weight_grad_to_main_grad=args.ddp)
        (lp * wts).sum().backward()
        if args.ddp:  # megatron DDP's backward hook (distributed_data_parallel.py:437)
            if weight.grad is not None and not weight.grad_added_to_main_grad:
                weight.main_grad.add_(weight.grad)
            weight.grad, weight.grad_added_to_main_grad = None, False
        return float(lp.detach().double().sum())

    leaves = [logits] if logits is not None else [hidden, weight]
    times, cpu, peaks, above, working = [], [], [], [], []
    for _ in range(args.repeats):
        for t in leaves:
            t.grad = None
        gc.collect()
        base = _status_kb("VmRSS")
        _reset_peak()
        t0, c0 = time.perf_counter(), time.process_time()
        checksum = step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        peak = _status_kb("VmHWM")
        grad_bytes = sum(t.grad.numel() * t.grad.element_size() for t in leaves if t.grad is not None)
        times.append(dt)
        cpu.append(dc)
        peaks.append(peak)
        above.append(peak - base)
        working.append(peak - base - grad_bytes)
    print(json.dumps({"variant": args.worker, "threads": torch.get_num_threads(), "times": times, "cpu": cpu, "peak": max(peaks), "above": max(above),
                      "working": max(working), "checksum": checksum}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads per variant (0: torch's default)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--ddp", action="store_true", help="output weight with a megatron-DDP main_grad (see above)")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    variants = [x for x in args.variants.split(",") if x]
    bad = [x for x in variants if x not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {bad}; choose from {list(VARIANTS)}")
    rows = {}
    for name in variants:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--vocab", str(args.vocab),
               "--tokens", str(args.tokens), "--hidden", str(args.hidden), "--repeats", str(args.repeats),
               "--chunk-size", str(args.chunk_size), "--threads", str(args.threads)] + (["--ddp"] if args.ddp else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"bench_logprob: variant {name} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])

    import torch

    print(f"tokens={args.tokens} hidden={args.hidden} vocab={args.vocab} fp32 TP=1 chunk_size={args.chunk_size} "
          f"repeats={args.repeats} ddp={args.ddp} torch={torch.__version__} threads={rows[variants[0]]['threads']} "
          f"(CPU)\n")
    ref = rows.get("naive")
    print("| variant | median fwd+bwd (s) | time / naive | median CPU time (s) | CPU / naive | peak RSS (bytes) | peak above inputs (bytes) "
          "| above inputs / naive | working memory (bytes) | working / naive | sum of log-probs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        med = statistics.median(r["times"])
        tr = f"{med / statistics.median(ref['times']):.2f}" if ref else "-"
        cmed = statistics.median(r["cpu"])
        cr = f"{cmed / statistics.median(ref['cpu']):.2f}" if ref else "-"
        ar = f"{r['above'] / ref['above']:.3f}" if ref else "-"
        wr = f"{r['working'] / ref['working']:.3f}" if ref else "-"
        print(f"| {name} | {med:.2f} | {tr} | {cmed:.2f} | {cr} | {r['peak']:,} | {r['above']:,} | {ar} | {r['working']:,} | {wr} "
              f"| {r['checksum']:.4f} |")


if __name__ == "__main__":
    main()
