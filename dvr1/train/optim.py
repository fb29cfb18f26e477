"""Optimizer and learning-rate schedule: megatron-core's DDP + ``get_megatron_optimizer`` (Adam), constant LR with
linear warmup (``OptimizerParamScheduler``).

Upstream (megatron-core 0.16.1): ``distributed/distributed_data_parallel.py`` (grad buffers, DP all-reduce),
``optimizer/__init__.py:505`` ``get_megatron_optimizer`` (param groups: no weight decay for biases and 1-D
params, ``optimizer/__init__.py:70``), ``optimizer_param_scheduler.py:122``, ``distributed/finalize_model_grads.py``
(DP all-reduce, tied-embedding all-reduce across the first/last PP stage).

On a CPU-only host (megatron_patches applied):
- fp32 params + the plain (non-distributed) optimizer run with the default patches.
- ``bf16=True`` or ``use_distributed_optimizer=True`` need the opt-in ``megatron_patches.tensor_type_alias`` (the
  constructors check ``Tensor.type()`` for CUDA type names); without it :func:`build_optimizer` raises
  :class:`OptimizerSetupError` naming the switch. With it, the fp32 DistributedOptimizer steps on CPU and
  checkpoints with ``dist_checkpointing`` in the ``dp_reshardable`` format (see dvr1.train.checkpoint).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch

import megatron_patches


class OptimizerSetupError(RuntimeError):
    """Raised for an optimizer configuration that cannot run here (message names the field / switch)."""


def build_optimizer(
    model_chunks: Union[torch.nn.Module, Sequence[torch.nn.Module]],
    lr: float,
    weight_decay: float = 0.0,
    adam_betas: Tuple[float, float] = (0.9, 0.999),
    clip_grad: float = 1.0,
    use_distributed_optimizer: bool = False,
    bf16: bool = False,
    adam_eps: float = 1e-8,
) -> Tuple[List[torch.nn.Module], "megatron.core.optimizer.MegatronOptimizer"]:  # noqa: F821
    """Wrap the model chunks in megatron-core DDP and build the megatron Adam(W) optimizer over them.

    Args:
        model_chunks: one ``MegatronModule`` (e.g. ``GPTModel``) or a list of chunks (virtual pipeline stages),
            built after :func:`dvr1.parallel.setup.init_parallel`; params fp32 (or bf16 with ``bf16=True``).
        lr: peak learning rate. weight_decay: decoupled (AdamW) weight decay for >= 2-D non-bias params;
            biases and 1-D params (norms) get 0, megatron's convention (``optimizer/__init__.py:70``).
        adam_betas, adam_eps: Adam hyper-parameters. clip_grad: global L2 grad-norm clip (0 disables).
        use_distributed_optimizer: shard optimizer state over DP (ZeRO-1). bf16: bf16 params with fp32 main params.

    Returns:
        ``(ddp_chunks, optimizer)``. Train through ``ddp_chunks``: zero with ``chunk.zero_grad_buffer()`` +
        ``optimizer.zero_grad()``, run forward/backward (directly or with ``get_forward_backward_func``; this sets
        ``config.finalize_model_grads_func`` / ``no_sync_func`` / ``grad_scale_func`` on the model config so the
        schedule reduces grads), call ``chunk.finish_grad_sync()`` yourself when not using the schedule, then
        ``optimizer.step() -> (update_successful, grad_norm, num_zeros)``.

    Raises:
        OptimizerSetupError: ``bf16``/``use_distributed_optimizer`` on CPU without the opt-in Tensor.type alias,
            or ``lr``/``clip_grad``/``weight_decay`` negative.
    """
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.utils import get_model_config

    for field, value in (("lr", lr), ("clip_grad", clip_grad), ("weight_decay", weight_decay)):
        if value < 0:
            raise OptimizerSetupError(f"dvr1.train.optim.build_optimizer: {field}={value} must be >= 0")
    if (
        (bf16 or use_distributed_optimizer)
        and not torch.cuda.is_available()
        and megatron_patches.type_alias_patch.NAME not in megatron_patches.applied()
    ):
        raise OptimizerSetupError(
            "dvr1.train.optim.build_optimizer: bf16=True or use_distributed_optimizer=True on CPU needs the opt-in "
            "Tensor.type alias: set DVR1_MEGATRON_TENSOR_TYPE_ALIAS=1 before init_parallel() or call "
            "megatron_patches.apply(tensor_type_alias=True)"
        )
    chunks = [model_chunks] if isinstance(model_chunks, torch.nn.Module) else list(model_chunks)
    config = get_model_config(chunks[0])
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    ddp_chunks = [
        DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk, disable_bucketing=(i > 0))
        for i, chunk in enumerate(chunks)
    ]
    opt_config = OptimizerConfig(
        optimizer="adam",
        lr=lr,
        min_lr=0.0,
        weight_decay=weight_decay,
        adam_beta1=adam_betas[0],
        adam_beta2=adam_betas[1],
        adam_eps=adam_eps,
        clip_grad=clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(opt_config, ddp_chunks)
    # Apply megatron's per-group weight-decay multiplier now (the scheduler re-applies it every step).
    for group in optimizer.param_groups:
        group["weight_decay"] = weight_decay * group.get("wd_mult", 1.0)
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    no_sync = [chunk.no_sync for chunk in ddp_chunks]
    config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
    return ddp_chunks, optimizer


def on_step(optimizer, fn) -> int:
    """Call ``fn()`` after every update the megatron ``optimizer`` applies: a post-step hook
    (``torch.optim.Optimizer.register_step_post_hook``) on each torch optimizer inside it (one per megatron
    sub-optimizer; a step skipped for an inf/nan gradient runs none). Returns how many hooks were registered.
    Used to bump a trained vision tower's version (`dvr1.models.qwen2_5_vl.Qwen25VLPolicy.vision_updated`)."""
    n = 0
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(sub, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer):
            inner.register_step_post_hook(lambda _opt, _args, _kwargs: fn())
            n += 1
    if n == 0:
        raise OptimizerSetupError(f"dvr1.train.optim.on_step: no torch optimizer inside {type(optimizer).__name__}")
    return n


def build_lr_scheduler(
    optimizer, lr: float, warmup_steps: int = 0, weight_decay: float = 0.0, init_lr: float = 0.0
) -> "megatron.core.optimizer_param_scheduler.OptimizerParamScheduler":  # noqa: F821
    """Constant learning rate ``lr`` after a linear warmup from ``init_lr`` over ``warmup_steps`` optimizer steps.

    Megatron-core ``OptimizerParamScheduler`` (``optimizer_param_scheduler.py:122``, style ``constant``): call
    ``scheduler.step(1)`` after each ``optimizer.step()``; the step with 0-based index ``k`` uses
    ``init_lr + (lr - init_lr) * k / warmup_steps`` while ``k <= warmup_steps`` (so with warmup the first step
    uses ``init_lr``), then ``lr``. Weight decay is constant ``weight_decay`` times each group's ``wd_mult``.
    ``state_dict()`` / ``load_state_dict()`` round-trip through checkpoints.

    Raises OptimizerSetupError for ``warmup_steps < 0`` or ``init_lr > lr``.
    """
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    if warmup_steps < 0:
        raise OptimizerSetupError(f"dvr1.train.optim.build_lr_scheduler: warmup_steps={warmup_steps} must be >= 0")
    if init_lr > lr:
        raise OptimizerSetupError(f"dvr1.train.optim.build_lr_scheduler: init_lr={init_lr} > lr={lr}")
    return OptimizerParamScheduler(
        optimizer,
        init_lr=init_lr,
        max_lr=lr,
        min_lr=lr,
        lr_warmup_steps=warmup_steps,
        lr_decay_steps=warmup_steps + 1,
        lr_decay_style="constant",
        start_wd=weight_decay,
        end_wd=weight_decay,
        wd_incr_steps=1,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
    )
