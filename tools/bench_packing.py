"""Benchmark `model.packing`: padded vs packed training pass (forward + backward through megatron's schedule) and
log-prob pass (forward only) of the Qwen2.5-VL policy on CPU (TP=1, local spec), on an RL batch whose prompt lengths
follow a video-length distribution.

The batch: `--prompts` prompts, each a video of a duration drawn log-uniformly in [`--min-s`, `--max-s`] seconds
(a few seconds to minutes, as in video QA benchmarks: LongVideoBench's duration groups run 8 s to 1 h, Video-MME's
"short" videos are under 2 min), sampled as dvr1 samples with `video.num_frames=0`: `--fps` frames per second, at
most `--max-frames` (`dvr1.data.video_io.sample_frame_indices`, the trainer's rule, on a 30 fps source), frames of
`--side` x `--side` pixels -> (frames/2) x (side/28)^2 video tokens; `--text` text tokens around the video; `--group`
responses per prompt of `--resp-min`..`--resp-max` tokens (uniform). Rows are right-padded to the longest of the
batch (`dvr1.train.inputs.build_batch`), `--micro-groups` groups per microbatch (`rl.micro_batch_groups`), as the trainer does.
Video embeddings are random (the frozen vision tower runs once per clip at prepare time, the same for both layouts).

Layouts: padded (every row right-padded to the batch's longest); packed (the local spec's: bins of the microbatch's
longest sequence under a block-diagonal mask, `dvr1.parallel.packing`); with `--one-row` also the TE spec's THD
layout (one row per microbatch) run under the CPU mask. Columns: computed tokens = rows x length summed over the
microbatches; padding = 1 - real tokens / computed tokens; wall / CPU = median seconds of `--repeats`
passes (CPU = this process's user + system seconds, all threads: less sensitive than wall time to other jobs on a
shared machine); tokens/s = real tokens / wall. The packed and padded results are compared (loss and log-probs,
relative error) so a wrong speed-up cannot pass unnoticed.

On CPU the packed rows use the local spec's block-diagonal causal mask: attention still computes the full C x C
scores of each packed row (C = the microbatch's longest sequence), so the gain is the rows the padding took: GEMM
tokens (QKV, projection, MLP, output layer) and whole C x C attention blocks. The one-row layout (`--one-row`)
shows why the CPU path does not use it: G sequences of length L in one row cost (G L)^2 attention, G times the
padded layout's G L^2. With the TE spec on GPUs, the one THD row's attention computes only each sequence's own causal
block (sum of L_i^2 / 2), so the GPU path gets the GEMM saving with no filler at all plus the attention saving.

Usage: python tools/bench_packing.py [--prompts 8 --group 4 --micro-groups 1 --hidden 256 --layers 2 --repeats 3
       --threads 1 --one-row]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time


def build(args):
    import torch

    from dvr1.data.video_io import sample_frame_indices
    from dvr1.models.qwen2_5_vl import Qwen25VLPolicy, load_hf_config, load_hf_weights
    from dvr1.models.rope import get_rope_index
    from dvr1.models.tiny import make_tiny_checkpoint
    from dvr1.rollout.base import RolloutRequest
    from dvr1.train.inputs import Prepared, build_batch

    ckpt = make_tiny_checkpoint(tempfile.mkdtemp(prefix="bench_packing_"), ["a b c d <think>x</think>"] * 10,
                                seed=0, vocab_size=512,
                                text=dict(hidden_size=args.hidden, intermediate_size=int(args.hidden * 5.25) // 8 * 8,
                                          num_hidden_layers=args.layers, num_attention_heads=args.hidden // 32,  # head_dim 32 (mrope_section 4+6+6)
                                          num_key_value_heads=max(1, args.hidden // 128), max_position_embeddings=32768))
    cfg = load_hf_config(ckpt)
    policy = Qwen25VLPolicy(cfg)
    load_hf_weights(policy, ckpt)
    g = torch.Generator().manual_seed(args.seed)
    vid, h, merge = cfg.video_token_id, cfg.text_config.hidden_size, 2
    hi = cfg.text_config.vocab_size  # ordinary token ids in [10, vocab) (the special ids, the video's too, are < 10)
    assert vid < 10
    side = args.side // 28 * 2  # patches per side (14 px), a multiple of the merge size
    items, durations = [], []
    for _ in range(args.prompts):
        u = float(torch.rand((), generator=g))
        dur = math.exp(math.log(args.min_s) + u * (math.log(args.max_s) - math.log(args.min_s)))
        durations.append(dur)
        n_frames = len(sample_frame_indices(max(1, round(dur * 30)), 30.0, fps=args.fps, max_frames=args.max_frames))
        grid = torch.tensor([[n_frames // 2, side, side]])
        n_vid = int(grid.prod()) // merge**2
        ids = torch.cat([torch.randint(10, hi, (args.text // 2,), generator=g), torch.full((n_vid,), vid),
                         torch.randint(10, hi, (args.text - args.text // 2,), generator=g)])
        pos = get_rope_index(ids.view(1, -1), vid, grid, [2 / args.fps], merge, 2)[:, 0]
        p = Prepared(None, "", RolloutRequest(ids, pos, torch.randn(n_vid, h, generator=g)), grid, 2 / args.fps, vid)
        for _ in range(args.group):
            n = int(torch.randint(args.resp_min, args.resp_max + 1, (1,), generator=g))
            items.append((p, torch.randint(10, hi, (n,), generator=g).tolist()))
    return policy, build_batch(items, 0), durations


LAYOUTS = ("padded", "packed", "one_row")


def computed_tokens(batch, layout, rows):
    """Tokens the layout computes (rows x length summed over the microbatches)."""
    from dvr1.parallel.packing import pack, plan

    micro = batch.split(rows)
    if layout == "padded":
        return batch.input_ids.numel()
    kws = plan([mb.seq_lens for mb in micro], "te" if layout == "one_row" else "local")[0]
    return sum(pack(mb, **kw).input_ids.numel() for mb, kw in zip(micro, kws))


def run_pass(policy, batch, layout, train, rows):
    import torch

    import dvr1.parallel.packing as packing_mod
    from dvr1.parallel.forward import forward_backward

    n_tok = batch.resp_mask.sum()

    def loss_fn(logp, _e, r):  # the batch-mean response NLL, this microbatch's share
        return -(logp * batch.resp_mask[r]).sum() / n_tok, {}

    plan = packing_mod.plan
    if layout == "one_row":  # the TE spec's THD layout (one row per microbatch), attention by the mask
        packing_mod.plan = lambda m, spec, *a, **k: plan(m, "te", *a, **k)
    policy.zero_grad()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.enable_grad() if train else torch.no_grad():
            res = forward_backward(policy, batch, loss_fn if train else None, forward_only=not train,
                                   packing=layout != "padded", rows_per_microbatch=rows)
        return time.perf_counter() - t0, time.process_time() - c0, res
    finally:
        packing_mod.plan = plan


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4, help="responses per prompt (G)")
    ap.add_argument("--micro-groups", type=int, default=1, help="groups per microbatch (rl.micro_batch_groups)")
    ap.add_argument("--min-s", type=float, default=5.0)
    ap.add_argument("--max-s", type=float, default=180.0)
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--max-frames", type=int, default=64)
    ap.add_argument("--side", type=int, default=112, help="frame side in pixels (multiple of 28)")
    ap.add_argument("--text", type=int, default=64, help="text tokens per prompt")
    ap.add_argument("--resp-min", type=int, default=16)
    ap.add_argument("--resp-max", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one-row", action="store_true", help="also time the THD layout (one row per microbatch) under "
                    "the CPU mask, whose attention is (sum L)^2 per microbatch")
    args = ap.parse_args(argv)

    import torch

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from dvr1.parallel.packing import padding_fraction
    from dvr1.parallel.setup import init_parallel

    torch.set_num_threads(args.threads)
    init_parallel(tp=1, pp=1, seed=1234)
    policy, batch, durations = build(args)
    lens = batch.seq_lens
    rows = args.group * args.micro_groups
    N, S = batch.input_ids.shape
    tokens = sum(lens)
    print(f"batch: {args.prompts} prompts x G={args.group} = {N} rows; video durations {min(durations):.0f}-"
          f"{max(durations):.0f} s (median {statistics.median(durations):.0f} s); sequence lengths {min(lens)}-"
          f"{max(lens)} (median {statistics.median(lens):.0f}); padded length S={S}; "
          f"padding {100 * padding_fraction(lens):.1f} % of {N * S} tokens")
    trimmed = sum(mb.num_rows * max(mb.seq_lens) for mb in batch.split(rows))
    print(f"for reference: padding each microbatch only to its own longest sequence would compute {trimmed} tokens "
          f"(padding {100 * (1 - tokens / trimmed):.1f} %); the rest of the packed layout's gain is rows shared")
    print(f"model: hidden {args.hidden}, {args.layers} layers, fp32, CPU threads {args.threads}; "
          f"microbatch = {args.micro_groups} group(s) ({rows} rows); median of {args.repeats}")
    print()
    print("| pass | layout | computed tokens | padding | wall s | CPU s | tokens/s | speed-up (wall) | speed-up (CPU) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    layouts = LAYOUTS if args.one_row else LAYOUTS[:2]
    for train in (True, False):
        times = {k: [] for k in layouts}
        results = {}
        run_pass(policy, batch, "padded", train, rows)  # warm-up (allocator, megatron buffers)
        for _ in range(args.repeats):
            for layout in layouts:
                w, c, res = run_pass(policy, batch, layout, train, rows)
                times[layout].append((w, c))
                results[layout] = res
        med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in times.items()}
        name = "training (fwd+bwd)" if train else "log-probs (fwd)"
        for layout in layouts:
            w, c = med[layout]
            computed = computed_tokens(batch, layout, rows)
            sw, sc = med["padded"][0] / w, med["padded"][1] / c
            label = {"padded": "padded", "packed": "packed (bins, mask)", "one_row": "packed (1 row, mask)"}[layout]
            print(f"| {name} | {label} | {computed} | {100 * (1 - tokens / computed):.1f} % | {w:.2f} | "
                  f"{c:.2f} | {tokens / w:.0f} | {sw:.2f}x | {sc:.2f}x |")
        for layout in layouts[1:]:
            a, b = results[layout].logp.double(), results["padded"].logp.double()
            msg = f"{name}, {layout}: packed vs padded log-probs relative error {float((a - b).norm() / b.norm()):.2e}"
            if train:
                la, lb = float(results[layout].loss), float(results["padded"].loss)
                msg += f", loss {abs(la - lb) / abs(lb):.2e}"
            notes.append(msg)
    print()
    print("\n".join(notes))


if __name__ == "__main__":
    main()
