"""Sequence parallel with megatron-core's local (pure PyTorch) norm, i.e. without TransformerEngine or apex
(megatron-core 0.16.1).

Upstream: ``transformer/torch_norm.py:32`` (``WrappedTorchNorm.__new__``) asserts ``not config.sequence_parallel``.
Without apex the local layer spec builds every norm with it (``models/gpt/gpt_layer_specs.py:68-71``, ``LNImpl``;
the decoder's final norm: ``transformer/transformer_block.py:67-69``), so SP cannot be built on CPU at all.

Under SP a norm runs on this rank's sequence shard ``[s/tp, b, h]``. RMSNorm and LayerNorm act token by token, so
the forward is exact on a shard; only the gradient of the (TP-replicated) weight changes: each rank holds the
contribution of its own tokens and the full gradient is their sum over TP. Megatron's SP-capable norms mark their
parameters ``sequence_parallel=True`` for that (apex: ``fusions/fused_layer_norm.py:116-120``; TE: the
``sequence_parallel=`` argument at ``extensions/transformer_engine.py:449, 460``), and ``finalize_model_grads``
all-reduces (SUM over TP) the gradient of every parameter so marked when ``config.sequence_parallel`` is on
(``distributed/finalize_model_grads.py:354``, ``_allreduce_non_tensor_model_parallel_grads``, called at :461).

Fix: ``WrappedTorchNorm.__new__`` is wrapped. With ``config.sequence_parallel`` the upstream body builds the norm
from a shallow copy of the config with ``sequence_parallel=False`` (the assert is the field's only use there), and
every parameter of the returned ``torch.nn.RMSNorm`` / ``LayerNorm`` gets the attribute ``sequence_parallel=True``.
Without SP the upstream method runs unchanged. Not CPU-specific: a GPU host without apex that builds the local spec
under SP needs it too, so ``dvr1.models.qwen2_5_vl.Qwen25VLPolicy`` applies it in that case (idempotent).
"""

import copy
import functools

NAME = "sequence_parallel_norm"


def apply() -> None:
    """Wrap ``WrappedTorchNorm.__new__`` (see the module docstring). Idempotent."""
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    original = WrappedTorchNorm.__new__
    if getattr(original, "_dvr1_sp", False):
        return

    @functools.wraps(original)
    def __new__(cls, config, *args, **kwargs):
        if not getattr(config, "sequence_parallel", False):
            return original(cls, config, *args, **kwargs)
        plain = copy.copy(config)  # TransformerConfig is a dataclass: a shallow copy skips __post_init__ checks
        plain.sequence_parallel = False
        norm = original(cls, plain, *args, **kwargs)
        for param in norm.parameters():
            param.sequence_parallel = True  # finalize_model_grads.py:354 sums its gradient over TP
        return norm

    __new__._dvr1_sp = True
    WrappedTorchNorm.__new__ = staticmethod(__new__)
