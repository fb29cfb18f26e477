"""OPT-IN (off by default): make ``Tensor.type()`` spell CPU tensors as CUDA types inside two optimizer constructors.

Upstream (megatron-core 0.16.1) decides a parameter's role by its CUDA type *string* and raises ``TypeError`` for
anything else:

- ``optimizer/optimizer.py:671, 690`` (``Float16OptimizerWithFloat16Params.__init__``, the bf16/fp16 optimizer):
  ``param.type() in ['torch.cuda.HalfTensor', 'torch.cuda.BFloat16Tensor']`` / ``== 'torch.cuda.FloatTensor'``;
- ``optimizer/distrib_optimizer.py:361, 420`` (``_build_model_and_main_param_groups``) and ``:582``, both reached
  from ``DistributedOptimizer.__init__``; this applies even to an all-fp32 model.

No narrower hook exists: the checks call a method of ``torch.Tensor``. This patch wraps only those two
``__init__`` methods; *while one of them runs* ``torch.Tensor.type()`` called without arguments on a CPU tensor
returns ``'torch.cuda.<Type>'`` (e.g. ``torch.cuda.FloatTensor``); the original method is restored on exit (also on
error). It is a temporary change of a torch method, so ``megatron_patches.apply`` leaves it off unless asked
(``apply(tensor_type_alias=True)`` or env ``DVR1_MEGATRON_TENSOR_TYPE_ALIAS=1``). Not thread-safe.
"""

import contextlib
import functools

import torch

NAME = "tensor_type_alias"

_ORIGINAL_TYPE = torch.Tensor.type


def _cuda_spelled_type(self, dtype=None, non_blocking=False, **kwargs):
    """``Tensor.type`` that names a CPU tensor's type as its CUDA twin when called with no target dtype."""
    if dtype is None and not kwargs and self.device.type == "cpu":
        name = _ORIGINAL_TYPE(self)
        return name.replace("torch.", "torch.cuda.", 1)
    return _ORIGINAL_TYPE(self, dtype, non_blocking, **kwargs)


@contextlib.contextmanager
def cuda_spelled_tensor_types():
    """Context in which ``torch.Tensor.type()`` names CPU tensors like CUDA ones (see module docstring)."""
    previous = torch.Tensor.type
    torch.Tensor.type = _cuda_spelled_type
    try:
        yield
    finally:
        torch.Tensor.type = previous


def _wrap_init(cls) -> None:
    init = cls.__init__
    if getattr(init, "_dvr1_tensor_type_alias", False):
        return

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        with cuda_spelled_tensor_types():
            init(self, *args, **kwargs)

    __init__._dvr1_tensor_type_alias = True
    cls.__init__ = __init__


def apply() -> None:
    """Wrap ``Float16OptimizerWithFloat16Params.__init__`` and ``DistributedOptimizer.__init__``. Idempotent."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    from megatron.core.optimizer.optimizer import Float16OptimizerWithFloat16Params

    _wrap_init(Float16OptimizerWithFloat16Params)
    _wrap_init(DistributedOptimizer)
