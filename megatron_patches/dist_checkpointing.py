"""CPU fallback for ``dist_checkpointing.save`` with the default ``torch_dist`` strategy (megatron-core 0.16.1).

Upstream:

- ``dist_checkpointing/strategies/filesystem_async.py:230`` (``FileSystemWriterAsync.preload_tensors``) calls
  ``torch.cuda.synchronize()`` after the D2H copies: a no-op here (tensors are already host tensors);
- ``dist_checkpointing/strategies/state_dict_saver.py:252`` (``save_state_dict_async_finalize``) broadcasts the
  failure flag in a tensor on ``torch.cuda.current_device()``, and ``:204`` (``verify_global_md_reuse``, cached
  plans) one with ``device='cuda'``: both allocate on CPU here.

Not patched, but needed (not a code change): ``filesystem_async.py:54`` starts a ``spawn`` multiprocessing
``Manager`` for the write results, so ``psutil`` must be installed and any script that saves must keep its work
under ``if __name__ == "__main__":`` (the spawned child re-imports the main module).
The async-save worker (``strategies/async_utils.py``) and the fully-parallel wrappers
(``strategies/fully_parallel.py``, ``exchange_utils.py``) still call CUDA; dvr1 uses neither.
"""

from megatron_patches import _torch_view

NAME = "dist_checkpointing"


def apply() -> None:
    """No-op synchronize in ``filesystem_async.py``; CPU flags in ``state_dict_saver.py``. Idempotent."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async, state_dict_saver

    _torch_view.install(filesystem_async, cuda={"synchronize": _torch_view.noop})
    _torch_view.install(state_dict_saver, cuda={"current_device": _torch_view.cpu_device}, cpu_factories=True)
