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

Seeking on a long clip (PyAV, sequential decode of every frame vs keyframe seeks; the frames are compared pixel for
pixel): ``OMP_NUM_THREADS=1 python tools/bench_video.py --long /tmp/long_720p.mp4 [--make-long] [--seek-repeat 3]``;
``--make-long`` first writes a 10-minute 1280x720 30 fps H.264 clip (GOP 250, libx264 ultrafast) there (~5 min).
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmark this checkout's dvr1


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


def make_long_clip(path: str, seconds: float = 600.0, width: int = 1280, height: int = 720, fps: int = 30,
                   gop: int = 250) -> None:
    """Write a synthetic H.264 clip (a scrolling gradient with a per-frame band, so every frame differs)."""
    import av
    import numpy as np

    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (height + width)], -1).astype(np.uint8)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0",
                                                       "preset": "ultrafast", "crf": "28"})
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            f = np.roll(base, 4 * i, axis=1)
            f[40:120, 40:400] = (i * 7) % 256
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def bench_seek(path: str, repeat: int) -> None:
    """Seconds per clip and sampled frames/s, sequential vs seeking, on one long clip; frames compared."""
    import numpy as np

    from dvr1.data.pyav import load_frames_pyav, seek_cost
    from dvr1.data.video_io import probe_stream, select_frames

    t0 = time.perf_counter()
    info = probe_stream(path)
    t_probe = time.perf_counter() - t0
    print(f"{path}: {info.num_frames} frames, {info.width}x{info.height}, {info.fps:g} fps, {info.codec}, "
          f"{len(info.key_pts)} keyframes; demux probe {t_probe:.2f} s (included below); "
          f"torch threads {torch.get_num_threads()}\n")
    print("| sampling | frames | frames decoded (seek) | sequential (s/clip) | seek (s/clip) | sequential (frames/s) "
          "| seek (frames/s) | speed-up | same pixels |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for kw in (dict(num_frames=8), dict(num_frames=16), dict(num_frames=32), dict(fps=2.0, max_frames=32)):
        indices, _ = select_frames(info.times, info.fps, last_duration=info.last_duration, **kw)
        res = {}
        for seek in (False, True):
            best = float("inf")
            for _ in range(1 if not seek else repeat):  # one pass of the full decode: it takes ~a minute
                t0 = time.perf_counter()
                clip = load_frames_pyav(path, seek=seek, **kw)
                best = min(best, time.perf_counter() - t0)
            res[seek] = (best, clip)
        (ts, a), (tk, b) = res[False], res[True]
        same = a.indices == b.indices and np.array_equal(a.frames, b.frames)
        name = ", ".join(f"{k}={v}" for k, v in kw.items())
        n = len(indices)
        print(f"| {name} | {n} | {seek_cost(info, indices)} | {ts:.2f} | {tk:.2f} | {n / ts:.1f} | {n / tk:.1f} "
              f"| {ts / tk:.0f}x | {'yes' if same else 'NO'} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", help="folder of .webm clips (default: build a small set)")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--num-frames", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "gpu"], default=None)
    ap.add_argument("--threads", type=int, default=1, help="DALI num_threads")
    ap.add_argument("--max-pixels", type=int, default=112 * 112)
    ap.add_argument("--long", help="benchmark seeking on this clip instead (PyAV)")
    ap.add_argument("--make-long", action="store_true", help="write the 10-minute 720p clip to --long first")
    ap.add_argument("--seek-repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if args.long:
        if args.make_long or not os.path.exists(args.long):
            make_long_clip(args.long)
        bench_seek(args.long, args.seek_repeat)
        return

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
