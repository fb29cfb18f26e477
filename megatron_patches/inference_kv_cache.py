"""CPU fallback for the static-batching inference KV cache (megatron-core 0.16.1).

Upstream: ``transformer/attention.py:423-431`` (``Attention._allocate_memory``) allocates the per-layer key/value
cache ``[max_seq, max_batch, num_query_groups_per_partition, head_dim]`` on ``torch.cuda.current_device()`` the
first time a layer sees a ``StaticInferenceContext`` (``_adjust_key_value_for_inference``, :485-498). Here that
device is the CPU, so ``GPTModel.forward(..., inference_context=StaticInferenceContext(b, s))`` decodes
incrementally on CPU.
"""

from megatron_patches import _torch_view

NAME = "inference_kv_cache"


def apply() -> None:
    """Allocate the static KV cache on CPU. Idempotent."""
    from megatron.core.transformer import attention

    _torch_view.install(attention, cuda={"current_device": _torch_view.cpu_device})
