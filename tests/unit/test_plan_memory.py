"""tools/plan_memory.py: parameter counts vs megatron-core models built on `meta`, Megatron-LM's bytes/param for
mixed-precision Adam (formula and a real megatron-core optimizer's tensors), Korthikanti et al. Table 2, the plan
and the CLI on the example configs.
"""

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import plan_memory as pm  # noqa: E402

from dvr1.models.presets import preset_config  # noqa: E402


@pytest.mark.parametrize("name", ["3B", "7B", "32B", "72B"])
def test_param_counts_equal_megatron_core_on_meta(parallel_state_1, name):
    from dvr1.models.qwen2_5_vl import Qwen25VLPolicy

    hf = preset_config(name)
    with torch.device("meta"):
        policy = Qwen25VLPolicy(hf, params_dtype=torch.bfloat16)
    lm = sum(p.numel() for p in policy.lm.parameters())
    vis = sum(p.numel() for p in policy.visual.parameters())
    shape = pm.lm_shape(hf)
    print(f"{name}: lm {lm:,} (formula {pm.lm_param_counts(shape)['total']:,}), vision {vis:,}")
    assert pm.lm_param_counts(shape)["total"] == lm
    assert pm.vision_param_count(hf.vision_config) == vis
    # one TP=1/PP=1 GPU holds the whole language model
    assert pm.stage_params(shape, 1, 1, 0)["params"] == lm


def test_published_sizes():
    # the released models' names: 3.75B / 8.29B / 33.45B / 73.41B parameters in total
    totals = {n: pm.lm_param_counts(pm.lm_shape(preset_config(n)))["total"]
              + pm.vision_param_count(preset_config(n).vision_config) for n in ("3B", "7B", "32B", "72B")}
    assert totals == {"3B": 3_754_622_976, "7B": 8_292_166_656, "32B": 33_448_292_352, "72B": 73_406_351_360}


@pytest.mark.parametrize("name, pp", [("7B", 4), ("72B", 4), ("72B", 8), ("3B", 4)])
def test_stages_add_up(name, pp):
    shape = pm.lm_shape(preset_config(name))
    c = pm.lm_param_counts(shape)
    for tp in (1, 2, 4):
        total = sum(pm.stage_params(shape, tp, pp, k)["params"] for k in range(pp))
        # every TP rank holds 1/tp of the split parameters and all of the replicated (norm) ones
        replicated = shape.num_layers * c["layer_replicated"] + c["final_norm"]
        extra = c["embedding"] if shape.tie_word_embeddings else 0  # tied: the last stage keeps its own copy of the embedding
        assert total * tp == pytest.approx((c["total"] + extra - replicated) + tp * replicated, rel=1e-12)


def test_bytes_per_param_megatron_lm_table():
    assert pm.bytes_per_param("bfloat16", False, 1) == 18
    assert pm.bytes_per_param("bfloat16", False, 64) == 18
    for dp in (1, 2, 4, 8, 16):
        assert pm.bytes_per_param("bfloat16", True, dp) == 6 + 12 / dp
        assert pm.bytes_per_param("float32", True, dp) == 8 + 8 / dp
    assert pm.bytes_per_param("float32", False, 4) == 16
    with pytest.raises(ValueError, match="model.dtype='float16': must be bfloat16 or float32"):
        pm.bytes_per_param("float16")


@pytest.mark.parametrize("distributed", [False, True])
def test_bytes_per_param_match_a_real_megatron_optimizer(parallel_state_1, distributed):
    """bf16 GPTModel + megatron DDP (fp32 grads) + megatron Adam after one step: count the tensors' bytes."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.module import Float16Module

    from megatron_patches import tensor_type_alias

    cfg = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4, use_cpu_initialization=True,
                            params_dtype=torch.bfloat16, bf16=True, hidden_dropout=0.0, attention_dropout=0.0)
    model = Float16Module(cfg, GPTModel(cfg, get_gpt_layer_local_spec(), vocab_size=128, max_sequence_length=32))
    ddp = DistributedDataParallel(cfg, DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=distributed), model)
    with tensor_type_alias.cuda_spelled_tensor_types():
        opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, bf16=True,
                                                     params_dtype=torch.bfloat16,
                                                     use_distributed_optimizer=distributed), [ddp])
        ids = torch.randint(0, 128, (2, 16))
        ddp(ids, torch.arange(16).expand(2, 16), None, labels=ids).float().mean().backward()
        ddp.finish_grad_sync()
        assert opt.step()[0]
    inner = opt.chained_optimizers[0] if hasattr(opt, "chained_optimizers") else opt
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    nbytes = sum(p.numel() * p.element_size() for p in params)  # bf16 weights
    nbytes += sum(p.main_grad.numel() * p.main_grad.element_size() for p in params)  # fp32 grad buffer
    nbytes += sum(p.numel() * p.element_size() for g in inner.optimizer.param_groups for p in g["params"])  # main
    nbytes += sum(t.numel() * t.element_size() for s in inner.optimizer.state.values() for t in s.values()
                  if torch.is_tensor(t) and t.dim() > 0)  # Adam exp_avg, exp_avg_sq
    assert nbytes / n == pm.bytes_per_param("bfloat16", distributed, dp=1) == 18


def test_activations_reduce_to_korthikanti_table_2():
    s, b, h, a, t = 2048, 2, 1024, 16, 4
    sbh = s * b * h
    f = pm.layer_activation_bytes
    assert f(s, b, h, a) == sbh * (34 + 5 * a * s / h)
    assert f(s, b, h, a, t) == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)), rel=1e-12)
    assert f(s, b, h, a, t, sp=True) == pytest.approx(sbh / t * (34 + 5 * a * s / h), rel=1e-12)
    assert f(s, b, h, a, t, sp=True, recompute="selective") == pytest.approx(34 * sbh / t, rel=1e-12)
    assert f(s, b, h, a, t, recompute="full") == 2 * sbh
    assert f(s, b, h, a, t, sp=True, recompute="full") == 2 * sbh / t
    # Megatron-LM theoretical_memory_usage.py: sbh (18 + 4 ffn/h) per layer with selective recompute + SP
    assert f(s, b, h, a, t, sp=True, recompute="selective", ffn=3 * h) == pytest.approx(sbh * (18 + 12) / t)


def test_activations_qwen_terms():
    # Qwen2.5-72B layer at TP=8 + SP, selective, SwiGLU, no dropout, bf16: 4h (norms) + 2h + 2h (GEMM inputs)
    # replicated/t; Q,K 2(8192+1024), V 2*1024, proj 2*8192, fc1 out 2*2*29568, fc2 in 2*29568 split/t
    s, b = 1000, 1
    per_token = (8 * 8192 + 2 * 9216 + 2 * 1024 + 2 * 8192 + 4 * 29568 + 2 * 29568) / 8
    got = pm.layer_activation_bytes(s, b, 8192, 64, 8, sp=True, recompute="selective", kv_heads=8, ffn=29568,
                                    gated=True, dropout=False, flash=True)
    assert got == s * per_token
    fp8 = pm.layer_activation_bytes(s, b, 8192, 64, 8, sp=True, recompute="selective", kv_heads=8, ffn=29568,
                                    gated=True, dropout=False, flash=True, fp8=True)
    assert got - fp8 == s * (8192 + 8192 + 8192 + 29568) / 8  # four GEMM inputs at 1 byte instead of 2


def test_kv_cache_per_token():
    shape = pm.lm_shape(preset_config("72B"))
    assert pm.kv_bytes_per_token(shape, 8) == 2 * 80 * 1 * 128 * 2  # 8 KV heads over TP 8: one per GPU
    assert pm.kv_bytes_per_token(shape, 16) == 2 * 80 * 1 * 128 * 2  # replicated beyond 8
    assert pm.kv_bytes_per_token(shape, 1) == 2 * 80 * 8 * 128 * 2


def _setup(**kw):
    hf = preset_config("72B")
    base = dict(shape=pm.lm_shape(hf), vision_params=pm.vision_param_count(hf.vision_config), tp=8, pp=4, world=32,
                distributed_optimizer=True, sequence_parallel=True, recompute="selective", seq_len=2304,
                micro_batches=128, vllm_tp=8, vllm_util=0.3)
    base.update(kw)
    return pm.Setup(**base)


def test_plan_rows_and_verdict():
    st = _setup()
    r = pm.plan(st)
    first = pm.stage_params(st.shape, 8, 4, 0)["params"]
    assert r["stages"] == ["first", "middle(2)", "last"]
    assert r["rows"]["weights+grads+Adam"][0] == first * 18  # DP=1
    assert r["rows"]["reference policy"][0] == first * 2
    assert r["rows"]["vision tower (frozen)"] == [2 * 2 * st.vision_params, 0, 0]
    assert r["phases"]["rollout"][0] == pytest.approx(
        first * 20 + 4 * st.vision_params + 0.3 * st.gpu_gib * pm.GIB + 4 * pm.GIB)
    assert r["fits"] and r["verdict"].startswith("FITS: peak ")
    r64 = pm.plan(_setup(world=64))
    assert r64["rows"]["weights+grads+Adam"][0] == pytest.approx(first * (6 + 12 / 2))
    over = pm.plan(_setup(distributed_optimizer=False, vllm_util=0.5))
    assert not over["fits"] and over["verdict"].startswith("DOES NOT FIT: peak ")
    with pytest.raises(ValueError, match="world size 24 is not divisible by tp\\*pp=8\\*4"):
        pm.plan(_setup(world=24))


def test_fp8_rows():
    bf16 = pm.plan(_setup())["rows"]["FP8 weight copies"]
    fp8 = pm.plan(_setup(fp8=True))["rows"]["FP8 weight copies"]
    fp8p = pm.plan(_setup(fp8=True, fp8_param=True))["rows"]["FP8 weight copies"]
    gemm = pm.stage_params(pm.lm_shape(preset_config("72B")), 8, 4, 0)["gemm"]
    assert bf16 == fp8p == [0.0, 0.0, 0.0] and fp8[0] == 2 * gemm


@pytest.mark.parametrize("cfg, preset, nodes", [("examples/qwen2_5_vl_7b.yaml", "7B", 1),
                                                 ("examples/qwen2_5_vl_72b.yaml", "72B", 4)])
def test_fused_logprobs_count_chunk_buffers_only(cfg, preset, nodes):
    """model.fused_logprobs (on in both examples): the last stage holds [chunk, vocab/tp] buffers (bf16 GEMM output
    + two fp32 scratches), not the [seq * micro-batch, vocab/tp] bf16 logits."""
    from omegaconf import OmegaConf

    hf = preset_config(preset)
    fused = pm.setup_from_config(OmegaConf.load(REPO / cfg), hf, nodes, 8)
    assert fused.fused_logprobs and fused.logprob_chunk == 1024
    unfused = pm.Setup(**{**fused.__dict__, "fused_logprobs": False})
    tokens, v_local = fused.seq_len * fused.micro_batch, hf.text_config.vocab_size / fused.tp
    assert tokens > 1024
    assert pm.logits_bytes(fused) == (2 + 4 + 4) * 1024 * v_local
    assert pm.logits_bytes(unfused) == 2 * tokens * v_local
    assert pm.logits_bytes(fused) < pm.logits_bytes(unfused)
    # the plan's last-stage activations differ by exactly that term, the other stages not at all
    a_f, a_u = pm.plan(fused)["rows"]["activations"], pm.plan(unfused)["rows"]["activations"]
    assert a_u[-1] - a_f[-1] == pytest.approx(pm.logits_bytes(unfused) - pm.logits_bytes(fused), rel=1e-12)
    assert a_f[:-1] == a_u[:-1]
    # a chunk longer than the micro-batch's tokens is one chunk of all tokens
    assert pm.logits_bytes(pm.Setup(**{**fused.__dict__, "logprob_chunk": 10 ** 9})) == 10 * tokens * v_local
    with pytest.raises(ValueError, match=r"^model.logprob_chunk=0: must be >= 1 tokens$"):
        pm.logits_bytes(pm.Setup(**{**fused.__dict__, "logprob_chunk": 0}))


@pytest.mark.parametrize("cfg, preset, nodes, rc", [
    ("examples/qwen2_5_vl_72b.yaml", "72B", 4, 0),
    ("examples/qwen2_5_vl_72b.yaml", "72B", 8, 0),
    ("examples/qwen2_5_vl_7b.yaml", "7B", 1, 0),
])
def test_cli_on_examples(capsys, cfg, preset, nodes, rc):
    assert pm.main(["-c", str(REPO / cfg), "--preset", preset, "--nodes", str(nodes)]) == rc
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1].startswith("FITS: ")
    assert f"{nodes * 8} GPUs = TP" in out


def test_cli_overrides_and_bad_layout(capsys):
    cfg = str(REPO / "examples/qwen2_5_vl_72b.yaml")
    assert pm.main(["-c", cfg, "--preset", "72B", "--nodes", "4", "parallel.distributed_optimizer=false",
                    "rollout.gpu_memory_utilization=0.6"]) == 1
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("DOES NOT FIT: ")
    assert pm.main(["-c", cfg, "--preset", "72B", "--nodes", "4", "parallel.pp=3"]) == 2
    assert "world size 32 is not divisible by tp*pp=8*3" in capsys.readouterr().err
