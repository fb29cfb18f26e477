"""Config -> megatron-core precision / memory options: FP8 (TransformerEngine), activation recompute, sequence
parallel, distributed optimizer; and the config-selected layer spec.

    kw = precision_overrides(cfg.model, cfg.parallel)            # TransformerConfig kwargs
    policy = Qwen25VLPolicy(hf, tp, pp, params_dtype=torch.bfloat16, spec=cfg.model.spec, **kw)
    ddp_kw = distributed_overrides(cfg.model, cfg.parallel)      # DistributedDataParallelConfig kwargs

Every check runs at start-up (before any model is built) and raises :class:`PrecisionConfigError` naming the config
field, or :class:`MissingPackageError` naming the missing package (``transformer-engine``).

The config objects are the run config's ``model`` and ``parallel`` sections (``dvr1.config.ModelConfig`` /
``ParallelConfig``, which own the defaults); the fields read here:

model:
    spec: "local" | "te".  dtype: "float32" | "bfloat16".
    fp8: None | "e4m3" | "hybrid" (TransformerConfig.fp8; "hybrid" = E4M3 forward, E5M2 gradients).
    fp8_recipe: "delayed" | "tensorwise" | "blockwise" | "mxfp8" (TransformerConfig.fp8_recipe;
        megatron-core's "custom" needs a quantizer factory and is not exposed).
    fp8_amax_history_len, fp8_amax_compute_algo: "most_recent" | "max" (delayed scaling).
    fp8_param: keep GEMM weights in FP8 (TransformerConfig.fp8_param; DDP ``fp8_param_gather``).
    recompute: None | "selective" | "full" (TransformerConfig.recompute_granularity).
    recompute_method: "uniform" | "block" (full recompute only).
    recompute_num_layers: layers per recompute unit (uniform) or per PP stage (block), full recompute only.
    recompute_modules: selective recompute modules (None: megatron-core's default ["core_attn"]).
parallel:
    tp, pp, sequence_parallel, distributed_optimizer.

Upstream (megatron-core 0.16.1): ``transformer/transformer_config.py:383-420`` (recompute fields),
``:427-495`` (fp8 fields), ``:988-1028`` (fp8 checks), ``:1154-1191`` (recompute checks);
``model_parallel_config.py:39`` (sequence_parallel) and ``:409-411`` ("Cannot use sequence parallelism without
tensor parallelism"); ``fp8_utils.py:554-590`` (recipe -> TE recipe class and the TE version each needs);
``distributed/distributed_data_parallel_config.py:61`` (fp8_param_gather). The FP8-param / distributed-optimizer
rule is Megatron-LM's (``megatron/training/arguments.py``: ``--fp8-param-gather`` needs
``--use-distributed-optimizer``). Hardware: FP8 GEMMs need compute capability >= 8.9 (Ada/Hopper), MXFP8 >= 10.0
(Blackwell) (TransformerEngine docs, "FP8 support").
"""

from __future__ import annotations

from typing import Optional, Tuple

FP8_FORMATS = ("e4m3", "hybrid")
# recipe -> minimum transformer-engine version that megatron-core 0.16.1 accepts for it (fp8_utils.py:554-590)
FP8_RECIPES = {"delayed": "1.0", "tensorwise": "2.2.0.dev0", "blockwise": "2.3.0.dev0", "mxfp8": "2.1.0"}
FP8_AMAX_ALGOS = ("most_recent", "max")
RECOMPUTE = ("selective", "full")
RECOMPUTE_METHODS = ("uniform", "block")
RECOMPUTE_MODULES = ("core_attn", "layernorm", "mlp")  # the dense-model subset of transformer_config.py:1198
MIN_CAPABILITY_FP8 = (8, 9)
MIN_CAPABILITY_MXFP8 = (10, 0)


class PrecisionConfigError(ValueError):
    """An FP8 / recompute / parallel option is invalid or inconsistent; the message names the config field."""


class MissingPackageError(RuntimeError):
    """A selected option needs a package that is not installed (or cannot load without CUDA); names the package."""


_OFF = (None, "", "none", "null", False)


def _fp8(model_cfg) -> Optional[str]:
    value = model_cfg.fp8
    return None if value in _OFF else value


def _recompute(model_cfg) -> Optional[str]:
    value = model_cfg.recompute
    return None if value in _OFF else value


def transformer_engine_status() -> Tuple[bool, str]:
    """``(True, version)`` when ``transformer_engine`` imports, else ``(False, "<ExceptionType>: <message>")``.

    TransformerEngine raises ImportError when absent and RuntimeError (``cudnn shared object not found``) when
    installed without CUDA/cuDNN; both count as unavailable."""
    try:
        import transformer_engine
    except Exception as e:  # noqa: BLE001 - ImportError or RuntimeError from a CUDA-less host
        return False, f"{type(e).__name__}: {e}"
    return True, str(getattr(transformer_engine, "__version__", "unknown"))


def missing_te_message(option: str, reason: str) -> str:
    """The start-up error text for an option that needs TransformerEngine (``option`` e.g. ``"model.fp8='hybrid'"``)."""
    return (
        f"{option} needs the 'transformer-engine' package (TransformerEngine, with CUDA); it cannot be imported "
        f"here ({reason}). Run in the GPU image (see Dockerfile) or turn the option off."
    )


def require_transformer_engine(option: str, te_available: Optional[bool] = None) -> None:
    """Raise :class:`MissingPackageError` (:func:`missing_te_message`) unless TransformerEngine imports.

    ``te_available``: None = detect with :func:`transformer_engine_status`; True/False = trust the caller (tests of
    the option mapping on a CPU host pass True)."""
    if te_available is True:
        return
    ok, reason = transformer_engine_status()
    if te_available is False:
        ok, reason = False, "te_available=False"
    if not ok:
        raise MissingPackageError(missing_te_message(option, reason))


def validate_precision(model_cfg, parallel_cfg, te_available: Optional[bool] = None) -> None:
    """All start-up checks of this module; raises on the first problem.

    Raises:
        PrecisionConfigError: unknown choice (message lists the allowed values); ``model.fp8`` without
            ``model.spec=te`` or without ``model.dtype=bfloat16``; ``model.fp8_param`` without ``model.fp8`` or without
            ``parallel.distributed_optimizer``; ``parallel.sequence_parallel`` with ``parallel.tp=1``; full recompute without a valid ``recompute_method``/``recompute_num_layers``.
        MissingPackageError: ``model.fp8`` or ``model.spec=te`` set and ``transformer_engine`` not importable.
    """
    spec = model_cfg.spec
    dtype = model_cfg.dtype
    fp8 = _fp8(model_cfg)
    tp = int(parallel_cfg.tp)
    if spec not in ("local", "te"):
        raise PrecisionConfigError(f"model.spec={spec!r}: must be one of local, te")
    if fp8 is not None:
        if fp8 not in FP8_FORMATS:
            raise PrecisionConfigError(f"model.fp8={fp8!r}: must be one of {', '.join(FP8_FORMATS)} (or null = off)")
        recipe = model_cfg.fp8_recipe
        if recipe not in FP8_RECIPES:
            raise PrecisionConfigError(f"model.fp8_recipe={recipe!r}: must be one of {', '.join(FP8_RECIPES)}")
        algo = model_cfg.fp8_amax_compute_algo
        if algo not in FP8_AMAX_ALGOS:
            raise PrecisionConfigError(
                f"model.fp8_amax_compute_algo={algo!r}: must be one of {', '.join(FP8_AMAX_ALGOS)}")
        hist = int(model_cfg.fp8_amax_history_len)
        if hist < 1:
            raise PrecisionConfigError(f"model.fp8_amax_history_len={hist}: must be >= 1")
        if spec != "te":
            raise PrecisionConfigError(
                f"model.fp8={fp8!r} needs model.spec=te (FP8 GEMMs are TransformerEngine layers); got "
                f"model.spec={spec!r}")
        if dtype != "bfloat16":
            raise PrecisionConfigError(
                f"model.fp8={fp8!r} needs model.dtype=bfloat16 (FP8 runs inside BF16 mixed precision); got "
                f"model.dtype={dtype!r}")
    if bool(model_cfg.fp8_param):
        if fp8 is None:
            raise PrecisionConfigError("model.fp8_param=true needs model.fp8 (e4m3 or hybrid)")
        if not bool(parallel_cfg.distributed_optimizer):
            raise PrecisionConfigError(
                "model.fp8_param=true needs parallel.distributed_optimizer=true (the FP32 main weights live in "
                "the distributed optimizer; Megatron-LM --fp8-param-gather)")
    if bool(parallel_cfg.sequence_parallel):
        if tp < 2:
            raise PrecisionConfigError(
                f"parallel.sequence_parallel=true needs parallel.tp >= 2 (got tp={tp}); it splits the sequence over "
                f"the TP group")
        # model.spec=local is fine: megatron-core's local norm asserts under SP (transformer/torch_norm.py:32), and
        # megatron_patches.sequence_parallel_norm (applied by Qwen25VLPolicy when it builds the local spec under SP)
        # builds it with its weight marked for finalize_model_grads' TP all-reduce
    rec = _recompute(model_cfg)
    if rec is not None:
        if rec not in RECOMPUTE:
            raise PrecisionConfigError(f"model.recompute={rec!r}: must be one of {', '.join(RECOMPUTE)} (or null)")
        if rec == "full":
            method = model_cfg.recompute_method
            if method not in RECOMPUTE_METHODS:
                raise PrecisionConfigError(
                    f"model.recompute_method={method!r}: must be one of {', '.join(RECOMPUTE_METHODS)}")
            n = int(model_cfg.recompute_num_layers)
            if n < 1:
                raise PrecisionConfigError(f"model.recompute_num_layers={n}: must be >= 1")
        else:
            mods = model_cfg.recompute_modules
            bad = [m for m in (mods or []) if m not in RECOMPUTE_MODULES]
            if bad:
                raise PrecisionConfigError(
                    f"model.recompute_modules: {bad} not allowed; choose from {', '.join(RECOMPUTE_MODULES)}")
    if fp8 is not None:
        require_transformer_engine(f"model.fp8={fp8!r}", te_available)
    if spec == "te":
        require_transformer_engine("model.spec='te'", te_available)


def precision_overrides(model_cfg, parallel_cfg, te_available: Optional[bool] = None) -> dict:
    """megatron-core ``TransformerConfig`` kwargs for FP8, recompute and sequence parallel (after
    :func:`validate_precision`). Pass them to ``dvr1.models.qwen2_5_vl.transformer_config(..., **kw)`` /
    ``Qwen25VLPolicy(..., **kw)``.

    Returns a dict with always ``sequence_parallel`` and ``recompute_granularity`` (None = off); with full recompute
    ``recompute_method`` and ``recompute_num_layers``; with selective recompute and ``model.recompute_modules`` set,
    ``recompute_modules``; with FP8 ``fp8``, ``fp8_recipe``, ``fp8_amax_history_len``, ``fp8_amax_compute_algo``,
    ``fp8_param``; with ``model.spec=te`` the TE-path fusions ``bias_activation_fusion=True`` (fused SwiGLU,
    ``fusions/fused_bias_swiglu.py``) and ``gradient_accumulation_fusion=True`` (TE linears accumulate weight
    gradients straight into megatron DDP's fp32 ``main_grad``, ``extensions/transformer_engine.py:626``).

    Raises: as :func:`validate_precision`.
    """
    validate_precision(model_cfg, parallel_cfg, te_available)
    kw: dict = {"sequence_parallel": bool(parallel_cfg.sequence_parallel)}
    rec = _recompute(model_cfg)
    kw["recompute_granularity"] = rec
    if rec == "full":
        kw["recompute_method"] = model_cfg.recompute_method
        kw["recompute_num_layers"] = int(model_cfg.recompute_num_layers)
    elif rec == "selective" and model_cfg.recompute_modules:
        kw["recompute_modules"] = list(model_cfg.recompute_modules)
    fp8 = _fp8(model_cfg)
    if fp8 is not None:
        kw.update(
            fp8=fp8,
            fp8_recipe=model_cfg.fp8_recipe,
            fp8_amax_history_len=int(model_cfg.fp8_amax_history_len),
            fp8_amax_compute_algo=model_cfg.fp8_amax_compute_algo,
            fp8_param=bool(model_cfg.fp8_param),
        )
    if model_cfg.spec == "te":
        kw.update(bias_activation_fusion=True, gradient_accumulation_fusion=True)
    return kw


def distributed_overrides(model_cfg, parallel_cfg) -> dict:
    """megatron-core ``DistributedDataParallelConfig`` kwargs: ``use_distributed_optimizer`` (ZeRO-1: optimizer
    state and fp32 main weights sharded over DP) and ``fp8_param_gather`` (= ``model.fp8_param``: the DP
    all-gather of updated weights runs in FP8). The same ``use_distributed_optimizer`` goes to
    ``dvr1.train.optim.build_optimizer``. Call :func:`validate_precision` first (it rejects ``fp8_param`` without
    the distributed optimizer)."""
    return {
        "use_distributed_optimizer": bool(parallel_cfg.distributed_optimizer),
        "fp8_param_gather": bool(model_cfg.fp8_param) and _fp8(model_cfg) is not None,
    }


def _version(v: str):
    from packaging.version import Version

    return Version(v)


def check_runtime_support(fp8: Optional[str], recipe: str, capability: Optional[Tuple[int, int]],
                          te_version: Optional[str]) -> Optional[Tuple[Tuple[int, int], str]]:
    """GPU / TransformerEngine-version checks for FP8, with the values passed in (so they are testable off-GPU).

    Args:
        fp8: ``model.fp8`` (None = off: nothing to check). recipe: ``model.fp8_recipe``.
        capability: CUDA compute capability ``(major, minor)`` of the device, or None when there is no GPU.
        te_version: ``transformer_engine.__version__`` (None: not checked).

    Returns: the requirement that was met, ``(min compute capability, min transformer-engine version)``; None when
        FP8 is off.
    Raises:
        PrecisionConfigError: no GPU, capability < 8.9 (FP8) or < 10.0 (``mxfp8``), or a TE older than the
            recipe needs (``FP8_RECIPES``, megatron-core 0.16.1 ``fp8_utils.py:554-590``).
    """
    if fp8 in _OFF:
        return None
    if capability is None:
        raise PrecisionConfigError(f"model.fp8={fp8!r} needs a CUDA GPU (compute capability >= 8.9); none found")
    need = MIN_CAPABILITY_MXFP8 if recipe == "mxfp8" else MIN_CAPABILITY_FP8
    if tuple(capability) < need:
        raise PrecisionConfigError(
            f"model.fp8_recipe={recipe!r} needs compute capability >= {need[0]}.{need[1]}; this GPU has "
            f"{capability[0]}.{capability[1]}")
    if te_version is not None and _version(te_version) < _version(FP8_RECIPES[recipe]):
        raise PrecisionConfigError(
            f"model.fp8_recipe={recipe!r} needs transformer-engine >= {FP8_RECIPES[recipe]}; found {te_version}")
    return need, FP8_RECIPES[recipe]


def check_device(model_cfg) -> None:
    """:func:`check_runtime_support` for this process's current CUDA device and installed TransformerEngine.
    Call once at start-up on GPU hosts after :func:`validate_precision`."""
    import torch

    fp8 = _fp8(model_cfg)
    if fp8 is None:
        return
    cap = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    ok, version = transformer_engine_status()
    check_runtime_support(fp8, model_cfg.fp8_recipe, cap,
                          version if ok and version != "unknown" else None)


def layer_spec_for(model_cfg, parallel_cfg, te_available: Optional[bool] = None):
    """The megatron-core layer spec this config selects, after :func:`validate_precision`:
    ``model.spec=local`` -> ``get_gpt_layer_local_spec`` (pure PyTorch), ``te`` ->
    ``get_gpt_layer_with_transformer_engine_spec`` (via ``dvr1.models.qwen2_5_vl.layer_spec``).

    Raises: as :func:`validate_precision` (so ``te``/FP8 without TransformerEngine fails here, at start-up)."""
    from dvr1.models.qwen2_5_vl import layer_spec

    validate_precision(model_cfg, parallel_cfg, te_available)
    return layer_spec(model_cfg.spec)
