"""dvr1.parallel.precision: config -> megatron-core TransformerConfig / DDP kwargs, start-up checks, spec selection.

Exact error messages, the mapping checked by megatron-core itself (the returned kwargs build a real
TransformerConfig / DistributedDataParallelConfig and land in the right fields), and the layer spec's module classes.
"""

import sys

import pytest
import torch

from dvr1.config import ModelConfig, ParallelConfig
from dvr1.parallel.precision import (
    MissingPackageError,
    PrecisionConfigError,
    check_runtime_support,
    distributed_overrides,
    layer_spec_for,
    missing_te_message,
    precision_overrides,
    validate_precision,
)


def model(**kw):
    base = dict(spec="te", dtype="bfloat16", fp8=None)
    base.update(kw)
    return ModelConfig(**base)


def par(**kw):
    base = dict(tp=8, pp=4, sequence_parallel=False, distributed_optimizer=False)
    base.update(kw)
    return ParallelConfig(**base)


@pytest.fixture
def no_te(monkeypatch):
    """Make `import transformer_engine` fail the same way on every host (also on one that has TE)."""
    monkeypatch.setitem(sys.modules, "transformer_engine", None)
    return "ModuleNotFoundError: import of transformer_engine halted; None in sys.modules"


def test_fp8_without_te_fails_naming_the_package(no_te):
    with pytest.raises(MissingPackageError) as e:
        precision_overrides(model(fp8="hybrid"), par())
    assert str(e.value) == (
        "model.fp8='hybrid' needs the 'transformer-engine' package (TransformerEngine, with CUDA); it cannot be "
        f"imported here ({no_te}). Run in the GPU image (see Dockerfile) or turn the option off.")
    assert str(e.value) == missing_te_message("model.fp8='hybrid'", no_te)


def test_te_spec_without_te_fails_at_startup(no_te):
    with pytest.raises(MissingPackageError, match=r"^model\.spec='te' needs the 'transformer-engine' package"):
        layer_spec_for(model(), par())


def test_local_spec_selects_megatron_local_modules():
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    spec = layer_spec_for(model(spec="local", dtype="float32"), par(tp=1, pp=1), te_available=False)
    attn = spec.submodules.self_attention.submodules
    assert attn.linear_qkv is ColumnParallelLinear
    assert attn.linear_proj is RowParallelLinear
    assert attn.core_attention is DotProductAttention
    mlp = spec.submodules.mlp.submodules
    assert (mlp.linear_fc1, mlp.linear_fc2) == (ColumnParallelLinear, RowParallelLinear)


def test_fp8_mapping_lands_in_transformer_config():
    from dvr1.models.presets import preset_config
    from dvr1.models.qwen2_5_vl import transformer_config

    m = model(fp8="hybrid", fp8_recipe="delayed", fp8_amax_history_len=1024, fp8_amax_compute_algo="max",
              fp8_param=True, recompute="full", recompute_method="block", recompute_num_layers=3)
    p = par(sequence_parallel=True, distributed_optimizer=True)
    kw = precision_overrides(m, p, te_available=True)
    assert kw == dict(sequence_parallel=True, recompute_granularity="full", recompute_method="block",
                      recompute_num_layers=3, fp8="hybrid", fp8_recipe="delayed", fp8_amax_history_len=1024,
                      fp8_amax_compute_algo="max", fp8_param=True, bias_activation_fusion=True,
                      gradient_accumulation_fusion=True)
    cfg = transformer_config(preset_config("72B"), tp=8, pp=4, params_dtype=torch.bfloat16, **kw)
    assert (cfg.fp8, cfg.fp8_recipe, cfg.fp8_amax_history_len, cfg.fp8_param) == ("hybrid", "delayed", 1024, True)
    assert (cfg.recompute_granularity, cfg.recompute_method, cfg.recompute_num_layers) == ("full", "block", 3)
    assert cfg.sequence_parallel is True
    assert cfg.bias_activation_fusion and cfg.gradient_accumulation_fusion  # base config has them off


def test_distributed_overrides_build_ddp_config():
    from megatron.core.distributed import DistributedDataParallelConfig

    kw = distributed_overrides(model(fp8="e4m3", fp8_param=True), par(distributed_optimizer=True))
    assert kw == {"use_distributed_optimizer": True, "fp8_param_gather": True}
    ddp = DistributedDataParallelConfig(**kw)
    assert ddp.use_distributed_optimizer and ddp.fp8_param_gather
    assert distributed_overrides(ModelConfig(), ParallelConfig()) == {"use_distributed_optimizer": False, "fp8_param_gather": False}


def test_defaults_mean_everything_off_on_a_cpu_config():
    # the tiny CPU job's sections, every precision field at its default: nothing changes
    kw = precision_overrides(ModelConfig(spec="local", dtype="float32"), ParallelConfig(tp=1, pp=1))
    assert kw == {"sequence_parallel": False, "recompute_granularity": None}


def test_sequence_parallel_with_the_local_spec_is_accepted():
    """The local norm runs under SP through megatron_patches.sequence_parallel_norm; tp >= 2 stays required."""
    kw = precision_overrides(ModelConfig(spec="local", dtype="float32"), ParallelConfig(tp=2, sequence_parallel=True))
    assert kw == {"sequence_parallel": True, "recompute_granularity": None}
    with pytest.raises(PrecisionConfigError, match=r"needs parallel.tp >= 2 \(got tp=1\)"):
        validate_precision(ModelConfig(spec="local", dtype="float32"), ParallelConfig(tp=1, sequence_parallel=True))


def test_selective_recompute_passes_modules():
    kw = precision_overrides(model(spec="local", recompute="selective", recompute_modules=["core_attn", "mlp"]),
                             par(), te_available=True)
    assert kw == {"sequence_parallel": False, "recompute_granularity": "selective",
                  "recompute_modules": ["core_attn", "mlp"]}


@pytest.mark.parametrize("m, p, message", [
    (model(fp8="e5m2"), par(), "model.fp8='e5m2': must be one of e4m3, hybrid (or null = off)"),
    (model(fp8="hybrid", fp8_recipe="nvfp4"), par(),
     "model.fp8_recipe='nvfp4': must be one of delayed, tensorwise, blockwise, mxfp8"),
    (model(fp8="hybrid", spec="local"), par(),
     "model.fp8='hybrid' needs model.spec=te (FP8 GEMMs are TransformerEngine layers); got model.spec='local'"),
    (model(fp8="e4m3", dtype="float32"), par(),
     "model.fp8='e4m3' needs model.dtype=bfloat16 (FP8 runs inside BF16 mixed precision); got model.dtype='float32'"),
    (model(fp8_param=True), par(), "model.fp8_param=true needs model.fp8 (e4m3 or hybrid)"),
    (model(fp8="hybrid", fp8_param=True), par(distributed_optimizer=False),
     "model.fp8_param=true needs parallel.distributed_optimizer=true (the FP32 main weights live in the "
     "distributed optimizer; Megatron-LM --fp8-param-gather)"),
    (model(), par(tp=1, sequence_parallel=True),
     "parallel.sequence_parallel=true needs parallel.tp >= 2 (got tp=1); it splits the sequence over the TP group"),
    (model(recompute="everything"), par(), "model.recompute='everything': must be one of selective, full (or null)"),
    (model(recompute="full", recompute_method="random"), par(),
     "model.recompute_method='random': must be one of uniform, block"),
    (model(recompute="full", recompute_num_layers=0), par(), "model.recompute_num_layers=0: must be >= 1"),
    (model(recompute="selective", recompute_modules=["moe"]), par(),
     "model.recompute_modules: ['moe'] not allowed; choose from core_attn, layernorm, mlp"),
    (model(fp8="hybrid", fp8_amax_compute_algo="mean"), par(),
     "model.fp8_amax_compute_algo='mean': must be one of most_recent, max"),
])
def test_bad_options_name_the_field(m, p, message):
    with pytest.raises(PrecisionConfigError) as e:
        validate_precision(m, p, te_available=True)
    assert str(e.value) == message


@pytest.mark.parametrize("fp8, recipe, cap, te, message", [
    ("hybrid", "delayed", None, "2.9.0", "model.fp8='hybrid' needs a CUDA GPU (compute capability >= 8.9); none found"),
    ("hybrid", "delayed", (8, 0), "2.9.0",
     "model.fp8_recipe='delayed' needs compute capability >= 8.9; this GPU has 8.0"),
    ("e4m3", "mxfp8", (9, 0), "2.9.0", "model.fp8_recipe='mxfp8' needs compute capability >= 10.0; this GPU has 9.0"),
    ("hybrid", "blockwise", (9, 0), "2.2.0",
     "model.fp8_recipe='blockwise' needs transformer-engine >= 2.3.0.dev0; found 2.2.0"),
])
def test_runtime_support_errors(fp8, recipe, cap, te, message):
    with pytest.raises(PrecisionConfigError) as e:
        check_runtime_support(fp8, recipe, cap, te)
    assert str(e.value) == message


def test_runtime_support_accepts_hopper_and_blackwell():
    # the requirement each accepted call checked: (min compute capability, min transformer-engine version)
    assert check_runtime_support("hybrid", "delayed", (9, 0), "2.9.0") == ((8, 9), "1.0")  # H100/H200
    assert check_runtime_support("hybrid", "tensorwise", (9, 0), "2.2.0") == ((8, 9), "2.2.0.dev0")
    assert check_runtime_support("e4m3", "delayed", (8, 9), None) == ((8, 9), "1.0")  # Ada, exactly at the bound
    assert check_runtime_support("e4m3", "mxfp8", (10, 0), "2.9.0") == ((10, 0), "2.1.0")  # B200
    assert check_runtime_support(None, "mxfp8", None, None) is None  # FP8 off: nothing to check
