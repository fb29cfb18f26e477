"""Optimizer and learning-rate schedule: megatron-core's DDP + ``get_megatron_optimizer`` (Adam), a linear warmup
then a constant or cosine-decayed LR (``OptimizerParamScheduler``), and a decoupled set of params (the vision
tower's) with its own peak / final LR through megatron's ``config_overrides`` (``ParamKey`` -> ``ParamGroupOverride``).

Upstream (megatron-core 0.16.1): ``distributed/distributed_data_parallel.py`` (grad buffers, DP all-reduce),
``optimizer/__init__.py:505`` ``get_megatron_optimizer`` (param groups: no weight decay for biases and 1-D
params, ``get_standard_config_overrides``, ``optimizer/__init__.py:70``; a group's ``max_lr`` / ``min_lr``,
``optimizer/__init__.py:208``), ``optimizer_param_scheduler.py:122`` (``get_lr`` reads each group's ``max_lr`` /
``min_lr``), ``distributed/finalize_model_grads.py`` (DP all-reduce, tied-embedding all-reduce across the first/last
PP stage).

On a CPU-only host (megatron_patches applied):
- fp32 params + the plain (non-distributed) optimizer run with the default patches.
- ``bf16=True`` or ``use_distributed_optimizer=True`` need the opt-in ``megatron_patches.tensor_type_alias`` (the
  constructors check ``Tensor.type()`` for CUDA type names); without it :func:`build_optimizer` raises
  :class:`OptimizerSetupError` naming the switch. With it, the fp32 DistributedOptimizer steps on CPU and
  checkpoints with ``dist_checkpointing`` in the ``dp_reshardable`` format (see dvr1.train.checkpoint).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

import megatron_patches


LR_SCHEDULES = ("constant", "cosine")  # build_lr_scheduler's styles (megatron lr_decay_style names)


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
    min_lr: float = 0.0,
    decoupled_names: Sequence[str] = (),
    decoupled_lr: Optional[float] = None,
    decoupled_min_lr: float = 0.0,
) -> Tuple[List[torch.nn.Module], "megatron.core.optimizer.MegatronOptimizer"]:  # noqa: F821
    """Wrap the model chunks in megatron-core DDP and build the megatron Adam(W) optimizer over them.

    Args:
        model_chunks: one ``MegatronModule`` (e.g. ``GPTModel``) or a list of chunks (virtual pipeline stages),
            built after :func:`dvr1.parallel.setup.init_parallel`; params fp32 (or bf16 with ``bf16=True``).
        lr: peak learning rate. weight_decay: decoupled (AdamW) weight decay for >= 2-D non-bias params;
            biases and 1-D params (norms) get 0, megatron's convention (``optimizer/__init__.py:70``).
        adam_betas, adam_eps: Adam hyper-parameters. clip_grad: global L2 grad-norm clip (0 disables).
        use_distributed_optimizer: shard optimizer state over DP (ZeRO-1). bf16: bf16 params with fp32 main params.
        min_lr: the final LR of a decaying schedule (:func:`build_lr_scheduler` ``style="cosine"``) of the params
            outside the decoupled set; the constant schedule ignores it.
        decoupled_names, decoupled_lr, decoupled_min_lr: with ``decoupled_lr`` set, the params whose name in the
            (unwrapped) chunk matches one of the ``fnmatch`` patterns ``decoupled_names`` (e.g. ``("visual.*",)``;
            the DDP wrapper's ``module.`` prefix is matched too) get their own param groups with peak LR
            ``decoupled_lr`` and final LR ``decoupled_min_lr`` (megatron ``ParamKey(name=...)`` ->
            ``ParamGroupOverride(max_lr, min_lr, is_decoupled_lr=True)``, merged with megatron's standard
            no-weight-decay overrides). ``is_decoupled_lr`` is one of the keys megatron's optimizer load tells
            groups apart by (``optimizer.py:96``): without it a checkpoint cannot be loaded back into these groups.
            ``decoupled_lr`` None: megatron's default groups, exactly as before the option existed.

    Returns:
        ``(ddp_chunks, optimizer)``. Train through ``ddp_chunks``: zero with ``chunk.zero_grad_buffer()`` +
        ``optimizer.zero_grad()``, run forward/backward (directly or with ``get_forward_backward_func``; this sets
        ``config.finalize_model_grads_func`` / ``no_sync_func`` / ``grad_scale_func`` on the model config so the
        schedule reduces grads), call ``chunk.finish_grad_sync()`` yourself when not using the schedule, then
        ``optimizer.step() -> (update_successful, grad_norm, num_zeros)``.

    Raises:
        OptimizerSetupError: ``bf16``/``use_distributed_optimizer`` on CPU without the opt-in Tensor.type alias,
            ``lr``/``clip_grad``/``weight_decay``/``decoupled_lr`` negative, or a final LR outside [0, its peak].
    """
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import (
        OptimizerConfig,
        ParamGroupOverride,
        ParamKey,
        get_megatron_optimizer,
        get_standard_config_overrides,
    )
    from megatron.core.utils import get_model_config

    for field, value in (("lr", lr), ("clip_grad", clip_grad), ("weight_decay", weight_decay)):
        if value < 0:
            raise OptimizerSetupError(f"dvr1.train.optim.build_optimizer: {field}={value} must be >= 0")
    bounds = [("min_lr", min_lr, "lr", lr)]
    if decoupled_lr is not None:
        if decoupled_lr < 0:
            raise OptimizerSetupError(f"dvr1.train.optim.build_optimizer: decoupled_lr={decoupled_lr} must be >= 0")
        bounds.append(("decoupled_min_lr", decoupled_min_lr, "decoupled_lr", decoupled_lr))
    for name, final, peak_name, peak in bounds:
        if not 0 <= final <= peak:
            raise OptimizerSetupError(f"dvr1.train.optim.build_optimizer: {name}={final} must be in [0, "
                                      f"{peak_name}={peak}]")
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
        min_lr=min_lr,
        weight_decay=weight_decay,
        adam_beta1=adam_betas[0],
        adam_beta2=adam_betas[1],
        adam_eps=adam_eps,
        clip_grad=clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    overrides = None  # megatron's default: get_standard_config_overrides
    if decoupled_lr is not None:
        overrides = dict(get_standard_config_overrides(opt_config))
        # the optimizer iterates the DDP chunks' named_parameters: "module.<name in the chunk>"
        key = ParamKey(name=tuple(p for n in decoupled_names for p in (n, f"module.{n}")))
        overrides[key] = ParamGroupOverride(max_lr=float(decoupled_lr), min_lr=float(decoupled_min_lr),
                                            is_decoupled_lr=True)
    optimizer = get_megatron_optimizer(opt_config, ddp_chunks, config_overrides=overrides)
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
    optimizer,
    lr: float,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    init_lr: float = 0.0,
    style: str = "constant",
    decay_steps: int = 0,
    min_lr: float = 0.0,
) -> "megatron.core.optimizer_param_scheduler.OptimizerParamScheduler":  # noqa: F821
    """A linear warmup from ``init_lr`` over ``warmup_steps`` optimizer steps, then a constant or cosine-decayed LR.

    Megatron-core ``OptimizerParamScheduler`` (``optimizer_param_scheduler.py:122``): call ``scheduler.step(1)``
    after each ``optimizer.step()``; the step with 0-based index ``k`` uses, in each param group with peak
    ``max_lr`` and final ``min_lr`` (``lr`` / ``min_lr`` of :func:`build_optimizer`, or its ``decoupled_lr`` /
    ``decoupled_min_lr``):

    - ``k <= warmup_steps`` (with warmup): ``init_lr + (max_lr - init_lr) * k / warmup_steps`` (so the first step
      uses ``init_lr``);
    - ``style="constant"``: then ``max_lr``;
    - ``style="cosine"``: then ``min_lr + (max_lr - min_lr) * 0.5 * (1 + cos(pi * (k - warmup_steps) /
      (decay_steps - warmup_steps)))`` up to ``k = decay_steps``, ``min_lr`` after. With ``decay_steps`` = the
      stage's optimizer steps (megatron's ``lr_decay_steps = train_iters``), the LR reaches ``min_lr`` after the
      stage's last step (the last step, ``k = decay_steps - 1``, is one decay step short of it).

    ``lr`` / ``min_lr`` here are megatron's scheduler-level values (bounds of ``init_lr``, stored in its state dict);
    for ``"cosine"`` they must equal the default param groups' (:func:`build_optimizer`'s ``lr`` / ``min_lr``).
    Weight decay is constant ``weight_decay`` times each group's ``wd_mult``. ``state_dict()`` /
    ``load_state_dict()`` round-trip through checkpoints (the step count and style; the groups' ``max_lr`` /
    ``min_lr`` travel in the optimizer's state): a resumed run continues the saved schedule.

    Raises OptimizerSetupError for ``warmup_steps < 0``, ``init_lr > lr``, a ``style`` not in :data:`LR_SCHEDULES`,
    and for ``"cosine"``: ``decay_steps <= warmup_steps``, ``min_lr`` outside [0, lr], or default param groups with
    another ``max_lr`` / ``min_lr``.
    """
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    where = "dvr1.train.optim.build_lr_scheduler"
    if warmup_steps < 0:
        raise OptimizerSetupError(f"{where}: warmup_steps={warmup_steps} must be >= 0")
    if init_lr > lr:
        raise OptimizerSetupError(f"{where}: init_lr={init_lr} > lr={lr}")
    if style not in LR_SCHEDULES:
        raise OptimizerSetupError(f"{where}: style={style!r} must be one of {', '.join(LR_SCHEDULES)}")
    if style == "constant":
        min_lr, decay_steps = lr, warmup_steps + 1
    else:
        if decay_steps <= warmup_steps:
            raise OptimizerSetupError(f"{where}: decay_steps={decay_steps} must be > warmup_steps={warmup_steps}")
        if not 0 <= min_lr <= lr:
            raise OptimizerSetupError(f"{where}: min_lr={min_lr} must be in [0, lr={lr}]")
        for g in optimizer.param_groups:
            if g.get("default_config", True) and (g.get("max_lr", lr), g.get("min_lr", min_lr)) != (lr, min_lr):
                raise OptimizerSetupError(f"{where}: lr={lr}, min_lr={min_lr} differ from the optimizer's default "
                                          f"param groups (max_lr={g['max_lr']}, min_lr={g['min_lr']})")
    return OptimizerParamScheduler(
        optimizer,
        init_lr=init_lr,
        max_lr=lr,
        min_lr=min_lr,
        lr_warmup_steps=warmup_steps,
        lr_decay_steps=decay_steps,
        lr_decay_style=style,
        start_wd=weight_decay,
        end_wd=weight_decay,
        wd_incr_steps=1,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
    )
