"""The policy: Qwen2.5-VL with a megatron-core `GPTModel` language model and Hugging Face's vision tower.

- Language model: megatron-core `GPTModel` with multimodal RoPE (`position_embedding_type="mrope"`), GQA
  (`num_query_groups`), QKV bias, SwiGLU, RMSNorm; the local layer spec on CPU, the TransformerEngine spec when
  `spec="te"` (GPU image only). Tensor/pipeline parallel through megatron-core's own layers.
- Vision tower: `transformers`' `Qwen2_5_VisionTransformerPretrainedModel` (patch embed, windowed ViT, merger),
  frozen as in DeepVideo-R1 (paper §4.1); its output replaces the `<|video_pad|>` embeddings.
- Loads from any Hugging Face Qwen2.5-VL checkpoint directory (config.json + safetensors, single or sharded).

Shapes: `input_ids` `[batch, seq]` int64; `position_ids` `[3, batch, seq]` int64 (see `dvr1.models.rope`);
`pixel_values_videos` `[num_patches, 3*2*14*14]` float32 (see `dvr1.data.processing.patchify`);
`video_grid_thw` `[num_videos, 3]` int64; logits `[batch, seq, vocab/tp]`.
"""

from __future__ import annotations

import os
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
        if self.config.sequence_parallel and pre_process:
            # megatron's embedding reduce-scatters along the sequence before we could place the video features
            # (LLaVA turns that off and scatters after merging); not built here yet, and untestable on CPU
            raise NotImplementedError("parallel.sequence_parallel=true is not supported with video inputs yet: the "
                                      "video features must be merged before the sequence-parallel scatter")
        self.spec = spec
        self.pre_process, self.post_process = pre_process, post_process
        self.visual = None
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

    # ---- checkpoints: only the language model is trained, so only it is saved (the frozen vision tower always
    # comes from the HF checkpoint the run started from) --------------------------------------------------------
    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None):
        """megatron-core dist_checkpointing view of the trainable part: the GPTModel under `lm.`."""
        return self.lm.sharded_state_dict(prefix=f"{prefix}lm.", sharded_offsets=sharded_offsets, metadata=metadata)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A state holding only `lm.*` keys (a dist checkpoint) loads into the language model; else as usual."""
        if state_dict and all(k.startswith("lm.") for k in state_dict):
            return self.lm.load_state_dict({k[3:]: v for k, v in state_dict.items()}, strict=strict, assign=assign)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.visual is not None:
            self.visual.eval()  # frozen
        return self

    @torch.no_grad()
    def encode_video(self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor) -> torch.Tensor:
        """Frozen vision tower. `[num_patches, C*2*14*14]`, `[num_videos, 3]` -> `[num_video_tokens, hidden]`."""
        param = next(self.visual.parameters())
        out = self.visual(pixel_values_videos.to(device=param.device, dtype=param.dtype),
                          grid_thw=video_grid_thw.to(param.device))
        return getattr(out, "pooler_output", out)

    def embed(self, input_ids: torch.Tensor, video_embeds: torch.Tensor | None,
              video_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with video features scattered into the video positions. -> `[seq, batch, h]`.

        `video_mask` bool `[batch, seq]` marks the positions that take `video_embeds` (default: every
        `<|video_pad|>` token; pass it explicitly when responses are appended, since a sampled response may
        itself contain that token id, which then stays an ordinary embedding).
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
        return emb

    def forward(self, input_ids, position_ids, video_embeds=None, pixel_values_videos=None, video_grid_thw=None,
                attention_mask=None, inference_context=None, labels=None, runtime_gather_output=None,
                video_mask=None, return_hidden: bool = False, packed_seq_params=None):
        """Logits `[batch, seq, vocab/tp]` (or megatron's output on non-last PP stages / with `labels`);
        with `return_hidden` the last stage returns the final hidden states `[seq, batch, hidden]` instead.

        `video_embeds` `[num_video_tokens, hidden]` (precomputed by `encode_video`, in batch-row order) or
        `pixel_values_videos` + `video_grid_thw` to run the vision tower here. `position_ids` must cover
        positions [0, seq_end) when decoding with a static KV cache (megatron slices the rotary table).
        `packed_seq_params` (megatron-core `PackedSeqParams`, THD; TE spec only) / `attention_mask` (bool, True =
        masked): a packed row of several sequences, see `dvr1.parallel.packing`.
        """
        decoder_input = None
        if self.pre_process:
            if video_embeds is None and pixel_values_videos is not None:
                video_embeds = self.encode_video(pixel_values_videos, video_grid_thw)
            decoder_input = self.embed(input_ids, video_embeds, video_mask)
        if not return_hidden:
            return self.lm(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                           decoder_input=decoder_input, labels=labels, inference_context=inference_context,
                           runtime_gather_output=runtime_gather_output, packed_seq_params=packed_seq_params)
        # the final-norm hidden states instead of logits: GPTModel returns them when post_process is off (its decoder
        # was built with the final norm, which stays); the output layer is then applied by the caller, fused with
        # the log-prob reduction (`output_weight`, `dvr1.parallel.logprobs.fused_linear_logprobs`)
        post, self.lm.post_process = self.lm.post_process, False
        try:
            return self.lm(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                           decoder_input=decoder_input, inference_context=inference_context,
                           packed_seq_params=packed_seq_params)
        finally:
            self.lm.post_process = post

    def output_weight(self) -> torch.Tensor:
        """The output layer's weight shard `[vocab/tp, hidden]` (the word embeddings when tied)."""
        if self.lm.share_embeddings_and_output_weights:
            return self.lm.shared_embedding_or_output_weight()
        return self.lm.output_layer.weight


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
