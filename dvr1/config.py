"""Run configuration: one dataclass per section, loaded from YAML with command-line overrides (OmegaConf).

    cfg = load_config("examples/tiny_cpu.yaml", ["rl.steps=20", "algo.name=grpo"])

Unknown keys and wrongly-typed values fail with OmegaConf's message naming the key (e.g. `Key 'stepz' not in
'RLConfig'`); `validate` adds the project's own checks with messages naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from dvr1.rl.dynamic_sampling import METRICS as DYNAMIC_SAMPLING_METRICS
from dvr1.rl.losses import ALGORITHMS, LOSS_AGG_MODES
from dvr1.train.optim import LR_SCHEDULES


@dataclass
class DataConfig:
    # {train,val,test}.jsonl + videos. Your own records: read-only to dvr1. A new or empty directory (or one holding
    # dvr1's synthetic manifest.json): `dvr1 data` builds the synthetic set there (dvr1/data/build.py)
    root: str = "data/videoqa"
    seed: int = 0
    n_train: int = 400
    n_val: int = 48
    n_test: int = 120
    fps: float = 8.0
    size: int = 112
    # fail on the first malformed record / duplicate id / corrupt video / over-long prompt instead of reporting it
    # (log and <run_dir>/skipped.jsonl) and skipping it
    strict: bool = False
    # prompt template (dvr1/data/prompts.py format_question): auto (Video-R1's per problem type for an imported set,
    # i.e. a data.root whose manifest.json `dvr1 data import` wrote; else the synthetic set's §6 template) | dvr1 |
    # video_r1
    prompt: str = "auto"


@dataclass
class VideoConfig:
    # DeepVideo-R1's setting at 3B (SEED-Bench-R1; examples/paper_3b.yaml): num_frames=16, max_pixels=252*252=63504
    backend: str = "pyav"  # pyav | dali (DALI decoding; CPU operators here, mixed/GPU on clusters)
    num_frames: int = 8  # uniform sampling; set 0 to use fps-based sampling
    fps: float = 2.0
    max_frames: int = 16
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112


@dataclass
class ModelConfig:
    path: str = ""  # HF Qwen2.5-VL checkpoint dir; empty = <run_dir>/tiny_init made by `dvr1 make-tiny`
    spec: str = "local"  # local (CPU) | te (TransformerEngine, GPU image)
    dtype: str = "float32"  # float32 | bfloat16
    tokenizer_vocab: int = 2048  # tiny checkpoint only
    # tiny checkpoint only: text-only "reading" warm-up steps of its random LM on the training split's option lists
    # (dvr1.models.tiny.reading_warmup: "up is option B." ...), the stand-in for a real checkpoint's language
    # pretraining; 0 = none (docs/SEEING_POLICY.md)
    tiny_reading_steps: int = 0
    tiny_reading_lr: float = 3.0e-3  # its AdamW learning rate
    # tiny checkpoint only: text-only induction ("copy") warm-up steps of its random LM before the reading warm-up
    # (dvr1.models.tiny.copy_warmup: a random token run repeated at a random distance); without it the tiny LM learns
    # no option lookup (docs/SEEING_POLICY.md); 0 = none
    tiny_copy_steps: int = 0
    # tiny checkpoint only: steps of the option lookup drilled in the SFT answer's own form after the reading warm-up
    # (dvr1.models.tiny.answer_drill: the reasoning states a random option, the loss is on its letter); 0 = none
    tiny_answer_steps: int = 0
    # tiny checkpoint only: perception warm-up steps of its random vision tower + merger on rendered clips labelled
    # per merged video token (dvr1.models.tiny.vision_warmup: which coloured shape sits in each token, which way it
    # moves), the stand-in for a real checkpoint's pretrained vision encoder; 0 = none (docs/SEEING_POLICY.md)
    tiny_vision_steps: int = 0
    # its clips hold 1..tiny_vision_max_objects objects; tiny_vision_counts adds a count head (how many objects of a
    # token's class its frame holds: dvr1.data.perception.token_labels(counts=True)); docs/SEEING_POLICY.md
    tiny_vision_max_objects: int = 4
    tiny_vision_counts: bool = False
    # tiny checkpoint of `dvr1 vidchain` only: caption-drill steps of the whole model after those warm-ups
    # (dvr1.models.tiny.caption_drill on dvr1.vidchain.drill.drill_sample clips: how many events, their numbered
    # captions, one event's segment; synthetic backgrounds), the stand-in for a real checkpoint's dense-captioning
    # pretraining; LRs of its LM / tower; 0 = none (docs/VIDCHAIN.md)
    tiny_caption_steps: int = 0
    tiny_caption_lr: float = 1.0e-3
    tiny_caption_vision_lr: float = 5.0e-4
    # tiny checkpoint only: its text RoPE base and mrope split [t, h, w] (frequency pairs, summing to head_dim/2 = 16;
    # pairs run from the highest frequency down, t first). At Qwen's 1e6 / [4, 6, 6] the h and w pairs turn by at
    # most 0.1 rad (h) and 0.001 rad (w) across the tiny clips' 4x4 grid of merged tokens, so the language model
    # cannot tell where in a frame a video token sits; 10 / [2, 4, 10] turns them by up to 2.3 (h) and 1.3 (w) rad
    # (docs/SEEING_POLICY.md)
    tiny_rope_theta: float = 1_000_000.0
    tiny_mrope_section: list = field(default_factory=lambda: [4, 6, 6])
    # apply the output layer inside the log-prob reduction (dvr1/parallel/logprobs.py fused_linear_logprobs), so the
    # logits shard [rows, seq, vocab/tp] is never materialised in the training and log-prob passes. At a 152k
    # vocabulary it takes ~0.2x the memory in ~0.9-1.0x the time of the logits path (docs/BENCHMARKS.md); off by
    # default because the tiny CPU model's logits are small; the 7B/72B examples turn it on.
    fused_logprobs: bool = False
    logprob_chunk: int = 1024  # tokens per chunk of the fused reduction
    # pack each microbatch's sequences end to end in one row, no padding (dvr1/parallel/packing.py): TE's THD layout
    # with spec=te, a block-diagonal causal mask with spec=local; log-prob, reference/old-policy and training passes
    # give the padded numbers at fewer tokens (docs/BENCHMARKS.md)
    packing: bool = False
    # longest prompt in tokens (text + video): a longer one gets fewer frames, or is skipped when its text alone does not
    # fit (dvr1/train/inputs.py). 0 = the model's max_position_embeddings minus rollout.max_new_tokens
    max_prompt_tokens: int = 0
    # where the text after a video resumes in mrope (dvr1/models/rope.py), one rule for training, both samplers, eval
    # and export: qwen (Qwen2.5-VL's original code, what the released checkpoints were trained with, and vLLM's) |
    # transformers5 (transformers 5.3-5.19's start + max(H, W)/merge; native sampler only)
    mrope_rule: str = "qwen"
    # TransformerEngine FP8 and activation recompute (dvr1/parallel/precision.py; GPU image only for FP8)
    fp8: Optional[str] = None  # None | e4m3 | hybrid
    fp8_recipe: str = "delayed"  # delayed | tensorwise | blockwise | mxfp8
    fp8_amax_history_len: int = 1
    fp8_amax_compute_algo: str = "most_recent"  # most_recent | max
    fp8_param: bool = False
    recompute: Optional[str] = None  # None | selective | full
    recompute_method: str = "uniform"  # uniform | block
    recompute_num_layers: int = 1
    recompute_modules: Optional[list[str]] = None
    # keep the vision tower + merger frozen (DVR1 §4.1 freezes the pretrained encoder). false: SFT and RL train it
    # with the language model (dvr1/models/qwen2_5_vl.py set_vision_trainable); sft.freeze_vision /
    # rl.freeze_vision override it per stage (e.g. train it in SFT, keep it frozen in RL as the paper does)
    freeze_vision: bool = True


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    seed: int = 1234
    sequence_parallel: bool = False  # needs tp > 1 (local spec: megatron_patches.sequence_parallel_norm)
    distributed_optimizer: bool = False  # ZeRO-1 over DP (megatron-core DistributedOptimizer)


@dataclass
class RolloutConfig:
    engine: str = "native"  # native (megatron-core KV-cache sampler) | vllm (colocated vLLM, dvr1/rollout/vllm.py)
    group_size: int = 8  # G
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    # colocated vLLM (rollout.engine=vllm): engine TP size (1, or parallel.tp), GPU memory share, sleep during
    # training (GPU only), KV cache in whole GiB on CPU, longest prompt+response in tokens (0: the model's maximum)
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.4
    enable_sleep_mode: bool = True
    cpu_kv_cache_gb: int = 1
    max_model_len: int = 0
    # move the trainer's grads and optimizer state (and, with engine=vllm, its trainable weights) to host memory
    # while the engine generates; back before the update, bit-exact (dvr1/train/offload.py)
    offload_trainer_state: bool = False


@dataclass
class AlgoConfig:
    name: str = "reg_grpo"  # reg_grpo | grpo | dr_grpo | dapo | gspo | cispo | rebel (ALGORITHMS §2, §3, §9)
    # KL to the reference policy. None = the algorithm's paper default (dvr1.rl.losses.ALGO_DEFAULTS): 0.1 for
    # reg_grpo (App. C.1) and grpo, 0 (no KL) for dr_grpo, dapo, gspo, cispo and rebel
    beta: Optional[float] = None
    adv_eps: float = 1e-4  # ε_A
    ddof: int = 1
    # GRPO (ALGORITHMS §2); clip_eps is also Dr. GRPO's ε. clip and loss_agg are GRPO's only: the §9 algorithms use
    # their paper's clip and aggregation
    clip: bool = False
    clip_eps: float = 0.2
    loss_agg: str = "seq-mean-token-mean"
    # ε_low / ε_high of the clip (ALGORITHMS §9). None = the algorithm's default: dapo 0.2 / 0.28, gspo 3e-4 / 4e-4,
    # cispo 1.0 (no lower bound in effect) / 0.2, grpo and dr_grpo clip_eps / clip_eps
    clip_eps_low: Optional[float] = None
    clip_eps_high: Optional[float] = None
    dr_grpo_budget: int = 0  # Dr. GRPO's constant C in tokens (ALGORITHMS §9.1); 0 = rollout.max_new_tokens
    rebel_eta: float = 1.0  # REBEL's η (ALGORITHMS §9.7)
    # Reg-GRPO (ALGORITHMS §3)
    eps_s: float = 1.0
    eps_rho: float = 1e-6
    logratio_reduction: str = "sum"
    normalize_logratio: bool = True
    ppo_epochs: int = 1


@dataclass
class RewardConfig:
    """Weights of the total reward ``w_f·format + w_a·accuracy + w_i·iou`` (docs/ALGORITHMS.md §6;
    `dvr1.rl.rewards.score_response` takes this section as its ``weights``)."""

    format: float = 1.0
    accuracy: float = 1.0
    iou: float = 1.0
    # DAPO's soft overlong punishment (ALGORITHMS §9, DAPO Eq. 13; dvr1.rl.rewards.overlong_penalty), added to the
    # total: 0 up to L_max - L_cache response tokens, then linearly down to -1 at L_max, -1 beyond
    overlong: bool = False
    overlong_max: int = 0  # L_max in tokens; 0 = rollout.max_new_tokens
    overlong_cache: int = 16  # L_cache in tokens (<= L_max)
    # T-GRPO's temporal contrast (ALGORITHMS §9, Video-R1 Eq. 1; dvr1.rl.temporal): G/2 extra responses on shuffled
    # frames (never trained on); if p >= mu * p_shuffled, every correct ordered response gets +alpha on its accuracy
    # (the total gains accuracy-weight * alpha)
    temporal_contrast: bool = False
    temporal_mu: float = 0.8
    temporal_alpha: float = 0.3


@dataclass
class DAAugConfig:
    """DA-Aug (docs/ALGORITHMS.md §4). `dvr1.rl.difficulty.DifficultyController` reads reference, r_ref, margin,
    max_level, scale and directions from this section; the trainer the rest."""

    enabled: bool = True
    reference: str = "relative"  # relative | absolute
    r_ref: float = 1.0  # used when reference=absolute
    window: int = 100
    margin: float = 0.0
    max_level: int = 3
    scale: str = "adaptive"  # adaptive | fixed
    directions: str = "both"  # both | up (noise only) | down (hints only)
    sigma0: float = 0.1  # frame-noise std per level, in normalised pixel units
    mask_fraction: float = 0.0
    mode: str = "replace"  # replace | append
    answer_traces: int = 2  # responses generated with the answer revealed when no response of the group is correct


@dataclass
class SFTConfig:
    steps: int = 300
    batch_size: int = 16  # global (split over DP ranks)
    micro_batch_size: int = 0  # sequences per forward/backward microbatch; 0 = the whole per-rank batch
    lr: float = 2e-3
    warmup: int = 20  # linear warmup from 0 over this many steps (both schedules)
    # constant | cosine (megatron's OptimizerParamScheduler: after the warmup, cosine decay to min_lr_ratio * lr,
    # reached after the last of sft.steps; dvr1.train.optim.build_lr_scheduler)
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.0  # cosine's final LR as a fraction of the peak (of lr, and of vision_lr); in [0, 1]
    # peak LR of the vision tower + merger (own param groups, same warmup and schedule) when it trains
    # (sft.freeze_vision / model.freeze_vision = false); None = sft.lr
    vision_lr: Optional[float] = None
    weight_decay: float = 0.0
    freeze_vision: Optional[bool] = None  # None = model.freeze_vision
    # loss weight of the answer tokens (the <answer> content and the reasoning's "option X" of the answer letter;
    # dvr1.data.prompts.answer_spans), normaliser unchanged (dvr1.train.sft); 1 = the plain mean NLL
    answer_weight: float = 1.0
    # the mean NLL per response token over the `val` split (no gradients) every val_every steps and at the last step,
    # logged as `val_loss` (dvr1.train.sft.SFTTrainer.validate); 0 = off; skipped when the data has no val split
    val_every: int = 50


@dataclass
class RLConfig:
    steps: int = 40
    prompts_per_step: int = 4  # B; global batch = B * G responses (split over DP ranks)
    # whole groups per forward/backward microbatch (the RL loss is decomposed into per-group sums, so the
    # gradient equals the one-microbatch gradient); 0 = all of a rank's groups in one microbatch
    micro_batch_groups: int = 0
    # with algo.ppo_epochs=1 the old policy IS the policy during its only update: take the old-policy log-probs
    # (and the entropy) from the training pass, detached, instead of a separate forward pass. Same values (dropout is
    # off), one forward pass fewer per step; with ppo_epochs > 1 the separate pass always runs.
    reuse_old_logprobs: bool = True
    # DAPO's dynamic sampling (ALGORITHMS §9; dvr1.rl.dynamic_sampling): drop groups whose `dynamic_sampling_metric`
    # (accuracy | total) is equal over the group and roll out further rounds of prompts_per_step prompts until
    # prompts_per_step groups are kept, at most dynamic_sampling_max_rounds rounds per step (the first included, as
    # verl's max_num_gen_batches); at the bound the step trains on what it kept (logged as dyn/bound_hit)
    dynamic_sampling: bool = False
    dynamic_sampling_metric: str = "accuracy"
    dynamic_sampling_max_rounds: int = 10
    lr: float = 2e-5
    # constant | cosine (after no warmup, cosine decay to min_lr_ratio * lr over the stage's rl.steps *
    # algo.ppo_epochs optimizer updates; dvr1.train.optim.build_lr_scheduler)
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.0  # cosine's final LR as a fraction of the peak (of lr, and of vision_lr); in [0, 1]
    # peak LR of the vision tower + merger (own param groups, same schedule) when it trains (rl.freeze_vision /
    # model.freeze_vision = false); None = rl.lr
    vision_lr: Optional[float] = None
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    save_every: int = 10
    keep_last: int = 2
    freeze_vision: Optional[bool] = None  # None = model.freeze_vision


@dataclass
class EvalConfig:
    split: str = "test"
    max_samples: int = 0  # 0 = all
    max_new_tokens: int = 64
    # the greedy decoder of `dvr1 eval` and the main job's evals: auto (= rollout.engine) | native | vllm (a colocated
    # vLLM engine started from the evaluated HF checkpoint; dvr1/train/job.py evaluation_engine)
    engine: str = "auto"


@dataclass
class LogConfig:
    wandb: bool = True
    wandb_mode: str = "offline"  # offline | online | disabled
    project: str = "dvr1"
    tensorboard: bool = False
    progress: bool = True


@dataclass
class VidChainOptions:
    """The VidChain job's options (``vidchain:`` section; `dvr1.vidchain.job`, ALGORITHMS §7). Dense-captioning data
    (built unless ``data_root/manifest.json`` exists), CoTasks SFT, M-DPO sampling/pairs/loss, evaluation."""

    data_root: str = "data/vidchain"  # built by dvr1.vidchain.data.build_dense_dataset unless manifest.json exists
    data_seed: int = 0
    n_train: int = 120
    n_val: int = 12
    n_test: int = 24
    fps: float = 8.0
    size: int = 64  # frame side, pixels
    max_events: int = 3
    sft_chains: list[str] = field(default_factory=lambda: ["count_seg_cap", "cap_seg", "ground"])
    sft_steps: int = 200
    sft_batch_size: int = 4  # records per step; every turn of the record's chain is a row
    sft_lr: float = 2e-3
    sft_warmup: int = 20
    # the vision tower + merger train in CoTasks SFT when sft.freeze_vision (else model.freeze_vision) is false, in
    # M-DPO when rl.freeze_vision (else model.freeze_vision) is false; their peak LRs (None = sft_lr / mdpo_lr)
    sft_vision_lr: Optional[float] = None
    mdpo_vision_lr: Optional[float] = None
    mdpo_chains: list[str] = field(default_factory=lambda: ["count_seg_cap", "cap_seg"])
    mdpo_steps: int = 30
    records_per_step: int = 2  # global (split over DP ranks)
    k_samples: int = 3  # samples per chain step (ALGORITHMS §7)
    temperature: float = 0.8
    pair_threshold: float = 10.0  # min metric gap, 0-100 scale
    max_pairs_per_step: int = 16  # global (split over DP ranks)
    micro_batch_pairs: int = 0  # pairs per M-DPO forward/backward microbatch (2 rows each); 0 = a rank's pairs at once
    beta: float = 0.5
    mdpo_lr: float = 1e-5
    max_new_tokens: int = 48
    eval_max_samples: int = 0  # 0 = the whole eval split
    # the split `dvr1 vidchain` evaluates the SFT and M-DPO models on: "test", or "val" to choose settings (M-DPO's
    # lr / beta, an ablation grid) without looking at the test split
    eval_split: str = "test"
    meteor: bool = True  # METEOR via pycocoevalcap's jar (needs java); False: CIDEr only and CIDEr for M-DPO captions


def validate_vidchain(vc) -> None:
    """Checks of the ``vidchain:`` section; raises ConfigError naming the field (chain names, counts)."""
    from dvr1.vidchain.cotasks import CHAINS

    for key in ("sft_chains", "mdpo_chains"):
        for chain in vc[key]:
            if chain not in CHAINS:
                raise ConfigError(f"vidchain.{key}: unknown chain {chain!r}; must be one of {', '.join(CHAINS)}")
    if vc.k_samples < 2:
        raise ConfigError(f"vidchain.k_samples={vc.k_samples}: M-DPO pairs need at least 2 samples per chain step")
    for key in ("records_per_step", "sft_batch_size", "max_events", "max_pairs_per_step"):
        if vc[key] < 1:
            raise ConfigError(f"vidchain.{key}={vc[key]}: must be >= 1")
    if vc.eval_split not in ("val", "test"):
        raise ConfigError(f"vidchain.eval_split={vc.eval_split!r}: must be 'val' or 'test'")


@dataclass
class RunConfig:
    run_dir: str = "runs/tiny"
    seed: int = 0
    # intra-op CPU threads per process (torch.set_num_threads), at most this process's share of the node's cores
    # (dvr1.train.job.set_threads); 0 = torch's default. Results do not depend on it
    # (megatron_patches.softmax_threads): the tiny main job on 2 cores runs at 2 (SFT 1.3x, the LM warm-ups 1.7x
    # faster than at 1)
    threads: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    da_aug: DAAugConfig = field(default_factory=DAAugConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    vidchain: VidChainOptions = field(default_factory=VidChainOptions)  # `dvr1 vidchain` only
    resume: bool = True


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


_CHOICES = {
    "data.prompt": ("auto", "dvr1", "video_r1"),
    "video.backend": ("pyav", "dali"),
    "model.spec": ("local", "te"),
    "model.dtype": ("float32", "bfloat16"),
    "model.mrope_rule": ("qwen", "transformers5"),
    "rollout.engine": ("native", "vllm"),
    "eval.engine": ("auto", "native", "vllm"),
    "algo.name": ALGORITHMS,
    "algo.loss_agg": LOSS_AGG_MODES,
    "algo.logratio_reduction": ("sum", "mean"),
    "rl.dynamic_sampling_metric": DYNAMIC_SAMPLING_METRICS,
    "sft.lr_schedule": LR_SCHEDULES, "rl.lr_schedule": LR_SCHEDULES,
    "da_aug.reference": ("relative", "absolute"),
    "da_aug.scale": ("adaptive", "fixed"),
    "da_aug.directions": ("both", "up", "down"),
    "da_aug.mode": ("replace", "append"),
    "log.wandb_mode": ("offline", "online", "disabled"),
}


# key -> (lowest, highest allowed or None, what the message says); checked when the config loads (a None value of an
# Optional field is not checked: it means "the default")
_AT_LEAST_1, _AT_LEAST_0, _POSITIVE = (1, None, "must be >= 1"), (0, None, "must be >= 0"), (1e-300, None, "must be > 0")
_RANGES = {
    "threads": _AT_LEAST_0,
    "data.n_train": _AT_LEAST_1, "data.n_val": _AT_LEAST_0, "data.n_test": _AT_LEAST_0, "data.fps": _POSITIVE,
    "data.size": (16, None, "must be >= 16 (pixels)"),
    "video.num_frames": _AT_LEAST_0, "video.fps": _AT_LEAST_0,
    "video.max_frames": (2, None, "must be >= 2 (frames go in pairs, the temporal patch)"),
    "video.min_pixels": _AT_LEAST_1,
    "model.logprob_chunk": _AT_LEAST_1, "model.max_prompt_tokens": _AT_LEAST_0,
    "model.fp8_amax_history_len": _AT_LEAST_1, "model.tiny_reading_steps": _AT_LEAST_0,
    "model.tiny_copy_steps": _AT_LEAST_0, "model.tiny_answer_steps": _AT_LEAST_0, "model.tiny_reading_lr": _POSITIVE,
    "model.tiny_vision_steps": _AT_LEAST_0, "model.tiny_vision_max_objects": _AT_LEAST_1,
    "model.tiny_caption_steps": _AT_LEAST_0, "model.tiny_caption_lr": _POSITIVE,
    "model.tiny_caption_vision_lr": _POSITIVE,
    "model.recompute_num_layers": _AT_LEAST_1,
    "parallel.tp": _AT_LEAST_1, "parallel.pp": _AT_LEAST_1,
    "rollout.top_p": (1e-300, 1.0, "must be in (0, 1]"), "rollout.max_new_tokens": _AT_LEAST_1,
    "rollout.tensor_parallel_size": _AT_LEAST_1,
    "rollout.gpu_memory_utilization": (1e-300, 1.0, "must be in (0, 1]"),
    "rollout.cpu_kv_cache_gb": _AT_LEAST_1, "rollout.max_model_len": _AT_LEAST_0,
    "algo.beta": _AT_LEAST_0, "algo.adv_eps": _AT_LEAST_0, "algo.ddof": _AT_LEAST_0, "algo.clip_eps": _POSITIVE,
    "algo.eps_s": _POSITIVE, "algo.eps_rho": _AT_LEAST_0, "algo.ppo_epochs": _AT_LEAST_1,
    "algo.clip_eps_low": _POSITIVE, "algo.clip_eps_high": _POSITIVE, "algo.dr_grpo_budget": _AT_LEAST_0,
    "algo.rebel_eta": _POSITIVE,
    "reward.format": _AT_LEAST_0, "reward.accuracy": _AT_LEAST_0, "reward.iou": _AT_LEAST_0,
    "reward.overlong_max": _AT_LEAST_0, "reward.overlong_cache": _AT_LEAST_1, "reward.temporal_mu": _AT_LEAST_0,
    "reward.temporal_alpha": _AT_LEAST_0,
    "da_aug.r_ref": (None, None, ""), "da_aug.window": _AT_LEAST_1, "da_aug.margin": _AT_LEAST_0,
    "da_aug.max_level": _AT_LEAST_1, "da_aug.sigma0": _AT_LEAST_0,
    "da_aug.mask_fraction": (0.0, 0.99, "must be in [0, 0.99] (a fraction of the frames)"),
    "da_aug.answer_traces": _AT_LEAST_0,
    "sft.steps": _AT_LEAST_0, "sft.batch_size": _AT_LEAST_1, "sft.micro_batch_size": _AT_LEAST_0,
    "sft.lr": _AT_LEAST_0, "sft.warmup": _AT_LEAST_0, "sft.weight_decay": _AT_LEAST_0,
    "sft.val_every": _AT_LEAST_0,
    "sft.min_lr_ratio": (0.0, 1.0, "must be in [0, 1]"), "sft.vision_lr": _AT_LEAST_0,
    "rl.min_lr_ratio": (0.0, 1.0, "must be in [0, 1]"), "rl.vision_lr": _AT_LEAST_0,
    "rl.steps": _AT_LEAST_0, "rl.prompts_per_step": _AT_LEAST_1, "rl.micro_batch_groups": _AT_LEAST_0,
    "rl.lr": _AT_LEAST_0, "rl.weight_decay": _AT_LEAST_0, "rl.clip_grad": _AT_LEAST_0, "rl.save_every": _AT_LEAST_1,
    "rl.keep_last": _AT_LEAST_1, "rl.dynamic_sampling_max_rounds": _AT_LEAST_1,
    "vidchain.micro_batch_pairs": _AT_LEAST_0, "vidchain.sft_vision_lr": _AT_LEAST_0,
    "vidchain.mdpo_vision_lr": _AT_LEAST_0,
    "eval.max_samples": _AT_LEAST_0, "eval.max_new_tokens": _AT_LEAST_1,
}


def eval_engine(cfg) -> str:
    """`eval.engine` with "auto" resolved to `rollout.engine`: "native" | "vllm"."""
    return cfg.rollout.engine if cfg.eval.engine == "auto" else cfg.eval.engine


def overlong_max(cfg) -> int:
    """L_max of the overlong punishment: `reward.overlong_max`, or rollout.max_new_tokens when it is 0."""
    return cfg.reward.overlong_max or cfg.rollout.max_new_tokens


def freeze_vision(cfg, stage: str) -> bool:
    """Whether `stage` ("sft" | "rl") keeps the vision tower frozen: `<stage>.freeze_vision`, or when that is unset
    (None) `model.freeze_vision`."""
    own = cfg[stage].freeze_vision
    return bool(cfg.model.freeze_vision if own is None else own)


def validate(cfg) -> None:
    """Checks beyond types. Raises ConfigError naming the field and the allowed values."""
    from omegaconf import OmegaConf

    for key, allowed in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: must be one of {', '.join(allowed)}")
    if "vllm" in (cfg.rollout.engine, eval_engine(cfg)):
        if cfg.rollout.tensor_parallel_size not in (1, cfg.parallel.tp):
            raise ConfigError(f"rollout.tensor_parallel_size={cfg.rollout.tensor_parallel_size}: must be 1 or "
                              f"parallel.tp={cfg.parallel.tp} (vLLM shares the trainer's ranks)")
        if cfg.model.mrope_rule != "qwen":
            raise ConfigError(f"model.mrope_rule={cfg.model.mrope_rule!r}: rollout.engine=vllm samples with "
                              "Qwen2.5-VL's original rule (vLLM's own mrope), so it needs model.mrope_rule=qwen")
    theta = cfg.model.tiny_rope_theta
    if theta < 1 or theta != int(theta):
        raise ConfigError(f"model.tiny_rope_theta={theta}: must be a whole number >= 1 (megatron-core's rotary_base "
                          "is an integer)")
    sec = list(cfg.model.tiny_mrope_section)
    if len(sec) != 3 or any(not isinstance(x, int) or x < 1 for x in sec) or sum(sec) != 16:
        raise ConfigError(f"model.tiny_mrope_section={sec}: must be 3 positive integers [t, h, w] summing to 16 "
                          "(the tiny model's head_dim / 2)")
    if cfg.rollout.group_size < 2:
        raise ConfigError(f"rollout.group_size={cfg.rollout.group_size}: a group needs at least 2 responses")
    if cfg.rollout.group_size > 1 and cfg.rollout.temperature <= 0:
        raise ConfigError("rollout.temperature must be > 0 to sample a group of different responses")
    for key, (low, high, what) in _RANGES.items():
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value!r}: must be a finite number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{key}={value!r}: {what}")
    if cfg.video.num_frames <= 0 and cfg.video.fps <= 0:
        raise ConfigError("video.num_frames or video.fps must be > 0")
    if cfg.video.num_frames == 1:
        raise ConfigError("video.num_frames=1: must be 0 (fps sampling) or >= 2 (frames go in pairs, the temporal "
                          "patch)")
    if cfg.video.max_pixels < cfg.video.min_pixels:
        raise ConfigError(f"video.max_pixels={cfg.video.max_pixels}: must be >= video.min_pixels="
                          f"{cfg.video.min_pixels}")
    if cfg.reward.overlong and cfg.reward.overlong_cache > overlong_max(cfg):
        raise ConfigError(f"reward.overlong_cache={cfg.reward.overlong_cache}: must be <= L_max={overlong_max(cfg)} "
                          "(reward.overlong_max, 0 = rollout.max_new_tokens)")
    if cfg.sft.lr_schedule == "cosine" and 0 < cfg.sft.steps <= cfg.sft.warmup:
        raise ConfigError(f"sft.warmup={cfg.sft.warmup}: must be < sft.steps={cfg.sft.steps} with "
                          "sft.lr_schedule=cosine (the decay follows the warmup)")
    if cfg.algo.ddof >= cfg.rollout.group_size:
        raise ConfigError(f"algo.ddof={cfg.algo.ddof}: must be < rollout.group_size={cfg.rollout.group_size}")
    if cfg.algo.name == "reg_grpo" and cfg.algo.normalize_logratio and cfg.algo.eps_rho <= 0:
        raise ConfigError(f"algo.eps_rho={cfg.algo.eps_rho!r}: must be > 0 with algo.normalize_logratio=true (the "
                          "on-policy log-ratio is 0 in every group: 0/sqrt(0) is NaN)")
    from dvr1.parallel.precision import PrecisionConfigError, validate_precision

    try:  # FP8 / recompute / SP choices and their consistency (TE availability is checked when the model is built)
        validate_precision(cfg.model, cfg.parallel, te_available=True)
    except PrecisionConfigError as e:
        raise ConfigError(str(e)) from e
    validate_vidchain(cfg.vidchain)


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None):
    """Defaults <- YAML file <- `key=value` overrides; returns a validated OmegaConf `RunConfig`."""
    from omegaconf import OmegaConf  # imported here: the dataclasses alone (tools/gpu_check.py) need no OmegaConf

    cfg = OmegaConf.structured(RunConfig)
    if path:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    validate(cfg)
    return cfg


def to_yaml(cfg) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg)
