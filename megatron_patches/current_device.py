"""CPU fallback for ``torch.cuda.current_device()`` used as an allocation device (megatron-core 0.16.1).

Upstream call sites (no config flag avoids them), each gets ``torch.device("cpu")`` instead:

- ``tensor_parallel/mappings.py:91`` (``_gather_along_last_dim``, used by ``gather_output`` at TP>1) and the other
  gather/scatter buffers in that module (:90-:160);
- ``models/common/embeddings/rotary_pos_embedding.py:162`` (``RotaryEmbedding.get_emb`` moves ``inv_freq``);
- ``utils.py:631`` (``GlobalMemoryBuffer.get_tensor``, used by ``transformer/dot_product_attention.py:189``);
- ``distributed/param_and_grad_buffer.py:783-806`` (the DDP grad/param buffers);
- ``tensor_parallel/layers.py:552`` (``LinearWithGradAccumulationAndAsyncCommunication.backward``: the
  reduce-scatter buffer of a column-parallel layer's input gradient under sequence parallel; the module's other
  ``current_device()`` calls are GPU-only paths: weight allocation without ``use_cpu_initialization``, apex's
  gradient-accumulation fusion).

Patched per module: the module's ``torch`` becomes a :class:`megatron_patches._torch_view.TorchView` whose
``cuda.current_device`` returns the CPU device; nothing else in torch changes.
"""

from megatron_patches import _torch_view

NAME = "current_device"

_MODULES = (
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.utils",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.tensor_parallel.layers",
)


def apply() -> None:
    """Route ``torch.cuda.current_device()`` to CPU inside the modules above. Idempotent."""
    import importlib

    for name in _MODULES:
        _torch_view.install(importlib.import_module(name), cuda={"current_device": _torch_view.cpu_device})
