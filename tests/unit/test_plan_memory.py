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
    # the output layer's kept input: the fused path keeps the SP-gathered [s, b, h] hidden states (2sbh), the
    # unfused ColumnParallelLinear under SP its sequence-sharded input (2sbh/tp); the final norm's input 2sbh/tp both
    assert fused.sequence_parallel
    sbh = tokens * hf.text_config.hidden_size
    assert pm.output_input_bytes(fused) == 2 * sbh / fused.tp + 2 * sbh
    assert pm.output_input_bytes(unfused) == 4 * sbh / fused.tp
    # the plan's last-stage activations differ by exactly these terms, the other stages not at all
    a_f, a_u = pm.plan(fused)["rows"]["activations"], pm.plan(unfused)["rows"]["activations"]
    assert a_u[-1] - a_f[-1] == pytest.approx(pm.logits_bytes(unfused) - pm.logits_bytes(fused)
                                              + 4 * sbh / fused.tp - 2 * sbh / fused.tp - 2 * sbh, rel=1e-12)
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
                    "rollout.gpu_memory_utilization=0.6", "rollout.offload_trainer_state=false"]) == 1
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("DOES NOT FIT: ")
    # the same with the trainer state offloaded while vLLM is awake fits (16 of 18 bytes/param leave the GPU)
    assert pm.main(["-c", cfg, "--preset", "72B", "--nodes", "4", "parallel.distributed_optimizer=false",
                    "rollout.gpu_memory_utilization=0.6", "rollout.offload_trainer_state=true"]) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("FITS: ")
    assert pm.main(["-c", cfg, "--preset", "72B", "--nodes", "4", "parallel.pp=3"]) == 2
    assert "world size 32 is not divisible by tp*pp=8*3" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# issue 18: sequence parallel, trainer-state offload, packing, the KV cache for a whole step


def test_sequence_parallel_divides_exactly_the_replicated_terms():
    """SP (Korthikanti Table 2): the norm inputs and the QKV/fc1 GEMM inputs (8h bytes/token at bf16, no dropout)
    and the full-recompute layer input (2h) are split over TP; the other terms are not touched."""
    h, t, s, b = 8192, 8, 2304, 8
    kw = dict(kv_heads=8, ffn=29568, gated=True, dropout=False, flash=True)
    off = pm.layer_activation_bytes(s, b, h, 64, t, **kw)
    on = pm.layer_activation_bytes(s, b, h, 64, t, sp=True, **kw)
    assert off - on == s * b * 8 * h * (1 - 1 / t)
    # the plan at full recompute, 20 layers per stage, 1F1B: stage k keeps 4 - k micro-batches' layer inputs
    p_off = pm.plan(_setup(recompute="full", sequence_parallel=False, micro_batch=8))["rows"]["activations"]
    p_on = pm.plan(_setup(recompute="full", sequence_parallel=True, micro_batch=8))["rows"]["activations"]
    layer_in, remat = 2 * s * b * h * (1 - 1 / t), 8 * s * b * h * (1 - 1 / t)
    assert p_off[0] - p_on[0] == pytest.approx(4 * 20 * layer_in + remat, rel=1e-12)
    assert p_off[1] - p_on[1] == pytest.approx(2 * 20 * layer_in + remat, rel=1e-12)
    # last stage: + the final norm's input and (unfused logits path) the output layer's input, each 2sbh(1 - 1/t)
    assert p_off[2] - p_on[2] == pytest.approx(20 * layer_in + remat + 2 * layer_in, rel=1e-12)


def test_offload_removes_exact_bytes_per_param():
    """rollout.offload_trainer_state: at the refit grads (4) + fp32 master (4) + Adam (8) are off the GPU (16 of 18
    bytes/param at DP=1), the bf16 weights (2) stay for the copy into vLLM; while generating under vLLM all 18."""
    assert pm.offloaded_bytes_per_param(_setup(offload=True)) == {"refit": 16.0, "generate": 18.0}
    assert pm.offloaded_bytes_per_param(_setup(offload=False)) == {"refit": 0.0, "generate": 0.0}
    # DP=2 with the distributed optimizer: 2 + 4 + 12/2 = 12 bytes/param held, 10 of them offloaded at the refit
    assert pm.offloaded_bytes_per_param(_setup(offload=True, world=64)) == {"refit": 10.0, "generate": 12.0}
    # fp32 params (4 + 4 grads + 8 Adam), native sampler: the weights are the sampler's, they never leave
    assert pm.offloaded_bytes_per_param(_setup(offload=True, dtype="float32", distributed_optimizer=False,
                                               vllm=False)) == {"refit": 12.0, "generate": 12.0}
    base, off = pm.plan(_setup()), pm.plan(_setup(offload=True))
    params = [pm.stage_params(base_shape(), 8, 4, k)["params"] for k in (0, 2, 3)]
    assert [b - o for b, o in zip(base["phases"]["rollout"], off["phases"]["rollout"])] == pytest.approx(
        [16 * p for p in params], rel=1e-12)
    assert base["phases"]["training"] == off["phases"]["training"]  # onloaded before the update
    assert off["rows"]["offloaded in rollout (-)"] == pytest.approx([16 * p for p in params], rel=1e-12)
    assert "offloaded in rollout (-)" not in base["rows"]


def base_shape():
    return pm.lm_shape(preset_config("72B"))


def test_packing_token_counts_from_given_lengths(tmp_path):
    """Padded micro-batches hold rows x the step's longest; packed ones the sum of their rows' lengths."""
    L = pm.length_stats([[10, 30, 20, 5], [7, 7]], rows=2, source="hand")
    # step 1 (longest 30): [10, 30] -> 60 padded / 40 packed, [20, 5] -> 60 / 25; step 2 (longest 7): [7, 7] -> 14 / 14
    assert (L["padded_peak"], L["packed_peak"], L["longest"], L["sequences"]) == (60, 40, 30, 6)
    assert L["padded_mean"] == pytest.approx(134 / 3) and L["packed_mean"] == pytest.approx(79 / 3)
    assert L["padding_fraction"] == pytest.approx(1 - 79 / 134)
    f = tmp_path / "lengths.json"
    f.write_text('[10, {"prompt": 20, "response": 10}, 20, 5, 7, 7]')
    assert pm.load_lengths(str(f), 4) == [[10, 30, 20, 5], [7, 7]]
    f.write_text('[10, {"prompt": 20}, 3]')
    with pytest.raises(ValueError, match=r"lengths.json: item 1: expected a positive int"):
        pm.load_lengths(str(f), 4)
    f.write_text('[10, 0]')
    with pytest.raises(ValueError, match=r"item 1: "):
        pm.load_lengths(str(f), 4)
    f.write_text('{"a": 1}')
    with pytest.raises(ValueError, match=r"expected a non-empty JSON list"):
        pm.load_lengths(str(f), 4)


def test_packed_activations_equal_a_padded_microbatch_of_the_same_tokens():
    """Packed: one THD sequence of the rows' real tokens; with fused attention every term is linear in tokens, so a
    packed micro-batch of T tokens costs what a padded one of T tokens does (b=1, s=T), logits included."""
    T = 8 * 2304 // 2
    for fused in (False, True):
        packed = pm.plan(_setup(recompute="full", micro_batch=8, packing=True, packed_tokens=T, fused_logprobs=fused))
        padded = pm.plan(_setup(recompute="full", micro_batch=1, seq_len=T, fused_logprobs=fused))
        assert packed["rows"]["activations"] == pytest.approx(padded["rows"]["activations"], rel=1e-12)
    # without a distribution the packed micro-batch is bounded by rows x the longest: the padded micro-batch
    bound = pm.plan(_setup(recompute="full", micro_batch=8, packing=True))["rows"]["activations"]
    assert bound == pytest.approx(pm.plan(_setup(recompute="full", micro_batch=8))["rows"]["activations"], rel=1e-12)


def test_named_length_distribution_through_the_frame_sampler():
    # 16 fixed frames at 128 x 28^2 pixels: 8 temporal patches x 128 = 1024 video tokens, whatever the duration
    assert pm.video_tokens_for_duration(3.0, 16, 2.0, 16, 100352) == 1024
    # fps sampling (2 fps, at most 16 frames): 3 s -> 6 frames -> 3 x 128; 10 min -> 16 frames -> 1024
    assert pm.video_tokens_for_duration(3.0, 0, 2.0, 16, 100352) == 384
    assert pm.video_tokens_for_duration(600.0, 0, 2.0, 16, 100352) == 1024
    kw = dict(prompt_tokens=256, max_new_tokens=1024, num_frames=0, fps=2.0, max_frames=16, max_pixels=100352)
    steps = pm.simulate_lengths("seconds-to-minutes", 5, 16, 8, **kw)
    assert steps == pm.simulate_lengths("seconds-to-minutes", 5, 16, 8, **kw)  # seeded
    assert [len(s) for s in steps] == [16] * 5
    assert all(256 + 128 + 1 <= n <= 256 + 1024 + 1024 for s in steps for n in s)
    with pytest.raises(ValueError, match="--length-dist 'nope': must be one of seconds-to-minutes, videomme"):
        pm.simulate_lengths("nope", 1, 8, 8, **kw)


def test_kv_cache_for_the_whole_step():
    """72B at vLLM TP 8: 2 x 80 layers x 1 KV head x 128 x 2 bytes = 40 KiB/token; a step's rollouts per DP
    replica (every PP stage's engine generates them all) = 16 prompts x 8 x 2304 tokens = 294,912 tokens."""
    st = _setup(sequences_per_step=128, vllm_util=0.3)
    v = pm.plan(st)["vllm"]
    assert v["step_tokens"] == 16 * 8 * 2304 and v["step_kv"] == 294912 * 40960
    weights = (pm.lm_param_counts(st.shape)["total"] + st.vision_params) * 2 / 8
    assert v["kv"] == pytest.approx(0.3 * st.gpu_gib * pm.GIB - weights - 2 * pm.GIB, rel=1e-12)
    assert not v["holds_step"]  # 4.8 GiB < 11.25 GiB
    # under PP 4 the 16 prompts are dealt out over the stages: 4 prompts x 8 responses per engine
    assert v["pp_share_tokens"] == 4 * 8 * 2304 and v["pp_share_kv"] == 4 * 8 * 2304 * 40960
    assert pm.plan(_setup(sequences_per_step=136, vllm_util=0.3))["vllm"]["pp_share_tokens"] == 5 * 8 * 2304
    assert pm.plan(_setup(sequences_per_step=128, vllm_util=0.5))["vllm"]["holds_step"]
    # DP = 2: each replica rolls out half the step
    assert pm.plan(_setup(sequences_per_step=128, world=64))["vllm"]["step_tokens"] == 64 * 2304


def test_72b_example_plan_meets_issue_18():
    """The 72B example on 32 H100 (SP, offload, packing on; Video-MME-like lengths): >= 10 % of the GPU free at
    the peak phase and a KV cache that holds the whole step's rollouts."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "examples/qwen2_5_vl_72b.yaml")
    st = pm.setup_from_config(cfg, preset_config("72B"), 4, 8, length_dist="videomme")
    assert st.sequence_parallel and st.packing and st.offload and st.fused_logprobs and st.world == 32
    assert st.lengths["packed_peak"] < st.lengths["padded_peak"] == 8 * 2304
    r = pm.plan(st)
    assert r["fits"] and r["headroom"] >= 0.10 * st.gpu_gib * pm.GIB
    assert r["vllm"]["holds_step"]


def test_cli_length_flags(capsys, tmp_path):
    cfg = str(REPO / "examples/qwen2_5_vl_72b.yaml")
    f = tmp_path / "l.json"
    f.write_text("[" + ", ".join(["1300"] * 64 + ["2304"] * 64) + "]")
    assert pm.main(["-c", cfg, "--preset", "72B", "--nodes", "4", "--lengths", str(f)]) == 0
    out = capsys.readouterr().out
    # 16 micro-batches of 8: the first 8 all 1300 tokens (padded to the step's 2304), the last 8 all 2304
    assert "padded 18432 mean / 18432 peak, packed 14416 mean / 18432 peak" in out
    assert "packing on | offload on" in out
    assert pm.main(["-c", cfg, "--preset", "72B", "--nodes", "4", "--lengths", str(f), "--length-dist",
                    "videomme"]) == 2
    assert "give --lengths or --length-dist, not both" in capsys.readouterr().err
