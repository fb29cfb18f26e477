"""CPU fallback for the pipeline schedules and point-to-point communication (megatron-core 0.16.1).

Upstream:

- ``pipeline_parallel/schedules.py:596, 983, 2138``: ``total_num_tokens = torch.zeros([], device="cuda")`` in
  ``forward_backward_no_pipelining``, the interleaved and the non-interleaved 1F1B schedules;
- ``pipeline_parallel/p2p_communication.py:190-202, 313-321``: shape/receive buffers on
  ``torch.cuda.current_device()``; ``:242, :398``: ``torch.cuda.synchronize()`` after the shape exchange and after
  batched isend/irecv (a CUDA race guard; gloo work objects are already waited on).

The factories in ``schedules.py`` allocate on CPU; in ``p2p_communication.py`` ``current_device`` is the CPU and
``synchronize`` is a no-op. With this, ``get_forward_backward_func()`` runs over gloo at PP=1 and PP>1.
(``variable_seq_lengths=True`` additionally needs ``moe_token_dispatcher_type="alltoall"`` in the config to pass an
upstream config check; that is config, not a patch.)
"""

from megatron_patches import _torch_view

NAME = "pipeline_schedules"


def apply() -> None:
    """Route the schedule and p2p allocations to CPU and make their synchronize a no-op. Idempotent."""
    from megatron.core.pipeline_parallel import p2p_communication, schedules

    _torch_view.install(schedules, cpu_factories=True)
    _torch_view.install(
        p2p_communication, cuda={"current_device": _torch_view.cpu_device, "synchronize": _torch_view.noop}
    )
