"""Attention results that do not depend on the CPU thread count (megatron-core 0.16.1, local layer spec).

Upstream: ``fusions/fused_softmax.py:331`` (``FusedScaleMaskSoftmax.forward_torch_softmax``, the fallback every CPU
run takes) builds ``torch.nn.Softmax(dim=-1)``. Its backward, ATen's ``_softmax_backward_data`` on CPU, gives
results that differ in the last bit with the number of intra-op threads (measured with torch 2.13: a
``[32, 350, 350]`` gradient differs between 1 and 2 threads; the forward, the GEMMs and every other op of a dvr1 SFT
step do not). So the same run gave a different model at ``threads=2`` than at ``threads=1``, and a machine's core
count decided a result.

Fix: inside that module ``torch.nn.Softmax`` is :class:`Softmax`, whose forward is ``torch.softmax`` and whose
backward is the same ``torch._softmax_backward_data`` kernel run on one intra-op thread (the caller's count is
restored after it, also on error). At one thread nothing changes, bit for bit; at more, the step's other ops keep
their threads and the result equals the one-thread result. Installed only on CPU hosts, with the other fallbacks
(``megatron_patches.apply``); CUDA kernels are untouched. Tested in tests/unit/test_megatron_patches.py
(1 vs 3 threads, and against the unpatched module at 1 thread).
"""

import torch

from megatron_patches import _torch_view

NAME = "softmax_threads"


class _SoftmaxOneThreadBackward(torch.autograd.Function):
    """``torch.softmax(x, dim)``; backward: ``torch._softmax_backward_data`` on one intra-op thread."""

    @staticmethod
    def forward(ctx, x, dim):
        y = torch.softmax(x, dim)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return torch._softmax_backward_data(grad, y, ctx.dim, y.dtype), None
        finally:
            torch.set_num_threads(threads)


class Softmax(torch.nn.Module):
    """Drop-in for ``torch.nn.Softmax(dim)`` whose gradient does not depend on the intra-op thread count."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SoftmaxOneThreadBackward.apply(x, self.dim)


class _NNView:
    """Forwards to ``torch.nn`` except ``Softmax``."""

    Softmax = Softmax

    def __getattr__(self, name):
        return getattr(torch.nn, name)


def apply() -> None:
    """Give ``fusions/fused_softmax.py`` a ``torch.nn`` whose ``Softmax`` is :class:`Softmax`. Idempotent."""
    from megatron.core.fusions import fused_softmax

    _torch_view.install(fused_softmax, attrs={"nn": _NNView()})
