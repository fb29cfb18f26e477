"""The policy: Qwen2.5-VL with a megatron-core `GPTModel` language model and Hugging Face's vision tower.

- Language model: megatron-core `GPTModel` with multimodal RoPE (`position_embedding_type="mrope"`), GQA
  (`num_query_groups`), QKV bias, SwiGLU, RMSNorm; the local layer spec on CPU, the TransformerEngine spec when
  `spec="te"` (GPU image only). Tensor/pipeline parallel through megatron-core's own layers.
- Vision tower: `transformers`' `Qwen2_5_VisionTransformerPretrainedModel` (patch embed, windowed ViT, merger),
  frozen by default as in DeepVideo-R1 (paper §4.1; `model.freeze_vision`); its output replaces the `<|video_pad|>`
  embeddings. `set_vision_trainable(True)` trains it with the language model: it is replicated on the TP ranks of the
  first PP stage, its parameters carry megatron's `average_gradients_across_tp_domain` flag (megatron-core 0.16.1
  `distributed/finalize_model_grads.py` `_allreduce_non_tensor_model_parallel_grads` averages their gradients over
  TP, so the replicas stay identical) and no `tensor_model_parallel` flag (the grad norm counts them once,
  `optimizer/clip_grads.py`); checkpoints then hold it under `visual.*` (`sharded_state_dict`).
- Loads from any Hugging Face Qwen2.5-VL checkpoint directory (config.json + safetensors, single or sharded).

Shapes: `input_ids` `[batch, seq]` int64; `position_ids` `[3, batch, seq]` int64 (see `dvr1.models.rope`);
`pixel_values_videos` `[num_patches, 3*2*14*14]` float32 (see `dvr1.data.processing.patchify`);
`video_grid_thw` `[num_videos, 3]` int64; logits `[batch, seq, vocab/tp]`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dvr1.models.hf_mapping import LMShape, hf_to_megatron
from dvr1.models.safetensors_io import SafetensorsFiles


@dataclass
class VLInfo:
    """Token ids and vision geometry the data path needs (from the HF config)."""

    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    merge_size: int
    patch_size: int
    temporal_patch_size: int
    tokens_per_second: float
    vocab_size: int
    mrope_rule: str = "qwen"  # dvr1.models.rope.get_rope_index(rule=...); set from model.mrope_rule


def load_hf_config(path: str):
    """`Qwen2_5_VLConfig` from a checkpoint directory. Raises FileNotFoundError naming the missing config.json."""
    from transformers import AutoConfig

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face Qwen2.5-VL checkpoint directory)")
    cfg = AutoConfig.from_pretrained(path)
    if cfg.model_type not in ("qwen2_5_vl",):
        raise ValueError(f"{path}/config.json: model_type {cfg.model_type!r} is not 'qwen2_5_vl'")
    return cfg


def vl_info(hf_config) -> VLInfo:
    v = hf_config.vision_config
    return VLInfo(
        video_token_id=hf_config.video_token_id,
        vision_start_token_id=hf_config.vision_start_token_id,
        vision_end_token_id=hf_config.vision_end_token_id,
        merge_size=v.spatial_merge_size,
        patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size,
        tokens_per_second=v.tokens_per_second,
        vocab_size=hf_config.text_config.vocab_size,
    )


def lm_shape(hf_config) -> LMShape:
    """The language model's `LMShape` from a ``Qwen2_5_VLConfig`` (its ``text_config``)."""
    t = hf_config.text_config
    return LMShape(
        num_layers=t.num_hidden_layers,
        num_heads=t.num_attention_heads,
        num_kv_heads=t.num_key_value_heads,
        head_dim=t.hidden_size // t.num_attention_heads,
        tie_word_embeddings=bool(hf_config.tie_word_embeddings or getattr(t, "tie_word_embeddings", False)),
        hidden_size=t.hidden_size,
        ffn_hidden_size=t.intermediate_size,
        vocab_size=t.vocab_size,
    )


def transformer_config(hf_config, tp: int = 1, pp: int = 1, params_dtype=torch.float32, **overrides):
    """megatron-core `TransformerConfig` equivalent to the HF text config (Qwen2 decoder with mrope)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    t = hf_config.text_config
    rope = t.rope_parameters
    kw = dict(
        num_layers=t.num_hidden_layers,
        hidden_size=t.hidden_size,
        ffn_hidden_size=t.intermediate_size,
        num_attention_heads=t.num_attention_heads,
        num_query_groups=t.num_key_value_heads,
        kv_channels=t.hidden_size // t.num_attention_heads,
        normalization="RMSNorm",
        layernorm_epsilon=t.rms_norm_eps,
        add_bias_linear=False,
        add_qkv_bias=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        mrope_section=list(rope["mrope_section"]),
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        use_cpu_initialization=not torch.cuda.is_available(),
        # megatron sets the TP attributes (tensor_model_parallel, partition_dim) inside its initialisers; grad-norm
        # de-duplication and TP gathers rely on them, so initialise (the checkpoint's weights overwrite it).
        perform_initialization=True,
        pipeline_dtype=params_dtype,
    )
    kw.update(overrides)
    return TransformerConfig(**kw)


def layer_spec(spec: str = "local"):
    """megatron-core layer spec: "local" (pure PyTorch modules, CPU) or "te" (TransformerEngine, GPU image).

    Raises:
        RuntimeError: for "te" when transformer_engine cannot be imported (it needs CUDA and cuDNN).
    """
    from megatron.core.models.gpt import gpt_layer_specs

    if spec == "local":
        return gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    if spec == "te":
        try:
            import transformer_engine  # noqa: F401
        except Exception as e:  # ImportError, or RuntimeError when CUDA/cuDNN libraries are missing
            raise RuntimeError(
                f"model.spec=te needs the transformer-engine package with CUDA (the GPU image, see Dockerfile); "
                f"importing it failed: {e}. Use model.spec=local on CPU."
            ) from e
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    raise ValueError(f"model.spec must be 'local' or 'te', got {spec!r}")


class Qwen25VLPolicy(torch.nn.Module):
    """Qwen2.5-VL policy (one pipeline stage): [frozen HF vision tower +] megatron-core GPTModel.

    Args:
        hf_config: `Qwen2_5_VLConfig`.
        pre_process / post_process: whether this PP stage holds the embedding (+ vision tower) / the output layer.
        spec: "local" or "te" (see `layer_spec`).
    """

    def __init__(self, hf_config, tp: int = 1, pp: int = 1, pre_process: bool = True, post_process: bool = True,
                 params_dtype=torch.float32, spec: str = "local", **config_overrides):
        super().__init__()
        from megatron.core.models.gpt import GPTModel

        self.hf_config = hf_config
        self.info = vl_info(hf_config)
        self.shape = lm_shape(hf_config)
        self.config = transformer_config(hf_config, tp, pp, params_dtype, **config_overrides)
        if self.config.sequence_parallel and spec == "local":
            from megatron_patches import sequence_parallel_norm

            sequence_parallel_norm.apply()  # the local norm asserts under SP without it (torch_norm.py:32)
        self.spec = spec
        self.pre_process, self.post_process = pre_process, post_process
        self.visual = None
        self.vision_trainable = False
        # bumped whenever the tower's weights change (an optimizer step, a state load): caches of its output key on it
        self.vision_version = 0
        if pre_process:
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

            self.visual = Qwen2_5_VisionTransformerPretrainedModel._from_config(hf_config.vision_config)
            self.visual.requires_grad_(False)
            self.visual.eval()
        t = hf_config.text_config
        self.lm = GPTModel(
            config=self.config,
            transformer_layer_spec=layer_spec(spec),
            vocab_size=t.vocab_size,
            max_sequence_length=t.max_position_embeddings,
            pre_process=pre_process,
            post_process=post_process,
            share_embeddings_and_output_weights=self.shape.tie_word_embeddings,
            position_embedding_type="mrope",
            rotary_base=int(t.rope_parameters["rope_theta"]),
            # under SP the video features are merged first, then `embed` scatters (LLaVA: llava_model.py:222, 748)
            scatter_embedding_sequence_parallel=False,
        )
        self.model_type = self.lm.model_type  # megatron schedules read it

    # megatron schedules call this to hand a PP stage its input activations
    def set_input_tensor(self, input_tensor):
        self.lm.set_input_tensor(input_tensor)

    # megatron's finalize_model_grads syncs the tied embedding/output weight across PP stages through these
    @property
    def share_embeddings_and_output_weights(self) -> bool:
        return self.lm.share_embeddings_and_output_weights

    def shared_embedding_or_output_weight(self):
        return self.lm.shared_embedding_or_output_weight()

    def set_vision_trainable(self, trainable: bool) -> None:
        """Train (True) or freeze (False, the default) the vision tower and merger; call before wrapping the model in
        DDP / building the optimizer (both collect the parameters that require grad). A no-op on PP stages without
        the tower (it lives on the first stage only)."""
        self.vision_trainable = bool(trainable) and self.visual is not None
        if self.visual is None:
            return
        self.visual.requires_grad_(self.vision_trainable)
        for p in self.visual.parameters():
            # megatron averages these over TP after backward (module docstring); the replicas' grads are equal
            # already (the decoder input's gradient is TP all-reduced), this keeps them bit-identical
            p.average_gradients_across_tp_domain = self.vision_trainable
        self.visual.train(self.training and self.vision_trainable)

    def vision_updated(self) -> None:
        """Record that the tower's weights changed (called after each optimizer step that trains it)."""
        self.vision_version += 1

    # ---- checkpoints: the trained parts. The language model always; the vision tower only when it is trained (a
    # frozen one always comes from the HF checkpoint the run started from) --------------------------------------
    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None):
        """megatron-core dist_checkpointing view of the trainable part: the GPTModel under `lm.`, plus the vision
        tower under `visual.` when it is trained (replicated over TP and DP: one main replica, TP/DP rank 0 of the
        first stage, writes it; megatron-core `transformer/utils.py` `make_sharded_tensors_for_checkpoint`)."""
        out = self.lm.sharded_state_dict(prefix=f"{prefix}lm.", sharded_offsets=sharded_offsets, metadata=metadata)
        if self.vision_trainable:
            from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

            out.update(make_sharded_tensors_for_checkpoint(self.visual.state_dict(keep_vars=True),
                                                           f"{prefix}visual."))
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A state holding only `lm.*` (and `visual.*`) keys, a dist checkpoint, loads into the language model (and the
        vision tower); else as usual. Either way the vision version is bumped."""
        self.vision_updated()
        if state_dict and all(k.startswith(("lm.", "visual.")) for k in state_dict):
            vis = {k[len("visual."):]: v for k, v in state_dict.items() if k.startswith("visual.")}
            lm = {k[3:]: v for k, v in state_dict.items() if k.startswith("lm.")}
            if vis:
                if self.visual is None:
                    raise RuntimeError("visual.* tensors given to a pipeline stage without the vision tower")
                self.visual.load_state_dict(vis, strict=strict, assign=assign)
            return self.lm.load_state_dict(lm, strict=strict, assign=assign)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.visual is not None and not self.vision_trainable:
            self.visual.eval()  # frozen
        return self

    def encode_video(self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor) -> torch.Tensor:
        """The vision tower. `[num_patches, C*2*14*14]`, `[num_videos, 3]` -> `[num_video_tokens, hidden]` on the
        tower's device. Tracks gradients only when the tower is trained and grad mode is on."""
        param = next(self.visual.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.vision_trainable):
            out = self.visual(pixel_values_videos.to(device=param.device, dtype=param.dtype),
                              grid_thw=video_grid_thw.to(param.device))
        return getattr(out, "pooler_output", out)

    def embed(self, input_ids: torch.Tensor, video_embeds: torch.Tensor | None,
              video_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with video features scattered into the video positions. -> `[seq, batch, h]`, or
        under sequence parallel this rank's sequence shard `[seq/tp, batch, h]` (`seq` must then be a multiple of
        TP: `forward` pads to `padded_seq_len`).

        `video_mask` bool `[batch, seq]` marks the positions that take `video_embeds` (default: every
        `<|video_pad|>` token; pass it explicitly when responses are appended, since a sampled response may
        itself contain that token id, which then stays an ordinary embedding).

        Under SP the order is megatron LLaVA's (``models/multimodal/llava_model.py:222, 747-750``): the embedding
        without its SP scatter (``scatter_embedding_sequence_parallel=False``), the merge over the whole sequence,
        then ``tensor_parallel.scatter_to_sequence_parallel_region`` (backward: all-gather along the sequence).
        """
        emb = self.lm.embedding(input_ids=input_ids, position_ids=None)  # [s, b, h] (TP all-reduced)
        if video_embeds is not None:
            if video_mask is None:
                video_mask = input_ids == self.info.video_token_id
            n = int(video_mask.sum())
            if n != video_embeds.shape[0]:
                raise ValueError(f"{n} <|video_pad|> tokens but {video_embeds.shape[0]} video embeddings")
            # scatter in [b, s, h] order: video_embeds are in batch-row order (row 0's tokens first)
            emb = emb.transpose(0, 1).masked_scatter(video_mask.unsqueeze(-1), video_embeds.to(emb.dtype))
            emb = emb.transpose(0, 1).contiguous()
        if self.config.sequence_parallel:
            from megatron.core import tensor_parallel

            emb = tensor_parallel.scatter_to_sequence_parallel_region(emb)
            if self.config.clone_scatter_output_in_embedding:  # the shard is a view: free the whole (as megatron)
                emb = emb.clone()
        return emb

    # ---- sequence parallel ---------------------------------------------------------------------------------------
    def padded_seq_len(self, seq: int) -> int:
        """The length a forward of `seq` tokens runs at: under SP the next multiple of TP (megatron splits the
        sequence evenly, ``tensor_parallel/mappings.py:68-70`` asserts it), else `seq`. The pipeline schedule's
        ``seq_length`` must be this value (``pipeline_parallel/schedules.py:1965-1966`` divides it by TP)."""
        tp = self.config.tensor_model_parallel_size if self.config.sequence_parallel else 1
        return -(-seq // tp) * tp

    @contextmanager
    def sequence_parallel_off(self):
        """Run the policy with sequence parallel switched off (no-grad use only; a no-op without SP).

        The TP math is the same without SP (activations replicated over TP, an all-reduce after each row-parallel
        layer instead of reduce-scatter + all-gather), so the numbers agree with SP to rounding. The native sampler
        decodes in this mode: a decode step holds one token per row, which cannot be split over the sequence.
        Flips ``config.sequence_parallel`` of every config object in the model and the ``sequence_parallel``
        attribute megatron's parallel linears cache (``tensor_parallel/layers.py:912, 1151``); restored on exit.

        Raises: RuntimeError when entered with gradients enabled (the linears' cached backward communication,
            ``allreduce_dgrad``, stays that of SP).
        """
        if not self.config.sequence_parallel:
            yield
            return
        if torch.is_grad_enabled():
            raise RuntimeError("Qwen25VLPolicy.sequence_parallel_off() is for no-grad use (decoding): wrap the call "
                               "in torch.no_grad()")
        configs = {id(self.config): self.config}
        flipped = []
        for m in self.lm.modules():
            cfg = getattr(m, "config", None)
            if cfg is not None and getattr(cfg, "sequence_parallel", False):
                configs[id(cfg)] = cfg
            if getattr(m, "sequence_parallel", False) is True:
                flipped.append(m)
        try:
            for cfg in configs.values():
                cfg.sequence_parallel = False
            for m in flipped:
                m.sequence_parallel = False
            yield
        finally:
            for cfg in configs.values():
                cfg.sequence_parallel = True
            for m in flipped:
                m.sequence_parallel = True

    def forward(self, input_ids, position_ids, video_embeds=None, pixel_values_videos=None, video_grid_thw=None,
                attention_mask=None, inference_context=None, labels=None, runtime_gather_output=None,
                video_mask=None, return_hidden: bool = False, video_token_index=None, packed_seq_params=None):
        """Logits `[batch, seq, vocab/tp]` (or megatron's output on non-last PP stages / with `labels`);
        with `return_hidden` the last stage returns the final hidden states `[seq, batch, hidden]` instead.

        `video_embeds` `[num_video_tokens, hidden]` (precomputed by `encode_video`, in batch-row order) or
        `pixel_values_videos` + `video_grid_thw` to run the vision tower here (with gradients when it is trained);
        `video_token_index` int64 `[num_video_tokens]` then picks, for each video position in batch-row order, a row
        of the tower's output (rows sharing one clip encode it once). `position_ids` must cover positions
        [0, seq_end) when decoding with a static KV cache (megatron slices the rotary table).

        Sequence parallel (``config.sequence_parallel``): the inputs are right-padded to `padded_seq_len(seq)`
        (pad tokens after the last real one: causal attention keeps them out of every real position), the decoder
        runs on `[padded/tp, batch, hidden]` shards, and the last stage returns the same shapes as without SP:
        logits `[batch, seq, vocab/tp]` (the output layer all-gathers the sequence) or, with `return_hidden`, the
        hidden states all-gathered over the sequence by ``gather_from_sequence_parallel_region`` (backward:
        reduce-scatter, which sums the gradient over TP; pass ``sequence_parallel=True`` to
        `dvr1.parallel.logprobs.fused_linear_logprobs`). Non-last PP stages return their `[padded/tp, batch,
        hidden]` shard for the schedule to send.

        `packed_seq_params` (megatron-core `PackedSeqParams`, THD; TE spec only) / `attention_mask` (bool, True =
        masked): a packed row of several sequences, see `dvr1.parallel.packing`.

        Raises: ValueError for `inference_context` under SP (decode inside `sequence_parallel_off`).
        """
        seq = input_ids.shape[1]
        sp = self.config.sequence_parallel
        if sp:
            if inference_context is not None:
                raise ValueError("Qwen25VLPolicy.forward: inference_context under sequence parallel; decode inside "
                                 "policy.sequence_parallel_off()")
            pad = self.padded_seq_len(seq) - seq
            if pad:
                input_ids, position_ids, video_mask, attention_mask, labels = _pad_seq(
                    pad, input_ids, position_ids, video_mask, attention_mask, labels)
        decoder_input = None
        if self.pre_process:
            if video_embeds is None and pixel_values_videos is not None:
                video_embeds = self.encode_video(pixel_values_videos, video_grid_thw)
                if video_token_index is not None:
                    video_embeds = video_embeds[video_token_index]
            decoder_input = self.embed(input_ids, video_embeds, video_mask)
        if not return_hidden:
            out = self.lm(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                          decoder_input=decoder_input, labels=labels, inference_context=inference_context,
                          runtime_gather_output=runtime_gather_output, packed_seq_params=packed_seq_params)
            return out[:, :seq] if sp and self.post_process else out  # [b, s, vocab/tp] logits or [b, s] loss
        # the final-norm hidden states instead of logits: GPTModel returns them when post_process is off (its decoder
        # was built with the final norm, which stays); the output layer is then applied by the caller, fused with
        # the log-prob reduction (`output_weight`, `dvr1.parallel.logprobs.fused_linear_logprobs`)
        post, self.lm.post_process = self.lm.post_process, False
        try:
            hidden = self.lm(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                             decoder_input=decoder_input, inference_context=inference_context,
                             packed_seq_params=packed_seq_params)
        finally:
            self.lm.post_process = post
        if sp and post:
            from megatron.core import tensor_parallel

            hidden = tensor_parallel.gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True)
            hidden = hidden[:seq]
        return hidden

    def output_weight(self) -> torch.Tensor:
        """The output layer's weight shard `[vocab/tp, hidden]` (the word embeddings when tied)."""
        if self.lm.share_embeddings_and_output_weights:
            return self.lm.shared_embedding_or_output_weight()
        return self.lm.output_layer.weight


def _pad_seq(pad: int, input_ids, position_ids, video_mask, attention_mask, labels):
    """Right-pad the sequence dim by `pad` slots: token id 0, the last position repeated, no video, label 0;
    an explicit attention mask `[b, 1, s, s]` (True = masked) keeps the real rows as they are and lets each padding
    query see only itself (a fully masked row would be NaN)."""
    input_ids = F.pad(input_ids, (0, pad))
    position_ids = torch.cat([position_ids, position_ids[..., -1:].expand(*position_ids.shape[:-1], pad)], -1)
    if video_mask is not None:
        video_mask = F.pad(video_mask, (0, pad), value=False)
    if labels is not None:
        labels = F.pad(labels, (0, pad))
    if attention_mask is not None:
        s = attention_mask.shape[-1]
        attention_mask = F.pad(attention_mask, (0, pad, 0, pad), value=True)
        idx = torch.arange(s, s + pad, device=attention_mask.device)
        attention_mask[..., idx, idx] = False
    return input_ids, position_ids, video_mask, attention_mask, labels


# ---- loading -------------------------------------------------------------------------------------------------

def load_hf_weights(policy: Qwen25VLPolicy, path: str, tp_rank: int = 0, tp_size: int = 1,
                    layer_offset: int = 0) -> None:
    """Copy a HF Qwen2.5-VL checkpoint's weights into `policy` (this TP rank / PP stage), tensor by tensor.

    Raises:
        KeyError: a tensor the model needs is missing from the checkpoint.
        SafetensorsError: a tensor of a dtype other than F32/BF16/F16/F64, or a truncated file (weights are read
            with plain file reads, `dvr1.models.safetensors_io.SafetensorsFiles`: no mmap is held after loading).
        RuntimeError: a shape mismatch (names the parameter and both shapes), or a model parameter left unset.
    """
    reader = SafetensorsFiles(path)
    params = dict(policy.lm.named_parameters())
    n_local = len(policy.lm.decoder.layers)
    seen = set()
    te = policy.spec == "te"
    for name, t in hf_to_megatron(reader.get, policy.shape, tp_rank, tp_size,
                                  range(layer_offset, layer_offset + n_local),
                                  policy.pre_process, policy.post_process, te=te):
        if name not in params:
            raise RuntimeError(f"mapping produced {name!r}, which the megatron model does not have")
        p = params[name]
        if p.shape != t.shape:
            raise RuntimeError(f"{name}: checkpoint shard shape {tuple(t.shape)} != model shape {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(t)
        seen.add(name)
    missing = [n for n in params if n not in seen and not (n == "output_layer.weight" and policy.shape.tie_word_embeddings)]
    if missing:
        raise RuntimeError(f"parameters not loaded from {path}: {missing}")
    if policy.visual is not None:
        vis = {k[len("visual."):]: k for k in reader.keys() if k.startswith("visual.")}
        state = {k: reader.get(full) for k, full in vis.items()}
        policy.visual.load_state_dict(state, strict=True)
