"""CPU fallback for megatron-core's FP32 optimizer path, grad-norm and clipping (megatron-core 0.16.1).

Upstream call sites:

- ``optimizer/optimizer.py:907`` (``FP32Optimizer._scale``), ``:473-485`` (``MixedPrecisionOptimizer`` found_inf /
  dummy overflow / unit scale) allocate with ``device='cuda'``; ``:1141`` (``ChainedOptimizer.get_loss_scale``)
  uses ``torch.cuda.current_device()``; ``:362`` calls ``torch.cuda.empty_cache()`` (offload_to_cpu).
- ``optimizer/clip_grads.py:90, 103, 115, 174, 207`` (``get_grad_norm_fp32``, ``count_zeros_fp32``) allocate with
  ``device='cuda'``; ``utils.py:1207`` (``local_multi_tensor_l2_norm``, the no-apex L2 norm) too.
- ``optimizer/clip_grads.py:167`` (``clip_grad_by_total_norm_fp32``) asserts
  ``param.grad.type() == 'torch.cuda.FloatTensor'``, which a CPU fp32 grad never is.
- ``optimizer/distrib_optimizer.py:791`` (loading a DistributedOptimizer state) allocates on
  ``torch.cuda.current_device()``.

Fix: tensor factories in those modules allocate on CPU, ``current_device`` is the CPU, ``empty_cache`` is a no-op,
and the name ``clip_grad_by_total_norm_fp32`` inside ``optimizer/optimizer.py`` (imported there at :50, called at
:215 and :1324) is bound to :func:`clip_grad_by_total_norm_fp32_cpu`, which checks the dtype instead of the CUDA
type string and scales in place like upstream. With this, ``get_megatron_optimizer`` + megatron DDP run an fp32
Adam step on CPU. The ``Tensor.type()`` checks of the bf16 / DistributedOptimizer constructors are handled
separately by the opt-in :mod:`megatron_patches.tensor_type_alias`.
"""

from typing import Iterable, Union

import torch

from megatron_patches import _torch_view

NAME = "optimizer"


def clip_grad_by_total_norm_fp32_cpu(
    parameters: Union[Iterable[torch.Tensor], torch.Tensor],
    max_norm: Union[int, float],
    total_norm: float,
    use_decoupled_grad: bool = False,
) -> None:
    """Scale the fp32 grads of ``parameters`` in place by ``max_norm / (total_norm + 1e-6)`` when that is < 1.

    Same contract as upstream ``optimizer/clip_grads.py:136`` ``clip_grad_by_total_norm_fp32`` (``total_norm`` is
    the already all-reduced global L2 norm, a Python float), without its CUDA-only type assertion.
    Reads ``param.grad`` (fp32) or, with ``use_decoupled_grad``, ``param.decoupled_grad`` (fp32 or bf16).
    Raises TypeError for a grad of another dtype.
    """
    from megatron.core.utils import to_local_if_dtensor

    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    allowed = (torch.float32, torch.bfloat16) if use_decoupled_grad else (torch.float32,)
    grads = []
    for param in parameters:
        grad = getattr(param, attr, None)
        if grad is None:
            continue
        if grad.dtype not in allowed:
            raise TypeError(f"megatron_patches.optimizer: param.{attr} has dtype {grad.dtype}, expected {allowed}")
        grads.append(to_local_if_dtensor(grad).detach())
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


def apply() -> None:
    """Install the CPU allocations and the CPU clip into the optimizer modules. Idempotent."""
    from megatron.core import utils as core_utils
    from megatron.core.optimizer import clip_grads, distrib_optimizer
    from megatron.core.optimizer import optimizer as core_optimizer

    _torch_view.install(
        core_optimizer,
        cuda={"current_device": _torch_view.cpu_device, "empty_cache": _torch_view.noop},
        cpu_factories=True,
    )
    _torch_view.install(clip_grads, cpu_factories=True)
    _torch_view.install(core_utils, cpu_factories=True)
    _torch_view.install(distrib_optimizer, cuda={"current_device": _torch_view.cpu_device})
    core_optimizer.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm_fp32_cpu
