"""Shared pytest setup for dvr1.

- The repository root is put on ``sys.path`` (tests run without ``pip install -e .``), so ``import dvr1``,
  ``import megatron_patches`` and ``from tests.distributed.launch import run_torchrun`` work.
- Fixture ``parallel_state_1`` (session scope): a single-process megatron-core parallel state, TP=1, PP=1, DP=1,
  gloo over an in-process store (no port), CPU fallbacks applied, seeds from ``seed=1234``; it yields the
  :class:`dvr1.parallel.setup.ParallelInfo` and tears everything down at the end of the session. Use it in any test
  that builds megatron-core modules (``GPTModel``, ``ColumnParallelLinear``, the optimizer, dist_checkpointing):
  ``def test_x(parallel_state_1): ...``. Tests that need fixed random draws should reseed themselves
  (``dvr1.parallel.setup.seed_everything(seed)``), since the session state is shared.
- Fixture ``tiny_gpt`` (session scope, needs ``parallel_state_1``): a factory
  ``tiny_gpt(**overrides) -> GPTModel``: megatron-core GPTModel with the local layer spec, 2 layers, hidden 64,
  4 heads, vocab 128, max length 32, RoPE, fp32, no dropout, CPU initialisation, built after reseeding with
  ``seed`` (default 0) so two calls give identical weights. ``overrides`` go to ``TransformerConfig`` except
  ``seed``, ``vocab_size``, ``max_sequence_length``, ``position_embedding_type`` and
  ``share_embeddings_and_output_weights`` (GPTModel arguments).
- Marker ``distributed`` (declared in pytest.ini): tests that launch ``torchrun --nproc-per-node 2``;
  deselect with ``-m "not distributed"``.
"""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def parallel_state_1():
    """Single-process TP=1/PP=1 megatron-core parallel state for the whole session (see module docstring)."""
    from dvr1.parallel.setup import destroy_parallel, init_parallel

    info = init_parallel(tp=1, pp=1, seed=1234)
    yield info
    destroy_parallel()


_GPT_ARGS = ("vocab_size", "max_sequence_length", "position_embedding_type", "share_embeddings_and_output_weights")


@pytest.fixture(scope="session")
def tiny_gpt(parallel_state_1):
    """Factory for a tiny megatron-core GPTModel on CPU (see module docstring)."""
    import torch
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    from dvr1.parallel.setup import seed_everything

    def build(seed: int = 0, **overrides):
        gpt_args = {"vocab_size": 128, "max_sequence_length": 32, "position_embedding_type": "rope"}
        gpt_args.update({k: overrides.pop(k) for k in _GPT_ARGS if k in overrides})
        cfg = dict(num_layers=2, hidden_size=64, num_attention_heads=4, use_cpu_initialization=True,
                   params_dtype=torch.float32, hidden_dropout=0.0, attention_dropout=0.0)
        cfg.update(overrides)
        seed_everything(seed)
        return GPTModel(TransformerConfig(**cfg), get_gpt_layer_local_spec(), **gpt_args)

    return build
