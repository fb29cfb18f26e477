"""Video loading throughput: DALI (CPU or GPU) vs PyAV, bare decoder vs the full pipeline, on the same clips.

For each backend, "decode" = the bare decoder returning the sampled frames (uint8 [T, H, W, 3]) and "full" =
decode + sample + resize to the 28-px grid + normalise (float32 [T, 3, H', W']):
  - DALI: ``load_frames_dali`` (decoder-only pipeline) vs ``load_video_dali`` (one fused pipeline).
  - PyAV: ``load_frames(backend="pyav")`` vs that + ``normalize_frames`` (torch).
Frames/s counts sampled output frames (T per clip), wall clock, best of ``--repeat`` passes over all clips.
Prints a Markdown table; target: DALI full >= 0.8x DALI decode.

Usage: ``OMP_NUM_THREADS=1 python tools/bench_video.py [--videos DIR] [--clips 8] [--num-frames 16]
[--repeat 3] [--device cpu|gpu] [--threads 1]``. Without ``--videos`` it builds a small VP9 set
(``python -m dvr1.data.build``) in a temporary folder.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

import torch


def _time(fn, clips, repeat):
    best = float("inf")
    frames = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        frames = sum(fn(c) for c in clips)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return frames / best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", help="folder of .webm clips (default: build a small set)")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--num-frames", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "gpu"], default=None)
    ap.add_argument("--threads", type=int, default=1, help="DALI num_threads")
    ap.add_argument("--max-pixels", type=int, default=112 * 112)
    args = ap.parse_args(argv)

    from dvr1.data.dali import default_device, load_frames_dali, load_video_dali
    from dvr1.data.processing import normalize_frames
    from dvr1.data.video import load_frames

    tmp = None
    if args.videos is None:
        tmp = tempfile.TemporaryDirectory()
        subprocess.run([sys.executable, "-m", "dvr1.data.build", "--out", tmp.name, "--n-train", str(args.clips),
                        "--n-val", "1", "--n-test", "1"], check=True, stdout=subprocess.DEVNULL)
        args.videos = os.path.join(tmp.name, "videos")
    clips = sorted(glob.glob(os.path.join(args.videos, "*.webm")))[: args.clips]
    if not clips:
        raise SystemExit(f"bench_video: no .webm files in {args.videos}")
    dev = args.device or default_device()
    n, mp = args.num_frames, args.max_pixels

    def dali_decode(p):
        return len(load_frames_dali(p, num_frames=n, device=dev, num_threads=args.threads).indices)

    def dali_full(p):
        return load_video_dali(p, num_frames=n, max_pixels=mp, device=dev, num_threads=args.threads).video.shape[0]

    def pyav_decode(p):
        return len(load_frames(p, num_frames=n).indices)

    def pyav_full(p):
        return normalize_frames(load_frames(p, num_frames=n).frames, max_pixels=mp).shape[0]

    for fn in (dali_decode, dali_full):  # build the pipelines before timing
        fn(clips[0])
    rows = []
    for name, dec, full in ((f"DALI-{dev.upper()}", dali_decode, dali_full), ("PyAV", pyav_decode, pyav_full)):
        d, f = _time(dec, clips, args.repeat), _time(full, clips, args.repeat)
        rows.append((name, d, f))
    print(f"{len(clips)} VP9 clips, {n} frames each, max_pixels {mp}, DALI num_threads {args.threads}, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| backend | decode only (frames/s) | full pipeline (frames/s) | full / decode |")
    print("|---|---:|---:|---:|")
    for name, d, f in rows:
        print(f"| {name} | {d:.0f} | {f:.0f} | {f / d:.2f} |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
