#!/usr/bin/env python
"""Per-GPU memory plan for a dvr1 run on a cluster: does Reg-GRPO on Qwen2.5-VL fit, with colocated vLLM?

    python tools/plan_memory.py -c examples/qwen2_5_vl_72b.yaml --preset 72B --nodes 4
    python tools/plan_memory.py -c examples/qwen2_5_vl_7b.yaml --preset 7B --nodes 1 parallel.tp=4 model.fp8=null
    python tools/plan_memory.py -c examples/qwen2_5_vl_72b.yaml --preset 72B --nodes 4 --length-dist videomme

Prints one table (rows: memory items in GiB; columns: the first / a middle / the last pipeline stage) and a one-line
verdict. ``key=value`` overrides edit the YAML as ``dvr1`` does. The YAML is read as plain YAML (not validated
against ``dvr1.config.RunConfig``), so the cluster fields proposed in docs/CLUSTER.md are read when present and take
the defaults noted below when absent.

Accounting (all per GPU, bytes; GiB = 2**30 bytes):

- Parameters on a GPU: megatron-core's sharding of the Qwen2.5-VL language model (``GPTModel``): every matrix and
  the QKV bias split over TP, RMSNorm weights replicated, the embedding on the first PP stage and the output layer
  (untied sizes) on the last one. Counts come from the config by formula (:func:`lm_param_counts`,
  :func:`vision_param_count`); tests/unit/test_plan_memory.py checks them against models built on ``meta``.
- Weights + gradients + Adam states: Megatron-LM's accounting for mixed-precision Adam (Megatron-LM README,
  "Distributed Optimizer"; ``megatron/training/theoretical_memory_usage.py``), :func:`bytes_per_param`:
  bf16 params + fp32 grads = 18 bytes/param, 6 + 12/DP with the distributed optimizer; fp32 = 16 and 8 + 8/DP.
  FP8 (TransformerEngine): without ``fp8_param`` TE keeps an FP8 copy of every decoder GEMM weight and its transpose
  next to the bf16 weight (+2 bytes per GEMM param); with ``fp8_param`` the bf16 weight is replaced by FP8 data +
  transpose (2 bytes, as bf16) and there is no extra copy.
- Reference policy (``algo.beta > 0``): a second, frozen copy of the language model at the same TP/PP in the model
  dtype (dvr1.train.job.build_policy(trainable=False)); the frozen HF vision tower (not TP-sharded) sits on the
  first PP stage once per model (policy and reference).
- Activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"
  (arXiv:2205.05198) §4, Table 2 — the formula Megatron-LM's theoretical_memory_usage.py uses — generalised term by
  term to GQA, gated (SwiGLU) MLPs, dropout off, fused/flash attention and FP8-stored GEMM inputs
  (:func:`layer_activation_bytes`; it reduces exactly to Table 2 for the paper's GPT shape, which the tests check).
  1F1B pipeline schedule: stage k keeps min(PP - k, micro-batches) micro-batches in flight (paper §4.2.3). Full
  recompute keeps each layer's input and re-materialises one layer at a time. The last stage adds the final-norm
  and output-layer inputs and the log-prob path's logits (:func:`logits_bytes`): without ``model.fused_logprobs``
  the bf16 logits ``[s, b, vocab/TP]`` kept for the backward of ``vocab_parallel_logprobs``; with it
  (``fused_linear_logprobs``, dvr1/parallel/logprobs.py) the logits exist only ``model.logprob_chunk`` tokens at a
  time: the bf16 ``[chunk, vocab/TP]`` GEMM buffer (kept from forward to backward: the last chunk's logits) and up
  to two fp32 ``[chunk, vocab/TP]`` scratches (forward: z - max and, for the entropy, exp; backward: dz).
- vLLM (colocated, one engine per ``rollout.tensor_parallel_size`` GPUs): it claims ``gpu_memory_utilization`` x the
  GPU's memory at start-up (vLLM's own rule: it refuses to start if that much is not free); inside that, weights
  (language model + vision tower) / vLLM-TP, an assumed non-KV reserve (profiled activations + CUDA graphs,
  ``--vllm-reserve-gib``), and the rest is KV cache: 2 (K, V) x layers x max(1, kv_heads / vLLM-TP) x head_dim x
  2 bytes per token. With sleep mode (``rollout.enable_sleep_mode``, level 1) the engine frees its weights and KV
  cache while the trainer runs; without it the whole budget stays claimed.
  The KV check: the whole step's rollouts of one DP replica at full length (``rl.prompts_per_step`` x
  ``rollout.group_size`` / DP x (prompt + ``rollout.max_new_tokens``) tokens) must fit in one engine's KV cache
  (conservative: under PP the replica's prompts are split over the stages' engines, ``pp_share_tokens`` each).
- Sequence parallel (``parallel.sequence_parallel``): Table 2's SP rows -- the norm inputs and the QKV / fc1 GEMM
  inputs, the full-recompute layer input and the final norm's input are ``[s/TP, b, h]``; the output layer's input
  is ``/TP`` on the unfused path only (:func:`output_input_bytes`).
- Packing (``model.packing``): a micro-batch is one sequence of its rows' real tokens (``s = sum of lengths``,
  ``b = 1``) instead of rows x the step's longest; from a length distribution (``--lengths`` JSON or
  ``--length-dist`` name, :func:`length_stats`) the largest packed micro-batch is planned, and the bound (rows x
  longest) is printed too; without one, the bound is planned.
- Trainer-state offload (``rollout.offload_trainer_state``, dvr1/train/offload.py): in the rollout phase the
  grads and optimizer state are on host; the bf16 weights stay through the refit (vLLM awake), which sets the
  rollout phase's peak (:func:`offloaded_bytes_per_param`).
- Overhead: CUDA context, NCCL buffers and allocator fragmentation: ``--overhead-gib`` (assumed, default 4).

Two phases are checked: training (trainer states + activations [+ vLLM budget when it cannot sleep]) and rollout
(trainer states + vLLM budget). Transient tensors of no-grad forwards (old-policy and reference log-probs, the
frozen vision tower) are one layer at a time and are not counted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository: dvr1
from dvr1.models.hf_mapping import LMShape  # noqa: E402  (the model's own shape type)
from dvr1.models.qwen2_5_vl import lm_shape  # noqa: E402  (HF config -> LMShape)

GIB = 2 ** 30
# memory as nvidia-smi reports it (MiB) for the 80 GB H100 / A100 and the 141 GB H200
GPUS = {"h100": 81559, "a100-80": 81920, "h200": 143771}


# ---------------------------------------------------------------------------------------------------------------
# parameter counts


def lm_param_counts(m: LMShape) -> dict:
    """Parameter counts of megatron-core's ``GPTModel`` for this shape (local or TE spec alike).

    Returns a dict: ``embedding`` (vocab x hidden), ``layer_sharded`` (per layer, split over TP: QKV weight + bias,
    attention output projection, SwiGLU fc1 (gate+up) and fc2), ``layer_gemm`` (the GEMM weights of
    ``layer_sharded``, the ones TE runs in FP8), ``layer_replicated`` (the two RMSNorm weights), ``final_norm``,
    ``output`` (0 when tied), ``total``.
    """
    h, q, kv = m.hidden_size, m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    qkv_out = q + 2 * kv
    gemm = qkv_out * h + h * q + 2 * m.ffn_hidden_size * h + m.ffn_hidden_size * h
    layer_sharded = gemm + qkv_out  # + QKV bias
    counts = dict(embedding=m.vocab_size * h, layer_sharded=layer_sharded, layer_gemm=gemm, layer_replicated=2 * h,
                  final_norm=h, output=0 if m.tie_word_embeddings else m.vocab_size * h)
    counts["total"] = (counts["embedding"] + m.num_layers * (layer_sharded + 2 * h) + h + counts["output"])
    return counts


def vision_param_count(vision_config) -> int:
    """Parameters of HF's ``Qwen2_5_VisionTransformerPretrainedModel``: Conv3d patch embedding (no bias), ``depth``
    blocks (2 RMSNorms, fused QKV + bias, output projection + bias, SwiGLU gate/up/down + biases) and the patch
    merger (RMSNorm, 2-layer MLP from ``hidden * merge**2`` to ``out_hidden_size``)."""
    v = vision_config
    c, f, o = v.hidden_size, v.intermediate_size, v.out_hidden_size
    patch = v.in_channels * v.temporal_patch_size * v.patch_size ** 2 * c
    block = 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + 2 * (c * f + f) + (f * c + c)
    m = c * v.spatial_merge_size ** 2
    merger = c + (m * m + m) + (m * o + o)
    return patch + v.depth * block + merger


def stage_params(m: LMShape, tp: int, pp: int, stage: int) -> dict:
    """Language-model parameters held by ONE GPU of pipeline stage ``stage`` (0-based) at TP=``tp``.

    Returns ``{"params": n, "gemm": n_gemm}`` (``gemm``: decoder GEMM weights on this GPU). Layers are split evenly
    (``layers % pp == 0`` required, as dvr1.train.job.build_policy). With tied embeddings and PP > 1 the last stage
    holds its own copy of the embedding as the output layer (megatron-core shares it across the first/last stage).
    Raises ValueError for an uneven split or a vocabulary / head count not divisible by TP.
    """
    if m.num_layers % pp:
        raise ValueError(f"parallel.pp={pp} does not divide the model's {m.num_layers} layers")
    for name, n in (("vocab", m.vocab_size), ("heads", m.num_heads), ("kv_heads", m.num_kv_heads),
                    ("ffn", m.ffn_hidden_size)):
        if n % tp and not (name == "kv_heads" and tp % n == 0):
            raise ValueError(f"parallel.tp={tp} does not divide the model's {name}={n}")
    c = lm_param_counts(m)
    per = m.num_layers // pp
    n = per * (c["layer_sharded"] / tp + c["layer_replicated"])
    if stage == 0:
        n += c["embedding"] / tp
    if stage == pp - 1:
        n += c["final_norm"]
        if not m.tie_word_embeddings or pp > 1:
            n += c["embedding"] / tp  # output layer (or the tied copy on the last stage)
    return {"params": n, "gemm": per * c["layer_gemm"] / tp}


# ---------------------------------------------------------------------------------------------------------------
# bytes per parameter (Megatron-LM mixed-precision Adam)


def bytes_per_param(params_dtype: str = "bfloat16", distributed_optimizer: bool = False, dp: int = 1) -> float:
    """Weights + gradients + Adam states, bytes per parameter (Megatron-LM README, "Distributed Optimizer").

    bfloat16 params (fp32 grads, as dvr1's DDP uses ``grad_reduce_in_fp32=True``): 2 (param) + 4 (grad) + 4 (fp32
    main param) + 4 + 4 (Adam m, v) = 18; with the distributed optimizer the 12 bytes of fp32 main param and Adam
    states are sharded over DP: 6 + 12/DP. float32 params: 4 + 4 + 4 + 4 = 16, distributed 8 + 8/DP.
    Raises ValueError for another dtype or dp < 1.
    """
    if dp < 1:
        raise ValueError(f"data-parallel size must be >= 1, got {dp}")
    if params_dtype == "bfloat16":
        return 6 + 12 / dp if distributed_optimizer else 18.0
    if params_dtype == "float32":
        return 8 + 8 / dp if distributed_optimizer else 16.0
    raise ValueError(f"model.dtype={params_dtype!r}: must be bfloat16 or float32")


def fp8_extra_bytes_per_gemm_param(fp8: bool, fp8_param: bool) -> float:
    """Extra bytes per decoder GEMM weight under TransformerEngine FP8: the cached FP8 weight and its transpose (2)
    without ``fp8_param``; with ``fp8_param`` the FP8 data + transpose replace the bf16 weight (net 0)."""
    return 2.0 if fp8 and not fp8_param else 0.0


# ---------------------------------------------------------------------------------------------------------------
# activations (Korthikanti et al. 2022, Table 2, generalised)


def layer_activation_bytes(s: int, b: int, h: int, a: int, t: int = 1, *, sp: bool = False,
                           recompute: Optional[str] = None, kv_heads: Optional[int] = None,
                           head_dim: Optional[int] = None, ffn: Optional[int] = None, gated: bool = False,
                           dropout: bool = True, flash: bool = False, fp8: bool = False) -> float:
    """Activation bytes one transformer layer keeps for backward, per GPU, for ONE micro-batch.

    Args: ``s`` sequence length (tokens), ``b`` micro-batch size (sequences), ``h`` hidden, ``a`` attention heads,
    ``t`` TP size, ``sp`` sequence parallel, ``recompute`` None | "selective" (attention core recomputed) | "full"
    (only the layer input kept), ``kv_heads`` (GQA; default ``a``), ``head_dim`` (default h/a), ``ffn`` (default 4h),
    ``gated`` (SwiGLU: fc1 outputs 2*ffn), ``dropout`` (attention + hidden dropout masks), ``flash`` (fused
    attention: no ``s x s`` tensors kept), ``fp8`` (GEMM inputs kept as FP8, 1 byte).

    With the paper's GPT (``kv_heads=a``, ``ffn=4h``, not gated, dropout, no flash) this is Table 2 exactly:
    ``sbh(34 + 5as/h)`` (no parallelism), ``sbh(10 + 24/t + 5as/(ht))`` (TP), ``sbh/t (34 + 5as/h)`` (TP + SP),
    ``34 sbh/t`` (TP + SP + selective), and ``2 sbh`` (full recompute; ``/t`` with SP).

    Terms (16-bit activations, 1-byte masks; paper §4.1): replicated over TP unless SP — two RMSNorm inputs (4sbh),
    QKV-GEMM input (2sbh), fc1 input (2sbh), two dropout masks (2sbh); split over TP — Q and K (2sb(aD + gD)),
    V (2sb gD), output-projection input (2sb aD), fc1 output (2sb ffn, x2 gated), fc2 input (2sb ffn), and without
    fused attention the softmax output (2as²b) plus, with dropout, its mask (as²b) and output (2as²b).
    """
    d = head_dim or h // a
    g = kv_heads or a
    f = ffn or 4 * h
    lin = 1 if fp8 else 2  # bytes of a GEMM input kept for backward
    if recompute == "full":
        return 2 * s * b * h / (t if sp else 1)
    if recompute not in (None, "selective"):
        raise ValueError(f"recompute={recompute!r}: must be None, 'selective' or 'full'")
    replicated = s * b * (2 * 2 * h + lin * h + lin * h + (2 * h if dropout else 0))
    split = s * b * (2 * (a * d + g * d) + 2 * g * d + lin * a * d + 2 * f * (2 if gated else 1) + lin * f)
    if not flash and recompute is None:
        split += a * s * s * b * (5 if dropout else 2)
    return replicated / (t if sp else 1) + split / t


# ---------------------------------------------------------------------------------------------------------------
# the plan


@dataclass
class Setup:
    """Everything the plan depends on (read from the YAML by :func:`setup_from_config`)."""

    shape: LMShape
    vision_params: int
    tp: int
    pp: int
    world: int
    dtype: str = "bfloat16"
    fp8: bool = False
    fp8_param: bool = False
    distributed_optimizer: bool = False
    sequence_parallel: bool = False
    recompute: Optional[str] = None
    seq_len: int = 4096
    micro_batch: int = 1
    micro_batches: int = 64  # per step per DP rank (1F1B in-flight count = min(PP - stage, this))
    reference: bool = True
    packing: bool = False  # model.packing: a micro-batch's sequences end to end, no padding (THD / block-diagonal)
    # tokens of the largest packed micro-batch (packing) / longest sequence of a step (padding), from a length
    # distribution (:func:`length_stats`); None = the hard bounds micro_batch x seq_len / seq_len
    packed_tokens: Optional[float] = None
    padded_seq: Optional[float] = None
    lengths: Optional[dict] = None  # the length_stats the two above came from (printed)
    offload: bool = False  # rollout.offload_trainer_state: grads + optimizer state (+ weights under vLLM) on host
    fused_logprobs: bool = False  # model.fused_logprobs: output layer fused into the chunked log-prob reduction
    logprob_chunk: int = 1024  # model.logprob_chunk: tokens per chunk of the fused reduction
    flash: bool = True  # TE spec: fused attention
    gated_fused: bool = True  # TE spec: fused SwiGLU keeps only the fc1 output
    vllm: bool = True
    vllm_tp: int = 8
    vllm_util: float = 0.4
    vllm_sleep: bool = True
    vllm_reserve_gib: float = 2.0
    sequences_per_step: int = 64  # prompts x group size
    group_size: int = 8  # rollout.group_size: responses per prompt (one vLLM request)
    gpu_gib: float = GPUS["h100"] / 1024
    overhead_gib: float = 4.0

    @property
    def dp(self) -> int:
        return self.world // (self.tp * self.pp)

    def microbatch_shape(self) -> tuple:
        """``(s, b)`` of one training micro-batch: padded, ``(longest sequence of the step, micro_batch rows)``;
        packed, ``(sum of the rows' real lengths, 1)`` -- one THD sequence (TE) / one block-diagonal row (local)."""
        if self.packing:
            return (self.micro_batch * self.seq_len if self.packed_tokens is None else self.packed_tokens), 1
        return (self.seq_len if self.padded_seq is None else self.padded_seq), self.micro_batch


def logits_bytes(st: Setup) -> float:
    """Bytes of logits one last-stage GPU holds for the log-prob backward of one micro-batch (16-bit activations).

    Unfused (``vocab_parallel_logprobs`` on the output layer's logits): the logits ``[s, b, vocab/TP]``, 2 bytes
    each. Fused (``fused_linear_logprobs``): per ``min(logprob_chunk, s*b)`` tokens, the bf16 GEMM buffer (2 bytes,
    it keeps the last chunk's logits from forward to backward) + two fp32 scratches (4 + 4 bytes: forward's z - max
    and entropy exp; backward needs one) of ``[chunk, vocab/TP]``. Raises ValueError for a fused chunk < 1.
    """
    s, b = st.microbatch_shape()
    tokens, v_local = s * b, st.shape.vocab_size / st.tp
    if not st.fused_logprobs:
        return 2 * tokens * v_local
    if st.logprob_chunk < 1:
        raise ValueError(f"model.logprob_chunk={st.logprob_chunk}: must be >= 1 tokens")
    return (2 + 4 + 4) * min(st.logprob_chunk, tokens) * v_local


def _stage_activations(st: Setup, stage: int) -> float:
    m = st.shape
    s, b = st.microbatch_shape()
    per_layer = dict(s=s, b=b, h=m.hidden_size, a=m.num_heads, t=st.tp, sp=st.sequence_parallel,
                     kv_heads=m.num_kv_heads, head_dim=m.head_dim, ffn=m.ffn_hidden_size, gated=True, dropout=False,
                     flash=st.flash, fp8=st.fp8)
    stored = layer_activation_bytes(recompute=st.recompute, **per_layer)
    if not st.gated_fused and st.recompute != "full":
        stored += 2 * s * b * m.ffn_hidden_size / st.tp  # unfused SwiGLU also keeps silu(gate)
    layers = m.num_layers // st.pp
    in_flight = max(1, min(st.pp - stage, st.micro_batches))
    total = in_flight * layers * stored
    if st.recompute == "full":  # one layer re-materialised at a time during backward
        total += layer_activation_bytes(recompute=None, **per_layer)
    if stage == st.pp - 1:
        total += output_input_bytes(st) + logits_bytes(st)
    return total


def output_input_bytes(st: Setup) -> float:
    """Bytes the last stage keeps of the final norm's and the output layer's inputs (bf16, one micro-batch).

    The final RMSNorm's input is ``[s/TP, b, h]`` under SP (``[s, b, h]`` without). The output layer's input: the
    unfused path's ``ColumnParallelLinear`` under SP keeps its sequence-sharded input and all-gathers it again in
    backward (megatron ``tensor_parallel/layers.py``, ``LinearWithGradAccumulationAndAsyncCommunication``):
    ``2sbh/TP``; the fused log-prob path gets the hidden states already all-gathered
    (``gather_from_sequence_parallel_region`` in ``Qwen25VLPolicy.forward(return_hidden=True)``) and keeps that
    ``[s, b, h]`` tensor for its backward (``_FusedLinearLogprobs.forward``'s ``save_for_backward(hidden, ...)``):
    ``2sbh`` whether SP is on or not."""
    s, b = st.microbatch_shape()
    sbh = s * b * st.shape.hidden_size
    sp = st.tp if st.sequence_parallel else 1
    return 2 * sbh / sp + 2 * sbh / (1 if st.fused_logprobs else sp)


def kv_bytes_per_token(m: LMShape, vllm_tp: int, kv_bytes: int = 2) -> float:
    """vLLM KV cache per token on one GPU: K and V for every layer, the KV heads split over vLLM's TP (replicated
    when TP > kv_heads)."""
    return 2 * m.num_layers * max(1, m.num_kv_heads // vllm_tp) * m.head_dim * kv_bytes


def offloaded_bytes_per_param(st: Setup) -> dict:
    """Bytes per trainable parameter that ``rollout.offload_trainer_state`` keeps off the GPU (dvr1/train/offload.py),
    at the two moments of the rollout phase (dvr1/train/rl.py ``RLTrainer.step``):

    - ``refit``: after the update, ``offload(model, optimizer)`` frees the fp32 grad buffers and moves the optimizer
      state (Adam m, v and the fp32 main params) to host: :func:`bytes_per_param` minus the weights (bf16:
      4 + 12 = 16, distributed 4 + 12/DP; fp32: 4 + 8, distributed 4 + 8/DP); the weights stay for the refit
      (``sync_weights`` wakes vLLM and copies them into it);
    - ``generate``: the next step's ``offload(..., weights=True)`` (only with ``rollout.engine=vllm``: the engine
      holds its own copy) moves the weights too: all of :func:`bytes_per_param`.

    Both 0 without offload. The rollout phase's peak is the larger resident set, the refit's."""
    if not st.offload:
        return {"refit": 0.0, "generate": 0.0}
    bpp = bytes_per_param(st.dtype, st.distributed_optimizer, st.dp)
    weights = 2 if st.dtype == "bfloat16" else 4
    return {"refit": bpp - weights, "generate": bpp if st.vllm else bpp - weights}


def plan(st: Setup) -> dict:
    """Per-stage memory rows (bytes) and the verdict. Returns ``{"stages": [...], "rows": {name: [bytes per stage]},
    "phases": {...}, "vllm": {...}, "fits": bool, "headroom": bytes, "verdict": str}``. Raises ValueError for a
    layout that does not divide (world by TP x PP, layers by PP, heads/vocab by TP, vLLM-TP > world)."""
    if st.world % (st.tp * st.pp):
        raise ValueError(f"world size {st.world} is not divisible by tp*pp={st.tp}*{st.pp}")
    if st.vllm and (st.vllm_tp < 1 or st.world % st.vllm_tp):
        raise ValueError(f"rollout.tensor_parallel_size={st.vllm_tp} must divide the world size {st.world}")
    m, dp = st.shape, st.dp
    stages = sorted({0, st.pp // 2, st.pp - 1})
    names = {0: "all", st.pp // 2: "all"} if st.pp == 1 else {0: "first", st.pp // 2: f"middle({st.pp // 2})",
                                                             st.pp - 1: "last"}
    rows: dict = {k: [] for k in ("params (B)", "weights+grads+Adam", "FP8 weight copies", "reference policy",
                                  "vision tower (frozen)", "activations", "vLLM budget (awake)", "overhead")}
    if st.offload:
        rows["offloaded in rollout (-)"] = []
    wdt = 2 if st.dtype == "bfloat16" else 4
    bpp = bytes_per_param(st.dtype, st.distributed_optimizer, dp)
    off = offloaded_bytes_per_param(st)["refit"]
    vllm_budget = st.vllm_util * st.gpu_gib * GIB if st.vllm else 0.0
    persistent, training, rollout = [], [], []
    for k in stages:
        p = stage_params(m, st.tp, st.pp, k)
        rows["params (B)"].append(p["params"] / 1e9)
        states = p["params"] * bpp
        fp8c = p["gemm"] * fp8_extra_bytes_per_gemm_param(st.fp8, st.fp8_param)
        ref = p["params"] * wdt if st.reference else 0.0
        vis = (st.vision_params * wdt * (2 if st.reference else 1)) if k == 0 else 0.0
        act = _stage_activations(st, k)
        over = st.overhead_gib * GIB
        for name, v in (("weights+grads+Adam", states), ("FP8 weight copies", fp8c), ("reference policy", ref),
                        ("vision tower (frozen)", vis), ("activations", act), ("vLLM budget (awake)", vllm_budget),
                        ("overhead", over)):
            rows[name].append(v)
        if st.offload:
            rows["offloaded in rollout (-)"].append(p["params"] * off)
        keep = states + fp8c + ref + vis + over
        keep_roll = keep - p["params"] * off
        persistent.append(keep_roll)
        training.append(keep + act + (0.0 if st.vllm_sleep else vllm_budget))
        rollout.append(keep_roll + vllm_budget)
    gpu = st.gpu_gib * GIB
    vllm = {}
    if st.vllm:
        weights = (lm_param_counts(m)["total"] + st.vision_params) * 2 / st.vllm_tp  # bf16 engine weights
        kv = vllm_budget - weights - st.vllm_reserve_gib * GIB
        per_tok = kv_bytes_per_token(m, st.vllm_tp)
        engines = st.world // st.vllm_tp
        # every sequence of the step's DP replica at full length (prompt + max_new_tokens), the check asked of each
        # engine; under PP the replica's prompts are dealt out over the stages' engines (dvr1.parallel.grid.pp_split,
        # whole prompts of group_size responses), so one engine generates ceil(prompts / PP) x G of them (pp_share)
        step_tokens = math.ceil(st.sequences_per_step / dp) * st.seq_len
        prompts = math.ceil(st.sequences_per_step / dp / st.group_size)
        share = math.ceil(prompts / st.pp) * st.group_size * st.seq_len
        vllm = dict(weights=weights, kv=kv, kv_tokens=max(0.0, kv) / per_tok, per_token=per_tok, engines=engines,
                    concurrent=max(0.0, kv) / per_tok / st.seq_len,
                    needed=math.ceil(st.sequences_per_step / dp), step_tokens=step_tokens,
                    step_kv=step_tokens * per_tok, holds_step=max(0.0, kv) >= step_tokens * per_tok,
                    pp_share_tokens=share, pp_share_kv=share * per_tok)
    peak_train, peak_roll = max(training), max(rollout)
    worst = max(peak_train, peak_roll)
    where = stages[(training if peak_train >= peak_roll else rollout).index(worst)]
    phase = "training" if peak_train >= peak_roll else "rollout"
    fits = worst <= gpu and (not st.vllm or vllm["kv"] > 0)
    max_util = (gpu - max(persistent)) / gpu
    if not st.vllm:
        tail = ""
    elif vllm["kv"] <= 0:
        tail = (f"; vLLM's {st.vllm_util:.2f} x GPU does not even hold its weights "
                f"({vllm['weights'] / GIB:.1f} GiB) + reserve: raise rollout.gpu_memory_utilization or its TP")
    else:
        tail = (f"; vLLM KV cache {vllm['kv'] / GIB:.1f} GiB = {vllm['concurrent']:.0f} full-length sequences per "
                f"engine ({vllm['needed']} per step per engine: "
                f"{'holds' if vllm['holds_step'] else 'does NOT hold'} the whole step's rollouts, "
                f"{vllm['step_kv'] / GIB:.1f} GiB)")
    stage_name = "the" if st.pp == 1 else names[where]
    pct = 100 * (gpu - worst) / gpu
    if fits:
        verdict = (f"FITS: peak {worst / GIB:.1f} of {st.gpu_gib:.1f} GiB ({phase} phase, {stage_name} PP stage), "
                   f"headroom {(gpu - worst) / GIB:.1f} GiB ({pct:.0f} %){tail}")
    else:
        verdict = (f"DOES NOT FIT: peak {worst / GIB:.1f} of {st.gpu_gib:.1f} GiB ({phase} phase, {stage_name} PP "
                   f"stage), over by {(worst - gpu) / GIB:.1f} GiB{tail}")
    if st.vllm:
        verdict += f"; largest rollout.gpu_memory_utilization that fits: {max(0.0, max_util):.2f}"
    return dict(stages=[names[k] for k in stages], rows=rows,
                phases={"training": training, "rollout": rollout}, vllm=vllm, fits=fits, headroom=gpu - worst,
                verdict=verdict)


def format_plan(st: Setup, result: dict) -> str:
    """The table (GiB unless noted) and the verdict line, as printed by the CLI."""
    m = st.shape
    head = (f"Qwen2.5-VL LM {lm_param_counts(m)['total'] / 1e9:.2f}B + vision {st.vision_params / 1e9:.2f}B | "
            f"{st.world} GPUs = TP {st.tp} x PP {st.pp} x DP {st.dp} | {st.dtype}"
            f"{' + FP8' + (' (fp8_param)' if st.fp8_param else '') if st.fp8 else ''} | "
            f"dist-opt {'on' if st.distributed_optimizer else 'off'} | SP {'on' if st.sequence_parallel else 'off'} | "
            f"recompute {st.recompute or 'none'} | "
            f"{f'fused log-probs (chunk {st.logprob_chunk})' if st.fused_logprobs else 'logits kept'} | "
            f"seq {st.seq_len} x micro-batch {st.micro_batch}, "
            f"{st.micro_batches} micro-batches/step | packing {'on' if st.packing else 'off'} | "
            f"offload {'on' if st.offload else 'off'} | GPU {st.gpu_gib:.1f} GiB")
    vl = (f"vLLM: TP {st.vllm_tp}, gpu_memory_utilization {st.vllm_util:.2f}, sleep mode "
          f"{'on' if st.vllm_sleep else 'off'}" if st.vllm else "vLLM: off (native sampler)")
    w = max(len(n) for n in result["rows"]) + 2
    cols = result["stages"]
    lines = [head, vl]
    s, b = st.microbatch_shape()
    if st.lengths:
        L = st.lengths
        lines.append(f"lengths ({L['source']}): {L['sequences']} sequences; tokens per micro-batch padded "
                     f"{L['padded_mean']:.0f} mean / {L['padded_peak']:.0f} peak, packed {L['packed_mean']:.0f} mean / "
                     f"{L['packed_peak']:.0f} peak; padding {100 * L['padding_fraction']:.0f} % of padded tokens")
    lines.append(f"activations counted for a micro-batch of {s * b:.0f} tokens "
                 f"({'packed' if st.packing else 'padded'}: s {s:.0f} x b {b})")
    lines += ["", f"{'per GPU (GiB)':<{w}}" + "".join(f"{c:>12}" for c in cols)]
    for name, vals in result["rows"].items():
        fmt = (lambda v: f"{v:12.2f}") if name == "params (B)" else (lambda v: f"{v / GIB:12.1f}")
        if name == "offloaded in rollout (-)":
            fmt = lambda v: f"{-v / GIB:12.1f}"  # noqa: E731
        lines.append(f"{name:<{w}}" + "".join(fmt(v) for v in vals))
    lines.append("-" * (w + 12 * len(cols)))
    for phase in ("training", "rollout"):
        lines.append(f"{'peak, ' + phase + ' phase':<{w}}" + "".join(f"{v / GIB:12.1f}"
                                                                      for v in result["phases"][phase]))
    if result["vllm"]:
        v = result["vllm"]
        lines.append(f"vLLM per GPU: weights {v['weights'] / GIB:.1f} GiB, KV cache {v['kv'] / GIB:.1f} GiB "
                     f"({v['kv_tokens']:.0f} tokens at {v['per_token'] / 1024:.0f} KiB/token), {v['engines']} engines")
        lines.append(f"step's rollouts per engine: {v['needed']} sequences x {st.seq_len} tokens = "
                     f"{v['step_tokens']} tokens = {v['step_kv'] / GIB:.1f} GiB of KV cache"
                     f" ({'held' if v['holds_step'] else 'NOT held'}; one PP stage's share: "
                     f"{v['pp_share_tokens']} tokens = {v['pp_share_kv'] / GIB:.1f} GiB)")
    if st.packing and st.packed_tokens is not None:  # the distribution's peak is not a bound: show the bound too
        bound = plan(Setup(**{**st.__dict__, "packed_tokens": None}))
        lines.append(f"packing bound: a micro-batch of {st.micro_batch} longest rows ({st.micro_batch * st.seq_len} "
                     f"tokens) would make the training phase {max(bound['phases']['training']) / GIB:.1f} GiB")
    lines += ["", result["verdict"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# config -> Setup


def _sel(cfg, key, default):
    from omegaconf import OmegaConf

    v = OmegaConf.select(cfg, key, default=None)
    return default if v is None else v


def _beta(cfg) -> float:
    """`algo.beta`, or its algorithm's default when unset (dvr1.rl.losses.ALGO_DEFAULTS; reg_grpo's 0.1)."""
    from dvr1.rl.losses import ALGO_DEFAULTS

    beta = _sel(cfg, "algo.beta", None)
    if beta is not None:
        return float(beta)
    return ALGO_DEFAULTS.get(_sel(cfg, "algo.name", "reg_grpo"), {}).get("beta", 0.1)


def video_tokens(num_frames: int, max_pixels: int, merge: int = 2, patch: int = 14, temporal: int = 2) -> int:
    """Upper bound of Qwen2.5-VL video tokens: ceil(frames / temporal_patch) x (max_pixels / (28 x 28))."""
    return math.ceil(num_frames / temporal) * (max_pixels // (patch * merge) ** 2)


# ---------------------------------------------------------------------------------------------------------------
# sequence lengths: padded vs packed micro-batches

# Named length distributions: video durations (seconds, uniform within each (lo, hi, weight) range) turned into video
# tokens by the config's own frame sampling; the text prompt is ``prompt_tokens``; each response is uniform in
# [1, rollout.max_new_tokens] (an assumption: RL responses spread over the whole budget).
LENGTH_DISTS = {
    # Video-MME (Fu et al. 2024, arXiv:2405.21075, §2): 900 videos, 300 each short (< 2 min), medium (4-15 min) and
    # long (30-60 min); the short range is taken from 10 s
    "videomme": dict(durations=[(10.0, 120.0, 1), (240.0, 900.0, 1), (1800.0, 3600.0, 1)],
                     source="Video-MME durations, responses uniform"),
    # clips of a few seconds to ten minutes, log-uniform (the spread the issue's packing benchmark asks for)
    "seconds-to-minutes": dict(durations=[(2.0, 600.0, 1)], log=True,
                               source="durations log-uniform 2 s - 10 min, responses uniform"),
}


def video_tokens_for_duration(duration_s: float, num_frames: int, fps: float, max_frames: int, max_pixels: int,
                              source_fps: float = 30.0) -> int:
    """Video tokens of a clip of ``duration_s`` seconds: the frame count of dvr1's sampler
    (:func:`dvr1.data.video_io.sample_frame_indices`: ``num_frames`` when > 0, else ``fps`` capped at
    ``max_frames``) on a ``source_fps`` video, at ``max_pixels`` (:func:`video_tokens`, an upper bound)."""
    from dvr1.data.video_io import sample_frame_indices

    total = max(1, int(round(duration_s * source_fps)))
    n = len(sample_frame_indices(total, source_fps, num_frames=num_frames or None, fps=None if num_frames else fps,
                                 max_frames=max_frames))
    return video_tokens(n, max_pixels)


def simulate_lengths(name: str, steps: int, seqs_per_rank: int, group_size: int, *, prompt_tokens: int,
                     max_new_tokens: int, num_frames: int, fps: float, max_frames: int, max_pixels: int,
                     seed: int = 0) -> list:
    """``steps`` steps of one DP rank's sequence lengths (prompt + response tokens, groups of ``group_size`` rows
    sharing one prompt) drawn from :data:`LENGTH_DISTS[name]` with ``random.Random(seed)``. Returns a list of steps,
    each a list of ``seqs_per_rank`` ints. Raises ValueError for an unknown name."""
    import random

    if name not in LENGTH_DISTS:
        raise ValueError(f"--length-dist {name!r}: must be one of {', '.join(sorted(LENGTH_DISTS))}")
    d, rng = LENGTH_DISTS[name], random.Random(seed)
    ranges = d["durations"]
    out = []
    for _ in range(steps):
        step = []
        for _g in range(max(1, seqs_per_rank // group_size)):
            lo, hi, _w = rng.choices(ranges, weights=[r[2] for r in ranges])[0]
            dur = math.exp(rng.uniform(math.log(lo), math.log(hi))) if d.get("log") else rng.uniform(lo, hi)
            prompt = prompt_tokens + video_tokens_for_duration(dur, num_frames, fps, max_frames, max_pixels)
            step += [prompt + rng.randint(1, max_new_tokens) for _ in range(group_size)]
        out.append(step)
    return out


def load_lengths(path: str, seqs_per_rank: int) -> list:
    """A JSON file of sequence lengths -> steps of ``seqs_per_rank`` sequences (the last may be shorter).

    The file holds a list; each item is an int (prompt + response tokens of one sequence) or an object
    ``{"prompt": int, "response": int}``. Consecutive items form groups and micro-batches as the trainer forms them
    (rows in order). Raises ValueError naming the file and the item for anything else."""
    import json

    with open(path) as f:
        try:
            items = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty JSON list of lengths")
    lens = []
    for i, it in enumerate(items):
        if isinstance(it, dict) and set(it) == {"prompt", "response"}:
            n = it["prompt"] + it["response"] if all(isinstance(v, int) for v in it.values()) else None
        else:
            n = it if isinstance(it, int) and not isinstance(it, bool) else None
        if n is None or n < 1:
            raise ValueError(f"{path}: item {i}: expected a positive int or {{\"prompt\": int, \"response\": int}}, "
                             f"got {it!r}")
        lens.append(n)
    return [lens[i:i + seqs_per_rank] for i in range(0, len(lens), seqs_per_rank)]


def length_stats(steps: list, rows: int, source: str = "given") -> dict:
    """Tokens per training micro-batch, padded vs packed, over ``steps`` (lists of one rank's sequence lengths).

    Padded (dvr1.train.inputs.build_batch): every row of a step is right-padded to the step's longest sequence,
    so a micro-batch of ``r`` rows holds ``r x max(step)`` tokens. Packed (``model.packing``): the rows' real
    lengths end to end, ``sum(lengths of its rows)``. Micro-batches are consecutive runs of ``rows`` sequences.
    Returns ``padded_peak``/``packed_peak`` (largest micro-batch), ``padded_mean``/``packed_mean``, ``longest``
    (longest sequence), ``padding_fraction`` (1 - real / padded tokens), ``sequences``, ``source``."""
    if rows < 1:
        raise ValueError(f"rows per micro-batch must be >= 1, got {rows}")
    padded, packed = [], []
    for step in steps:
        S = max(step)
        for i in range(0, len(step), rows):
            mb = step[i:i + rows]
            padded.append(len(mb) * S)
            packed.append(sum(mb))
    return dict(padded_peak=max(padded), packed_peak=max(packed), padded_mean=sum(padded) / len(padded),
                packed_mean=sum(packed) / len(packed), longest=max(max(s) for s in steps),
                padding_fraction=1 - sum(packed) / sum(padded), sequences=sum(len(s) for s in steps), source=source)


def setup_from_config(cfg, hf_config, nodes: int, gpus_per_node: int, **kw) -> Setup:
    """Build a :class:`Setup` from a dvr1 YAML (OmegaConf) + the model's HF config. ``kw`` overrides fields
    (e.g. ``seq_len``, ``gpu_gib``, ``overhead_gib``). Fields absent from the YAML take the defaults in the module
    docstring. Sequence length = video tokens (video.num_frames, or video.max_frames when num_frames is 0, at
    video.max_pixels) + ``prompt_tokens`` (default 256) + rollout.max_new_tokens."""
    prompt_tokens = kw.pop("prompt_tokens", 256)
    lengths_file, length_dist = kw.pop("lengths", None), kw.pop("length_dist", None)
    length_steps = kw.pop("length_steps", 100)
    frames = int(_sel(cfg, "video.num_frames", 8)) or int(_sel(cfg, "video.max_frames", 16))
    seq = video_tokens(frames, int(_sel(cfg, "video.max_pixels", 112 * 112))) + prompt_tokens + int(
        _sel(cfg, "rollout.max_new_tokens", 64))
    fp8 = _sel(cfg, "model.fp8", None)
    rec = _sel(cfg, "model.recompute", None)
    world = nodes * gpus_per_node
    tp, pp = int(_sel(cfg, "parallel.tp", 1)), int(_sel(cfg, "parallel.pp", 1))
    seqs = int(_sel(cfg, "rl.prompts_per_step", 4)) * int(_sel(cfg, "rollout.group_size", 8))
    # sequences per microbatch: whole groups (rl.micro_batch_groups; 0 = the rank's whole batch in one microbatch)
    groups_mb = int(_sel(cfg, "rl.micro_batch_groups", 0))
    dp = max(1, world // (tp * pp))
    mb = groups_mb * int(_sel(cfg, "rollout.group_size", 8)) if groups_mb else max(1, seqs // dp)
    st = dict(
        shape=lm_shape(hf_config), vision_params=vision_param_count(hf_config.vision_config), tp=tp, pp=pp,
        world=world, dtype=_sel(cfg, "model.dtype", "float32"), fp8=fp8 not in (None, "", "none", False),
        fp8_param=bool(_sel(cfg, "model.fp8_param", False)),
        distributed_optimizer=bool(_sel(cfg, "parallel.distributed_optimizer", False)),
        sequence_parallel=bool(_sel(cfg, "parallel.sequence_parallel", False)),
        recompute=None if rec in (None, "", "none", False) else rec, seq_len=seq, micro_batch=mb,
        micro_batches=max(1, math.ceil(seqs / (mb * dp))), reference=_beta(cfg) > 0,
        fused_logprobs=bool(_sel(cfg, "model.fused_logprobs", False)),
        logprob_chunk=int(_sel(cfg, "model.logprob_chunk", 1024)),
        flash=_sel(cfg, "model.spec", "local") == "te", gated_fused=_sel(cfg, "model.spec", "local") == "te",
        vllm=_sel(cfg, "rollout.engine", "native") == "vllm", vllm_tp=int(_sel(cfg, "rollout.tensor_parallel_size", 1)),
        vllm_util=float(_sel(cfg, "rollout.gpu_memory_utilization", 0.4)),
        vllm_sleep=bool(_sel(cfg, "rollout.enable_sleep_mode", True)), sequences_per_step=seqs,
        group_size=int(_sel(cfg, "rollout.group_size", 8)),
        packing=bool(_sel(cfg, "model.packing", False)),
        offload=bool(_sel(cfg, "rollout.offload_trainer_state", False)))
    if lengths_file and length_dist:
        raise ValueError("give --lengths or --length-dist, not both")
    if lengths_file or length_dist:
        per_rank, G = max(1, seqs // dp), int(_sel(cfg, "rollout.group_size", 8))
        if lengths_file:
            steps, source = load_lengths(lengths_file, per_rank), os.path.basename(lengths_file)
        else:
            steps = simulate_lengths(length_dist, length_steps, per_rank, G, prompt_tokens=prompt_tokens,
                                     max_new_tokens=int(_sel(cfg, "rollout.max_new_tokens", 64)),
                                     num_frames=int(_sel(cfg, "video.num_frames", 8)),
                                     fps=float(_sel(cfg, "video.fps", 2.0)),
                                     max_frames=int(_sel(cfg, "video.max_frames", 16)),
                                     max_pixels=int(_sel(cfg, "video.max_pixels", 112 * 112)))
            source = f"{length_dist}: {LENGTH_DISTS[length_dist]['source']}, {length_steps} steps"
        L = length_stats(steps, mb, source)
        st.update(lengths=L, packed_tokens=L["packed_peak"], padded_seq=L["longest"])
    st.update(kw)
    return Setup(**st)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", required=True, help="dvr1 YAML (e.g. examples/qwen2_5_vl_72b.yaml)")
    p.add_argument("--preset", default=None, help="3B | 7B | 32B | 72B (default: model.path/config.json)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--gpu", default="h100", choices=sorted(GPUS), help="GPU memory preset (nvidia-smi MiB)")
    p.add_argument("--gpu-mem-gib", type=float, default=None, help="override the GPU memory (GiB)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: from the config)")
    p.add_argument("--prompt-tokens", type=int, default=256, help="text tokens of a prompt besides the video")
    p.add_argument("--overhead-gib", type=float, default=4.0)
    p.add_argument("--vllm-reserve-gib", type=float, default=2.0)
    p.add_argument("--lengths", default=None, help="JSON list of sequence lengths (ints or {prompt, response}): "
                   "padded vs packed micro-batch tokens from them")
    p.add_argument("--length-dist", default=None, choices=sorted(LENGTH_DISTS),
                   help="a named length distribution (video durations through the config's frame sampling)")
    p.add_argument("--length-steps", type=int, default=100, help="steps drawn from --length-dist")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. parallel.tp=4")
    a = p.parse_intermixed_args(argv)
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(a.config)
    if a.overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(a.overrides)))
    if a.preset:
        from dvr1.models.presets import preset_config

        hf = preset_config(a.preset)
    else:
        path = _sel(cfg, "model.path", "")
        if not path or not os.path.isfile(os.path.join(path, "config.json")):
            p.error(f"{a.config}: model.path={path!r} has no config.json; pass --preset 3B|7B|32B|72B")
        from transformers import AutoConfig

        hf = AutoConfig.from_pretrained(path)
    kw = dict(prompt_tokens=a.prompt_tokens, overhead_gib=a.overhead_gib, vllm_reserve_gib=a.vllm_reserve_gib,
              lengths=a.lengths, length_dist=a.length_dist, length_steps=a.length_steps,
              gpu_gib=a.gpu_mem_gib or GPUS[a.gpu] / 1024)
    if a.seq_len:
        kw["seq_len"] = a.seq_len
    try:
        st = setup_from_config(cfg, hf, a.nodes, a.gpus_per_node, **kw)
        result = plan(st)
    except ValueError as e:
        print(f"plan_memory: {e}", file=sys.stderr)
        return 2
    print(format_plan(st, result))
    return 0 if result["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
