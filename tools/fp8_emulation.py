"""Where gpu_check's FP8 tolerance comes from (tools/gpu_check.py ``FP8_TOL``): FP8 "hybrid" training emulated on CPU.

Every decoder GEMM of the tiny policy (QKV, attention output, FC1, FC2: the layers the TE spec makes TransformerEngine
linears; the output layer stays megatron's and is left alone) rounds its operands as TE's FP8 GEMMs do: the input and
the weight to E4M3 (forward, dgrad, wgrad), the output gradient to E5M2 (dgrad, wgrad), each with a per-tensor scale
``fp8_max / amax`` (E4M3 max 448, E5M2 max 57344; delayed scaling after a warm-up pass on the same batch uses the same
amax), accumulation in the bf16 matmul. It runs gpu_check's ``policy`` worker (Reg-GRPO loss on the fixed video batch,
one warm-up pass) in bf16 with the local spec, once plain and once emulated, and prints the comparison of
``_compare`` (max |dlogp|, loss rel, min gradient cosine, gradient norm rel).

An estimate only: TE's kernels, its scale bookkeeping (amax history, margin 0) and fused attention differ in detail.
CPU only (needs ``torch.float8_e4m3fn``): ``PYTHONPATH=. python tools/fp8_emulation.py``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_check  # noqa: E402

E4M3, E5M2 = (torch.float8_e4m3fn, 448.0), (torch.float8_e5m2, 57344.0)


def fp8_round(x: torch.Tensor, fmt) -> torch.Tensor:
    """`x` rounded to FP8 `fmt` (dtype, max) under the per-tensor scale max / amax(|x|), returned in x's dtype."""
    dtype, top = fmt
    scale = top / x.detach().abs().amax().float().clamp_min(1e-12)
    return ((x.float() * scale).to(dtype).float() / scale).to(x.dtype)


class _FP8Linear(torch.autograd.Function):
    """y = q4(x) q4(w)^T; dx = q5(dy) q4(w); dw = q5(dy)^T q4(x) (q4: E4M3, q5: E5M2)."""

    @staticmethod
    def forward(ctx, x, w):
        xq, wq = fp8_round(x, E4M3), fp8_round(w, E4M3)
        ctx.save_for_backward(xq, wq)
        return torch.matmul(xq, wq.t())

    @staticmethod
    def backward(ctx, dy):
        xq, wq = ctx.saved_tensors
        dyq = fp8_round(dy, E5M2)
        return torch.matmul(dyq, wq), torch.matmul(dyq.reshape(-1, dyq.shape[-1]).t(), xq.reshape(-1, xq.shape[-1]))


def emulate_fp8_decoder_linears(vocab_rows: int) -> None:
    """Patch megatron's Column/RowParallelLinear (TP=1) so every linear whose weight has fewer than `vocab_rows` rows
    (all but the output layer) runs `_FP8Linear`, plus its bias."""
    from megatron.core.tensor_parallel import layers

    for cls in (layers.ColumnParallelLinear, layers.RowParallelLinear):
        orig = cls._forward_impl

        def impl(self, input, weight, *args, _orig=orig, **kwargs):
            if weight.shape[0] >= vocab_rows:
                return _orig(self, input, weight, *args, **kwargs)
            y = _FP8Linear.apply(input, weight)
            return y if kwargs.get("bias") is None else y + kwargs["bias"]

        cls._forward_impl = impl


def _worker(ckpt: str, out: str, fp8: bool) -> None:
    from dvr1.models.qwen2_5_vl import load_hf_config

    if fp8:
        emulate_fp8_decoder_linears(load_hf_config(ckpt).text_config.vocab_size)
    gpu_check.worker_policy(types.SimpleNamespace(ckpt=ckpt, dtype="bfloat16", spec="local", fp8="none", warmup=1,
                                                  out=out))


def main() -> None:
    import subprocess

    with tempfile.TemporaryDirectory(prefix="dvr1_fp8_emulation_") as tmp:
        ckpt = gpu_check._tiny_checkpoint(os.path.join(tmp, "tiny"))
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", DVR1_MEGATRON_TENSOR_TYPE_ALIAS="1")
        paths = {}
        for mode in ("bf16", "fp8"):  # each in its own process: the patch stays out of the reference run
            paths[mode] = os.path.join(tmp, f"{mode}.pt")
            subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", ckpt, paths[mode], mode], env=env,
                           check=True, capture_output=True)
        d = gpu_check._compare(*(torch.load(paths[m], weights_only=True) for m in ("bf16", "fp8")))
        print("emulated FP8 hybrid vs bf16 (tiny policy, local spec, CPU): " + ", ".join(
            f"{k} {v:.4g}" for k, v in d.items()))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(sys.argv[2], sys.argv[3], sys.argv[4] == "fp8")
    else:
        main()
