"""CPU fallback for tied input/output embeddings under pipeline parallelism (megatron-core 0.16.1).

Upstream: ``models/common/language_module/language_module.py:241-245``
(``LanguageModule.setup_embeddings_and_output_layer``, called from ``GPTModel.__init__`` at
``models/gpt/gpt_model.py:257``): with ``share_embeddings_and_output_weights=True`` and PP > 1, the first and last
stage copy the word-embedding weight into each other by an all-reduce over the embedding group, after
``weight.data = weight.data.cuda()`` (:244), which raises on a CPU-only build.

Fix: the method is wrapped; for a rank in the embedding group the upstream body runs with the instance's
``_is_in_embd_group`` answering False (so it skips only :242-245), then the wrapper performs the same all-reduce of
``shared_embedding_or_output_weight()`` over ``self.embd_group`` on the CPU tensor. Ranks outside the group, PP=1
and untied models run the upstream method unchanged. Grad all-reduce of the tied copies during training
(``distributed/finalize_model_grads.py``) needs no patch.
"""

import functools

import torch

NAME = "tied_embeddings"


def apply() -> None:
    """Wrap ``LanguageModule.setup_embeddings_and_output_layer``. Idempotent."""
    from megatron.core.models.common.language_module.language_module import LanguageModule

    original = LanguageModule.setup_embeddings_and_output_layer
    if getattr(original, "_dvr1_cpu", False):
        return

    @functools.wraps(original)
    def setup_embeddings_and_output_layer(self) -> None:
        if not (torch.distributed.is_initialized() and self._is_in_embd_group()):
            return original(self)
        self.__dict__["_is_in_embd_group"] = lambda: False  # skip upstream :242-245 (the .cuda() copy)
        try:
            original(self)
        finally:
            del self.__dict__["_is_in_embd_group"]
        weight = self.shared_embedding_or_output_weight()
        torch.distributed.all_reduce(weight.data, group=self.embd_group)

    setup_embeddings_and_output_layer._dvr1_cpu = True
    LanguageModule.setup_embeddings_and_output_layer = setup_embeddings_and_output_layer
