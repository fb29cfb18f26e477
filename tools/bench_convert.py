"""Benchmark checkpoint conversion memory on a synthetic checkpoint with Qwen2.5-VL-72B-sized tensors.

The synthetic HF checkpoint has the 72B language-model shapes (hidden 8,192, vocab 152,064, intermediate 29,568,
64 heads / 8 KV heads, untied embeddings, bf16) but only --layers layers, and a 2-block vision tower; its tensors
hold random bits (bf16). Steps, each in a fresh subprocess so the peak of one never counts for another:

  make           write the synthetic HF checkpoint (one safetensors file per tensor group + index.json)
  hf->megatron   dvr1.models.convert.convert_hf_to_megatron(--tp, --pp)
  megatron->hf   dvr1.models.convert.convert_megatron_to_hf(--max-shard-size)
  verify         every tensor of the round trip equals the original bit for bit (read one pair at a time)

Memory is read from Linux /proc/self/status: "baseline" is VmRSS after the imports, "peak" is VmHWM (the process's
peak resident set) at the end of the step; "peak - baseline" is what the step itself needed. It is compared with
the largest single tensor of the checkpoint (the embedding / output layer: 152,064 x 8,192 bf16 = 2.49 GB).

Usage: python tools/bench_convert.py [--layers 2 --tp 8 --pp 2 --max-shard-size 2GB --dir /tmp/dvr1_bench_convert
       --keep]
Prints a markdown table; the working directory (about 3 x the checkpoint size on disk) is removed unless --keep.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("make", "hf->megatron", "megatron->hf", "verify")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status (Linux only)")


def synthetic_config(layers: int):
    """72B text shapes with `layers` layers; a 2-block vision tower (its tensors are far smaller than the LM's)."""
    from transformers import Qwen2_5_VLConfig

    from dvr1.models.presets import preset_config

    d = preset_config("72B").to_dict()
    d["text_config"].update(num_hidden_layers=layers, dtype="bfloat16")
    d["text_config"].pop("layer_types", None)  # re-derived for `layers`
    d["vision_config"].update(depth=2, fullatt_block_indexes=[1])
    d["dtype"] = "bfloat16"
    cfg = Qwen2_5_VLConfig(**d)
    return cfg


def make_checkpoint(path: str, layers: int) -> int:
    """Write the synthetic checkpoint group by group (embedding, each layer, norm + lm_head, vision); returns the
    largest tensor's size in bytes. Names and shapes come from transformers' model built on `meta`."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2_5_VLForConditionalGeneration

    from dvr1.models.hf_mapping import canonical_hf_name

    cfg = synthetic_config(layers)
    os.makedirs(path, exist_ok=True)
    cfg.save_pretrained(path)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    shapes = {canonical_hf_name(n): tuple(p.shape) for n, p in model.named_parameters()}
    if "lm_head.weight" not in shapes:
        raise RuntimeError("expected untied embeddings in the 72B synthetic config")

    def group(name):
        if name.startswith("model.layers."):
            return "layer" + name.split(".")[2]
        return {"model.embed_tokens.weight": "embed", "lm_head.weight": "head", "model.norm.weight": "head"}.get(
            name, "visual")

    groups = {}
    for n in shapes:
        groups.setdefault(group(n), []).append(n)
    g = torch.Generator().manual_seed(0)
    weight_map, largest = {}, 0
    for i, (gname, names) in enumerate(groups.items()):
        fn = f"synthetic-{i:05d}.safetensors"
        tensors = {n: torch.randint(-2 ** 15, 2 ** 15, shapes[n], dtype=torch.int16, generator=g)
                   .view(torch.bfloat16) for n in names}
        largest = max([largest] + [t.numel() * 2 for t in tensors.values()])
        save_file(tensors, os.path.join(path, fn), metadata={"format": "pt"})
        weight_map.update({n: fn for n in names})
        del tensors
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(2 * _numel(s) for s in shapes.values())}, "weight_map": weight_map},
                  f)
    return largest


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def verify(a_dir: str, b_dir: str) -> int:
    """Number of tensors compared; raises AssertionError on the first difference (bitwise, as int16)."""
    import torch

    from dvr1.models.safetensors_io import SafetensorsFiles

    a, b = SafetensorsFiles(a_dir), SafetensorsFiles(b_dir)  # plain reads: no mmap pages held in RSS
    if set(a.keys()) != set(b.keys()):
        raise AssertionError(f"tensor names differ: {sorted(set(a.keys()) ^ set(b.keys()))[:8]}")
    for k in a.keys():
        x, y = a.get(k), b.get(k)
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x.view(torch.int16), y.view(torch.int16)):
            raise AssertionError(f"{k}: differs after the round trip")
        del x, y
    return len(a.keys())


def worker(args) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, REPO)
    import torch  # noqa: F401

    from dvr1.models import convert  # noqa: F401  (imports megatron-core and transformers before the baseline)

    hf, meg, back = (os.path.join(args.dir, d) for d in ("hf", "megatron", "hf_back"))
    base = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    info = {}
    if args.worker == "make":
        info["largest"] = make_checkpoint(hf, args.layers)
    elif args.worker == "hf->megatron":
        convert.convert_hf_to_megatron(hf, meg, tp=args.tp, pp=args.pp, progress=False)
    elif args.worker == "megatron->hf":
        convert.convert_megatron_to_hf(meg, back, max_shard_size=args.max_shard_size, progress=False)
    else:
        info["tensors"] = verify(hf, back)
    info.update(wall=time.perf_counter() - t0, baseline=base, peak=_status_bytes("VmHWM"))
    print("RESULT " + json.dumps(info))


def _gb(x: int) -> str:
    return f"{x / 1e9:.2f} GB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--tp", type=int, default=8)
    p.add_argument("--pp", type=int, default=2)
    p.add_argument("--max-shard-size", default="2GB")
    p.add_argument("--dir", default="/tmp/dvr1_bench_convert")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--worker", choices=STEPS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    rows, largest = [], None
    try:
        for step in STEPS:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", step, "--layers", str(args.layers),
                   "--tp", str(args.tp), "--pp", str(args.pp), "--max-shard-size", args.max_shard_size,
                   "--dir", args.dir]
            out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not lines:
                raise SystemExit(f"{step} failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            r = json.loads(lines[-1][len("RESULT "):])
            largest = r.get("largest", largest)
            rows.append((step, r))
        sizes = {d: sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(args.dir, d))
                        for f in fs) for d in ("hf", "megatron", "hf_back")}
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    print(f"synthetic Qwen2.5-VL-72B-shaped checkpoint: {args.layers} layers, bf16, "
          f"{_gb(sizes['hf'])} on disk; largest tensor {_gb(largest)} (152,064 x 8,192 bf16); "
          f"TP={args.tp} PP={args.pp}, max shard {args.max_shard_size}; dist checkpoint {_gb(sizes['megatron'])}, "
          f"HF export {_gb(sizes['hf_back'])}\n")
    print("| step | wall (s) | baseline RSS | peak RSS | peak - baseline | (peak - baseline) / largest tensor |")
    print("|---|---:|---:|---:|---:|---:|")
    for step, r in rows:
        above = r["peak"] - r["baseline"]
        print(f"| {step} | {r['wall']:.1f} | {_gb(r['baseline'])} | {_gb(r['peak'])} | {_gb(above)} | "
              f"{above / largest:.2f} |")
    n = next(r["tensors"] for s, r in rows if s == "verify")
    print(f"\nround trip HF -> megatron -> HF: {n} tensors bit-identical")


if __name__ == "__main__":
    main()
