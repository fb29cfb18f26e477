"""CPU fallback for the default attention masks built on ``"cuda"`` (megatron-core 0.16.1).

Upstream: ``transformer/utils.py:35`` (``get_default_causal_mask``: ``torch.ones(sq, sq, device="cuda")``) and
``:41`` (``get_sliding_window_causal_mask``). They are called from ``fusions/fused_softmax.py:322-327`` whenever
``attn_mask_type`` is causal and no explicit mask is passed (e.g. ``GPTModel(..., attention_mask=None)`` with the
local layer spec). The module's tensor factories get their CUDA ``device=`` argument mapped to CPU.
"""

from megatron_patches import _torch_view

NAME = "causal_mask"


def apply() -> None:
    """Build the default causal / sliding-window masks on CPU. Idempotent."""
    from megatron.core.transformer import utils as transformer_utils

    _torch_view.install(transformer_utils, cpu_factories=True)
