"""Shared pytest setup for dvr1.

- The repository root is put on ``sys.path`` (tests run without ``pip install -e .``), so ``import dvr1``,
  ``import megatron_patches`` and ``from tests.distributed.launch import run_torchrun`` work.
- Fixture ``parallel_state_1`` (session scope): a single-process megatron-core parallel state, TP=1, PP=1, DP=1,
  gloo over an in-process store (no port), CPU fallbacks applied, seeds from ``seed=1234``; it yields the
  :class:`dvr1.parallel.setup.ParallelInfo` and tears everything down at the end of the session. Use it in any test
  that builds megatron-core modules (``GPTModel``, ``ColumnParallelLinear``, the optimizer, dist_checkpointing):
  ``def test_x(parallel_state_1): ...``. Tests that need fixed random draws should reseed themselves
  (``dvr1.parallel.setup.seed_everything(seed)``), since the session state is shared.
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
