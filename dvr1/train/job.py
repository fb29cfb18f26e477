"""The jobs behind the CLI: data, tiny checkpoint, SFT, RL, eval, and the main job chaining them.

Every stage reads a Hugging Face checkpoint directory and the RL/SFT stages write one at the end
(`<run_dir>/<stage>/hf`), so any stage can start from any Qwen2.5-VL checkpoint and every result can be loaded by
`transformers`. Mid-stage state lives in megatron-core distributed checkpoints (`<run_dir>/<stage>/ckpt`); a killed
job rerun with the same command resumes from the last one (`resume=true`, the default).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import torch
from tqdm import tqdm

from dvr1.parallel import grid

log = logging.getLogger("dvr1")


# ---- set-up ---------------------------------------------------------------------------------------------------

def setup_logging(run_dir: str | None = None) -> None:
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))
    handlers = [logging.StreamHandler(sys.stderr)]
    if run_dir and rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(run_dir, "log.txt")))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [r{rank}] %(levelname)s %(name)s: %(message)s", handlers=handlers,
                        force=True)
    for noisy in ("megatron", "transformers", "httpx", "wandb"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def set_threads(cfg) -> None:
    """`threads` (> 0, CPU only): torch's intra-op threads for this process, lowered (logged) to this process's share
    of the cores when the processes torchrun starts on this node (``LOCAL_WORLD_SIZE``) would otherwise run more
    threads than there are cores (``cores // processes``, at least 1): OpenMP threads that wait for a core make every
    op wait. Every command that computes calls it first (`init`, `dvr1 make-tiny`). The results do not depend on it
    (`megatron_patches.softmax_threads`)."""
    if cfg.threads > 0 and not torch.cuda.is_available():
        from dvr1.parallel.setup import cpu_cores

        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        threads = min(cfg.threads, max(1, cpu_cores() // local))
        if threads < cfg.threads:
            log.info("threads=%d: %d per process (%d cores, LOCAL_WORLD_SIZE=%d)", cfg.threads, threads, cpu_cores(),
                     local)
        torch.set_num_threads(threads)


def init(cfg):
    """torch.distributed + megatron parallel state + CPU fallbacks; returns `ParallelInfo`."""
    import warnings

    warnings.filterwarnings("ignore", module="megatron")
    from dvr1.parallel.setup import init_parallel

    set_threads(cfg)
    return init_parallel(tp=cfg.parallel.tp, pp=cfg.parallel.pp, seed=cfg.parallel.seed)


def data_root(cfg) -> str:
    return os.path.abspath(cfg.data.root)


def ensure_data(cfg) -> str:
    """The dataset at `data.root`, building dvr1's synthetic set there only if dvr1 owns the directory (new, empty,
    or an interrupted build: `dvr1.data.build.data_root_state`). A directory of the user's records (or an imported
    set) is used read-only, never written. Returns the root.

    Raises: `dvr1.data.build.DataRootError` for a directory that is neither (the message says what to do).
    """
    import torch.distributed as dist

    from dvr1.data.build import check_buildable, data_root_state

    root = data_root(cfg)
    state = data_root_state(root)
    if state in ("new", "partial"):
        if grid.is_writer():
            from dvr1.data.build import build_dataset

            log.info("building the dataset at %s", root)
            build_dataset(root, seed=cfg.data.seed, n_train=cfg.data.n_train, n_val=cfg.data.n_val,
                          n_test=cfg.data.n_test, fps=cfg.data.fps, size=cfg.data.size, progress=cfg.log.progress)
        if dist.is_initialized():
            dist.barrier()
    elif state == "user":
        log.info("data.root=%s: your records (read-only to dvr1)", root)
    else:
        check_buildable(root)  # raises, saying what to do
    return root


def check_data_root(cfg) -> None:
    """Raise `dvr1.data.build.DataRootError` if `data.root` is neither dvr1's nor a dataset (reads nothing else)."""
    from dvr1.data.build import check_buildable, data_root_state

    if data_root_state(data_root(cfg)) == "other":
        check_buildable(data_root(cfg))


def prompt_style(cfg, root: str | None = None) -> str:
    """`data.prompt` resolved for the records at `root` (default `data.root`): "auto" is "video_r1" for an imported
    set (a manifest.json `dvr1 data import` wrote, `dvr1.train.benchmarks.read_manifest`), else "dvr1"."""
    if cfg.data.prompt != "auto":
        return cfg.data.prompt
    from dvr1.train.benchmarks import read_manifest

    return "video_r1" if read_manifest(root or data_root(cfg)) is not None else "dvr1"


def skip_report(cfg, stage: str):
    """The `SkipReport` of a stage: appends to `<run_dir>/skipped.jsonl` (writer rank only)."""
    from dvr1.data.schema import SkipReport

    path = os.path.join(os.path.abspath(cfg.run_dir), "skipped.jsonl") if grid.is_writer() else None
    return SkipReport(path, stage)


def records(cfg, split: str, report=None):
    """The valid records of `<data.root>/<split>.jsonl`; skipped lines go to `report` (a `SkipReport`).

    Raises: RecordError (strict mode, or the file is missing); NoUsableRecords when no line is usable."""
    from dvr1.data.build import SPLITS
    from dvr1.data.schema import NoUsableRecords, SkipReport, line_ids, read_records

    path = os.path.join(data_root(cfg), f"{split}.jsonl")
    report = SkipReport() if report is None else report
    # ids are unique within the dataset: a record repeating an id of an earlier split (train < val < test) is a
    # duplicate of that line
    first_at: dict[str, str] = {}
    for earlier in SPLITS[:SPLITS.index(split)] if split in SPLITS else ():
        for rid, where in line_ids(os.path.join(data_root(cfg), f"{earlier}.jsonl")).items():
            first_at.setdefault(rid, where)
    recs = read_records(path, strict=cfg.data.strict, report=report, first_at=first_at)
    if not recs:
        raise NoUsableRecords(f"{path}: no usable records (skipped: {report.describe()})")
    return recs


def write_counts(cfg, stage: str, report, n_records: int, split: str) -> dict:
    """`<run_dir>/<stage>/records.json`: the stage's {"split", "n_read", "n_used", "n_skipped": {reason: n}}."""
    counts = {"split": split, **report.summary(n_records)}
    if grid.is_writer():
        d = os.path.join(os.path.abspath(cfg.run_dir), stage)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "records.json"), "w") as f:
            json.dump(counts, f, indent=1)
    log.info("%s: %d records read from %s, %d used, skipped: %s", stage, counts["n_read"], split, counts["n_used"],
             report.describe())
    return counts


def max_prompt_tokens(cfg, hf_path: str) -> int:
    """`model.max_prompt_tokens`, or (0) the checkpoint's max_position_embeddings minus rollout.max_new_tokens."""
    if cfg.model.max_prompt_tokens:
        return cfg.model.max_prompt_tokens
    from dvr1.models.qwen2_5_vl import load_hf_config

    return load_hf_config(hf_path).text_config.max_position_embeddings - cfg.rollout.max_new_tokens


def tiny_path(cfg) -> str:
    return os.path.join(os.path.abspath(cfg.run_dir), "tiny_init")


def tiny_clip_frames(cfg) -> int:
    """Frames of the tiny checkpoint's warm-up and drill clips: ``video.num_frames`` (8 when 0: fps sampling)."""
    return cfg.video.num_frames or 8


def tiny_vision_warmup(cfg, size: int) -> dict:
    """`dvr1.models.tiny.make_tiny_checkpoint`'s ``vision_steps`` / ``vision_sample`` for ``model.tiny_vision_steps``:
    `dvr1.data.perception.perception_sample` clips of ``size`` pixels a side (the data's frame size), at
    ``video.num_frames`` frames (8 when 0: fps sampling) and the ``video.min_pixels`` / ``max_pixels`` resize, with
    ``model.tiny_vision_max_objects`` / ``tiny_vision_counts``."""
    import functools

    from dvr1.data.perception import perception_sample

    frames = tiny_clip_frames(cfg)
    return {"vision_steps": cfg.model.tiny_vision_steps,
            "vision_sample": functools.partial(perception_sample, size=size, num_frames=frames,
                                               min_pixels=cfg.video.min_pixels, max_pixels=cfg.video.max_pixels,
                                               max_objects=cfg.model.tiny_vision_max_objects,
                                               counts=bool(cfg.model.tiny_vision_counts))}


def ensure_model(cfg) -> str:
    """`model.path`, or the tiny checkpoint (tokenizer trained on the dataset's text) made on first use."""
    import torch.distributed as dist

    if cfg.model.path:
        path = os.path.abspath(cfg.model.path)
        if not os.path.isfile(os.path.join(path, "config.json")):
            from dvr1.config import ConfigError

            raise ConfigError(f"model.path={cfg.model.path}: not a Hugging Face checkpoint directory (no config.json)")
        return path
    path = tiny_path(cfg)
    if cfg.model.tiny_caption_steps:
        from dvr1.config import ConfigError

        raise ConfigError(f"model.tiny_caption_steps={cfg.model.tiny_caption_steps}: the caption drill is for "
                          f"dense-captioning records (dvr1 vidchain); this job's video-QA checkpoint has none (set it "
                          f"to 0)")
    if not os.path.exists(os.path.join(path, "config.json")):
        if grid.is_writer():
            from dvr1.data.prompts import format_question, lookup_drill_texts, sft_response
            from dvr1.models.tiny import make_tiny_checkpoint, text_overrides
            from dvr1.models.tokenizer import chat_prompt

            texts, options, drill = [], [], []
            for split in ("train", "val"):  # the user's records may have no val split
                if split == "train" or os.path.exists(os.path.join(data_root(cfg), f"{split}.jsonl")):
                    for r in records(cfg, split):
                        # the whole chat prompt, so the fixed template (system prompt, role headers) gets merged
                        # into few tokens too: 22 fewer per sequence of the synthetic set than the question alone
                        texts += [chat_prompt(format_question(r, style=prompt_style(cfg)), 0), sft_response(r)]
                        if split == "train" and r.options:
                            options.append(list(r.options))
                            if cfg.model.tiny_answer_steps > 0:
                                drill += lookup_drill_texts(r, style=prompt_style(cfg))
            log.info("making the tiny Qwen2.5-VL checkpoint at %s (tokenizer on %d texts)", path, len(texts))
            make_tiny_checkpoint(path, texts, seed=cfg.seed, vocab_size=cfg.model.tokenizer_vocab,
                                 reading_options=options, reading_steps=cfg.model.tiny_reading_steps,
                                 reading_lr=cfg.model.tiny_reading_lr, copy_steps=cfg.model.tiny_copy_steps,
                                 answer_samples=drill, answer_steps=cfg.model.tiny_answer_steps,
                                 text=text_overrides(cfg.model), progress=cfg.log.progress,
                                 **tiny_vision_warmup(cfg, cfg.data.size))
        if dist.is_initialized():
            dist.barrier()
    return path


def check_trained_rule(hf_config, hf_path: str, rule: str) -> None:
    """Raise ConfigError if the checkpoint was exported by dvr1 after training with another mrope rule than `rule`
    (`model.mrope_rule`): its text would sit at positions it never saw (e.g. a finished SFT stage of an earlier run
    in the same run_dir, reused by the next stage). Checkpoints without the key (released ones, the tiny init) pass:
    Qwen2.5-VL was trained with the "qwen" rule."""
    from dvr1.config import ConfigError
    from dvr1.models.export import MROPE_RULE_KEY

    trained = getattr(hf_config, MROPE_RULE_KEY, None)
    if trained is not None and trained != rule:
        raise ConfigError(f"{hf_path}: trained with model.mrope_rule={trained}, but this run uses "
                          f"model.mrope_rule={rule}; pass model.mrope_rule={trained}, or use another run_dir")


def build_policy(cfg, hf_path: str, pinfo, trainable: bool = True, train_vision: bool = False):
    """The megatron-core policy of this rank, with weights from a HF checkpoint directory. `train_vision` (with
    `trainable`): the vision tower trains too (`model.freeze_vision=false`; `dvr1.config.freeze_vision`)."""

    from dvr1.models.qwen2_5_vl import Qwen25VLPolicy, load_hf_config, load_hf_weights
    from dvr1.parallel.precision import check_device, precision_overrides

    hf_config = load_hf_config(hf_path)
    check_trained_rule(hf_config, hf_path, cfg.model.mrope_rule)
    dtype = torch.bfloat16 if cfg.model.dtype == "bfloat16" else torch.float32
    n_layers = hf_config.text_config.num_hidden_layers
    if n_layers % pinfo.pp_size:
        raise ValueError(f"parallel.pp={pinfo.pp_size} does not divide the model's {n_layers} layers")
    if torch.cuda.is_available():
        check_device(cfg.model)
    policy = Qwen25VLPolicy(hf_config, tp=pinfo.tp_size, pp=pinfo.pp_size, pre_process=pinfo.is_first_stage,
                            post_process=pinfo.is_last_stage, params_dtype=dtype, spec=cfg.model.spec,
                            **precision_overrides(cfg.model, cfg.parallel))
    policy.info.mrope_rule = cfg.model.mrope_rule  # every prompt builder of this policy uses it
    per_stage = n_layers // pinfo.pp_size
    load_hf_weights(policy, hf_path, pinfo.tp_rank, pinfo.tp_size, layer_offset=pinfo.pp_rank * per_stage)
    if not trainable:
        policy.requires_grad_(False)
        policy.eval()
    elif train_vision:
        policy.set_vision_trainable(True)
    return policy


def tokenizer(hf_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_path)


VISION_PARAMS = ("visual.*",)  # the policy's vision tower + merger (`Qwen25VLPolicy.visual`), by parameter name


def optimizer_for(model, lr, weight_decay, clip_grad, warmup, cfg, schedule: str = "constant", updates: int = 0,
                  min_lr_ratio: float = 0.0, vision_lr: float | None = None):
    """(DDP model, megatron optimizer, LR scheduler) for training the policy `model` (`dvr1.train.optim`).

    `schedule`: "constant" (after the linear warmup from 0 over `warmup` updates) or "cosine" (then decayed to
    `min_lr_ratio * lr` over the stage's `updates` optimizer steps). `vision_lr` (None = `lr`): the peak LR of the
    vision tower's params (tower + merger, `VISION_PARAMS`) in their own param groups, with the same warmup and
    schedule (final LR `min_lr_ratio * vision_lr`); only a trained tower has params in them. A stage with 0 updates
    never steps the scheduler: its schedule is the constant one. Raises `OptimizerSetupError` as `build_optimizer` /
    `build_lr_scheduler` do (e.g. cosine with `updates <= warmup`)."""
    from dvr1.train.optim import build_lr_scheduler, build_optimizer, on_step

    if updates == 0:
        schedule = "constant"
    cosine = schedule == "cosine"
    min_lr = min_lr_ratio * lr if cosine else 0.0
    vision_min_lr = min_lr_ratio * vision_lr if (cosine and vision_lr is not None) else 0.0
    chunks, opt = build_optimizer(model, lr=lr, weight_decay=weight_decay, clip_grad=clip_grad,
                                  bf16=cfg.model.dtype == "bfloat16",
                                  use_distributed_optimizer=cfg.parallel.distributed_optimizer, min_lr=min_lr,
                                  decoupled_names=VISION_PARAMS, decoupled_lr=vision_lr,
                                  decoupled_min_lr=vision_min_lr)
    if getattr(model, "vision_trainable", False):  # every update changes the tower: its embedding caches go stale
        on_step(opt, model.vision_updated)
    elif vision_lr is not None and getattr(model, "visual", None) is not None:
        log.warning("vision_lr=%g is unused: the vision tower is frozen (model.freeze_vision / <stage>.freeze_vision)",
                    vision_lr)
    return chunks[0], opt, build_lr_scheduler(opt, lr, warmup_steps=warmup, weight_decay=weight_decay,
                                              style=schedule, decay_steps=updates, min_lr=min_lr)


def stage_optimizer(cfg, policy, stage: str):
    """`optimizer_for` with the LR knobs of `stage` ("sft" | "rl"): `<stage>.lr`, `.weight_decay`, `.lr_schedule`,
    `.min_lr_ratio`, `.vision_lr`; SFT: `sft.warmup`, grad clip 1.0, `sft.steps` updates; RL: no warmup,
    `rl.clip_grad`, `rl.steps * algo.ppo_epochs` updates (one per PPO epoch of every step)."""
    s = cfg[stage]
    if stage == "sft":
        clip, warmup, updates = 1.0, s.warmup, s.steps
    else:
        clip, warmup, updates = s.clip_grad, 0, s.steps * cfg.algo.ppo_epochs
    return optimizer_for(policy, s.lr, s.weight_decay, clip, warmup, cfg, schedule=s.lr_schedule, updates=updates,
                         min_lr_ratio=s.min_lr_ratio, vision_lr=s.vision_lr)


_VLLM: dict = {}  # this process's colocated vLLM engine: {"key": what it was started with, "engine": it}


def rollout_engine(cfg, policy, hf_dir: str | None = None, engine: str | None = None):
    """The engine named by `engine` (default `rollout.engine`): "native" samples from `policy` itself; "vllm" is a
    colocated vLLM engine for the HF checkpoint `hf_dir` that `policy` was loaded from. A process starts vLLM once:
    a later stage (the main job's evals and RL) whose checkpoint has the same config.json and engine settings reuses
    it, refitted with its `policy`'s weights (`VLLMRolloutEngine.sync_weights`, collective) and with a fresh seed
    stream; other settings replace it. Raises ValueError if vllm has no `hf_dir`."""

    # TP/PP ranks of one DP replica must sample identical tokens: same seed; DP replicas get their own stream
    seed = cfg.seed + 101 + 1000 * grid.dp_layout()[0]
    if (engine or cfg.rollout.engine) == "vllm":
        import gc

        from dvr1.models.qwen2_5_vl import load_hf_config
        from dvr1.rollout.vllm import VLLMRolloutEngine

        if hf_dir is None:
            raise ValueError("rollout.engine=vllm: rollout_engine() needs the policy's HF checkpoint directory")
        r = cfg.rollout
        max_len = r.max_model_len or load_hf_config(hf_dir).text_config.max_position_embeddings
        with open(os.path.join(hf_dir, "config.json")) as f:
            key = (f.read(), r.tensor_parallel_size, cfg.model.dtype, max_len, r.gpu_memory_utilization,
                   r.enable_sleep_mode, r.cpu_kv_cache_gb)
        if _VLLM.get("key") == key:
            e = _VLLM["engine"]
            e.restart(seed)
            seconds = e.sync_weights(policy)
            log.info("vllm: reusing this process's engine, refitted from %s in %.1f s", hf_dir, seconds)
            return e
        _VLLM.clear()
        gc.collect()  # the replaced engine's memory goes before the new one allocates its own
        e = VLLMRolloutEngine(hf_dir, seed=seed, tensor_parallel_size=r.tensor_parallel_size,
                              dtype=cfg.model.dtype, max_model_len=max_len,
                              gpu_memory_utilization=r.gpu_memory_utilization,
                              enable_sleep_mode=r.enable_sleep_mode, cpu_kv_cache_gb=r.cpu_kv_cache_gb)
        _VLLM.update(key=key, engine=e)
        return e
    from dvr1.rollout.native import NativeRolloutEngine

    return NativeRolloutEngine(policy, seed=seed, progress=False)


def evaluation_engine(cfg, policy, hf_path: str):
    """The greedy decoder of an evaluation of the HF checkpoint `hf_path` (loaded as `policy`): `eval.engine`
    (`dvr1.config.eval_engine`; "auto" = rollout.engine). "vllm": :func:`rollout_engine`'s colocated vLLM engine for
    `hf_path`; "native": the policy's own KV-cache sampler. Collective under TP/PP (every rank calls it)."""
    from dvr1.config import eval_engine

    if eval_engine(cfg) == "vllm":
        return rollout_engine(cfg, policy, hf_path, engine="vllm")
    from dvr1.rollout.native import NativeRolloutEngine

    return NativeRolloutEngine(policy, seed=cfg.seed)


# ---- stages ---------------------------------------------------------------------------------------------------

def _train_loop(cfg, stage: str, trainer, model, optimizer, scheduler, steps: int, save_every: int,
                keep_last: int, src_hf: str):
    """Shared loop: resume, step with a progress bar, log, checkpoint, export the final model to HF."""
    from dvr1.models.export import export_hf
    from megatron.core.utils import unwrap_model
    from dvr1.train import faults
    from dvr1.train.checkpoint import load_checkpoint, save_checkpoint
    from dvr1.train.metrics import MetricsLogger, reduce_metrics

    stage_dir = os.path.join(os.path.abspath(cfg.run_dir), stage)
    start = 0
    # the newest readable checkpoint: an unreadable one is skipped with a warning naming the file (checkpoint.py)
    extra = load_checkpoint(stage_dir, [model], optimizer, scheduler) if cfg.resume else None
    if extra is not None:
        trainer.load_state_dict(extra["trainer"])
        start = int(extra["step"])
        log.info("%s: resumed from step %d (%s)", stage, start, stage_dir)
    faults.instrument(trainer)  # fault-injection points for the chaos test; no-op unless DVR1_KILL_AT / _TRACE
    from omegaconf import OmegaConf

    logger = MetricsLogger(cfg.run_dir, stage, cfg.log, OmegaConf.to_container(cfg), resume_step=start)
    bar = tqdm(range(start + 1, steps + 1), desc=stage, disable=not cfg.log.progress, initial=start, total=steps)
    for step in bar:
        faults.position(stage, step)
        m = reduce_metrics(trainer.step())
        if hasattr(trainer, "periodic"):  # e.g. SFT's val_loss: already equal on every rank
            m.update(trainer.periodic(step, steps))
        logger.log(step, m)
        bar.set_postfix({k: f"{m[k]:.3g}" for k in ("loss", "reward/mean", "vanishing_advantage_ratio") if k in m})
        if step % save_every == 0 or step == steps:
            save_checkpoint(stage_dir, step, [model], optimizer, scheduler,
                            {"step": step, "trainer": trainer.state_dict()}, keep_last=keep_last)
    logger.close()
    faults.position(stage, steps)
    faults.point("export")
    out = os.path.join(stage_dir, "hf")
    export_hf(unwrap_model(model), src_hf, out)
    log.info("%s: exported the final policy to %s", stage, out)
    return out


def finished_stage(cfg, stage: str) -> tuple[str, bool]:
    """(`<run_dir>/<stage>/hf`, whether that stage already finished). `_train_loop`'s export renames the finished
    directory into place, so its config.json exists only once the whole stage is done."""
    out = os.path.join(os.path.abspath(cfg.run_dir), stage, "hf")
    return out, os.path.exists(os.path.join(out, "config.json"))


def sft_val(cfg, policy, tok, hf_path: str):
    """(val records, their `InputBuilder`) for SFT's validation loss (`sft.val_every`), or ([], None) when it is off
    or the data has no (usable) `val` split. Their skipped lines and clips are reported under stage "sft_val"."""
    from dvr1.data.schema import NoUsableRecords
    from dvr1.train.inputs import InputBuilder

    if not cfg.sft.val_every or not os.path.exists(os.path.join(data_root(cfg), "val.jsonl")):
        return [], None
    report = skip_report(cfg, "sft_val")
    try:
        recs = records(cfg, "val", report)
    except NoUsableRecords as e:
        log.warning("sft: no validation loss: %s", e)
        return [], None
    return recs, InputBuilder(policy, tok, cfg.video, max_prompt_tokens=max_prompt_tokens(cfg, hf_path),
                              skips=report, strict=cfg.data.strict, prompt_style=prompt_style(cfg))


def run_sft(cfg, pinfo, init_hf: str) -> str:
    """SFT cold start from `init_hf`; returns the HF directory of the SFT model (skips if already there)."""
    from dvr1.train.inputs import InputBuilder
    from dvr1.train.sft import SFTTrainer

    out, done = finished_stage(cfg, "sft")
    if done:
        log.info("sft: found %s, skipping", out)
        return out
    report = skip_report(cfg, "sft")
    recs = records(cfg, "train", report)
    from dvr1.config import freeze_vision

    policy = build_policy(cfg, init_hf, pinfo, train_vision=not freeze_vision(cfg, "sft"))
    model, opt, sched = stage_optimizer(cfg, policy, "sft")
    tok = tokenizer(init_hf)
    builder = InputBuilder(policy, tok, cfg.video, max_prompt_tokens=max_prompt_tokens(cfg, init_hf), skips=report,
                           strict=cfg.data.strict, prompt_style=prompt_style(cfg))
    val_recs, val_builder = sft_val(cfg, policy, tok, init_hf)
    trainer = SFTTrainer(cfg, model, opt, sched, builder, tok, recs, val_records=val_recs, val_builder=val_builder)
    out = _train_loop(cfg, "sft", trainer, model, opt, sched, cfg.sft.steps, max(cfg.sft.steps // 3, 1), 1, init_hf)
    write_counts(cfg, "sft", report, len(recs), "train")
    return out


def run_rl(cfg, pinfo, init_hf: str) -> str:
    """GRPO / Reg-GRPO (+ DA-Aug) from `init_hf` (the reference policy is `init_hf` too)."""
    from dvr1.train.inputs import InputBuilder
    from dvr1.train.rl import RLTrainer

    out, done = finished_stage(cfg, "rl")
    if done:
        log.info("rl: found %s, skipping", out)
        return out
    from dvr1.config import freeze_vision
    from dvr1.rl.losses import setting

    policy = build_policy(cfg, init_hf, pinfo, train_vision=not freeze_vision(cfg, "rl"))
    reference = build_policy(cfg, init_hf, pinfo, trainable=False) if setting(cfg.algo, "beta") > 0 else None
    model, opt, sched = stage_optimizer(cfg, policy, "rl")
    tok = tokenizer(init_hf)
    report = skip_report(cfg, "rl")
    recs = records(cfg, "train", report)
    builder = InputBuilder(policy, tok, cfg.video, max_prompt_tokens=max_prompt_tokens(cfg, init_hf), skips=report,
                           strict=cfg.data.strict, prompt_style=prompt_style(cfg))
    engine = rollout_engine(cfg, policy, init_hf)
    trainer = RLTrainer(cfg, model, opt, sched, reference, engine, builder, tok, recs)
    out = _train_loop(cfg, "rl", trainer, model, opt, sched, cfg.rl.steps, cfg.rl.save_every, cfg.rl.keep_last,
                      init_hf)
    write_counts(cfg, "rl", report, len(recs), "train")
    return out


def run_eval(cfg, pinfo, hf_path: str, name: str, split: str | None = None) -> dict:
    """Greedy eval of the HF checkpoint `hf_path` on `split` with `eval.engine` (:func:`evaluation_engine`); writes
    `<run_dir>/eval_<name>.json`."""
    from dvr1.train.evaluate import evaluate
    from dvr1.train.inputs import InputBuilder

    from dvr1.data.schema import NoUsableRecords

    split = split or cfg.eval.split
    report = skip_report(cfg, f"eval_{name}")
    recs = records(cfg, split, report)  # before the model: a file with no usable record fails at once
    policy = build_policy(cfg, hf_path, pinfo, trainable=False)
    tok = tokenizer(hf_path)
    n_read = report.summary(len(recs))["n_read"]
    if cfg.eval.max_samples:
        recs = recs[: cfg.eval.max_samples]
    engine = evaluation_engine(cfg, policy, hf_path)
    out = os.path.join(os.path.abspath(cfg.run_dir), f"eval_{name}.json")
    builder = InputBuilder(policy, tok, cfg.video, max_prompt_tokens=max_prompt_tokens(cfg, hf_path), skips=report,
                           strict=cfg.data.strict, prompt_style=prompt_style(cfg))
    res = evaluate(engine, builder, tok, recs, cfg.eval.max_new_tokens, strict=cfg.data.strict, out_path=out,
                   progress=cfg.log.progress, n_read=n_read)
    log.info("eval[%s] %s: accuracy %.3f, mean IoU %.3f, format %.3f (n=%d; %d read, skipped: %s)", name, split,
             res["accuracy"], res["mean_iou"], res["format"], res["n"], res["n_read"], report.describe())
    if res["n_used"] == 0:
        raise NoUsableRecords(f"eval[{name}]: no usable records in {split} (skipped: {report.describe()})")
    return res


def benchmark_dirs(benchmark: str, data: str) -> list[tuple[str, str, dict]]:
    """The imported sets `dvr1 eval --benchmark` evaluates: ``[(benchmark, directory, manifest)]``. `benchmark`
    "all": every one at `data` (`dvr1.train.benchmarks.find_benchmarks`); a name: `data` itself when it holds an
    import manifest (its records get that name's metric set), else the set at `data` of that benchmark.
    Raises FileNotFoundError naming `data` and what it holds."""
    from dvr1.train.benchmarks import find_benchmarks, read_manifest

    if not os.path.isdir(data):
        raise FileNotFoundError(f"--data {data}: not a directory")
    found = find_benchmarks(data)
    if benchmark != "all":
        own = read_manifest(data)
        found = [(benchmark, data, own)] if own is not None else [f for f in found if f[0] == benchmark]
    if not found:
        have = ", ".join(sorted({f[0] for f in find_benchmarks(data)})) or "none"
        raise FileNotFoundError(f"--data {data}: no imported set for --benchmark {benchmark} (a directory with the "
                                f"manifest.json of `dvr1 data import`; found: {have})")
    return found


def run_benchmark(cfg, pinfo, hf_path: str, benchmark: str, data: str, name: str, split: str | None = None):
    """Greedy eval of the HF checkpoint `hf_path` on the imported benchmark set(s) at `data` with each benchmark's
    metric set (docs/ALGORITHMS.md §10.2; `benchmark_dirs`; several sets of one benchmark are evaluated as one, their
    ids unique across them, else DataError). Per benchmark: predictions resumably in
    `<run_dir>/eval_<benchmark>_<name>.predictions.jsonl`, the result in `<run_dir>/eval_<benchmark>_<name>.json`
    ({"benchmark", "name", "model", "data", "split", "metrics", "columns", "headline", "per_task", "n", "n_read",
    "n_used", "n_skipped"}); frames by `video.*` as for training. Returns (results, the paper-style table)."""
    from omegaconf import OmegaConf

    from dvr1.data.schema import DataError, NoUsableRecords, read_records
    from dvr1.train import faults
    from dvr1.train.benchmarks import benchmark_metrics, format_benchmark_table
    from dvr1.train.evaluate import evaluate_benchmark
    from dvr1.train.inputs import InputBuilder

    sets = benchmark_dirs(benchmark, os.path.abspath(data))
    run_dir = os.path.abspath(cfg.run_dir)
    loaded: dict[str, dict] = {}  # benchmark -> its sets; several sets of one benchmark (e.g. L1, L2, L3 imported
    for bench, d, manifest in sets:  # apart) are evaluated as one. Every record file before the model
        sp = split or manifest.get("split") or cfg.eval.split
        b = loaded.setdefault(bench, {"report": skip_report(cfg, f"eval_{bench}_{name}"), "dirs": [], "splits": [],
                                      "paths": [], "recs": [], "n_read": 0})
        path = os.path.join(d, f"{sp}.jsonl")
        before = len(b["report"].entries)
        recs = read_records(path, strict=cfg.data.strict, report=b["report"])
        if not recs:
            raise NoUsableRecords(f"{path}: no usable records (skipped: {b['report'].describe()})")
        ids = {r.id for r in b["recs"]}
        clash = next((r for r in recs if r.id in ids), None)
        if clash is not None:
            raise DataError(f"{clash.where}: id: {clash.id!r} also in another {bench} set under --data (ids must be "
                            "unique across the sets of one benchmark)")
        b["n_read"] += len(recs) + len(b["report"].entries) - before
        b["recs"] += recs[: cfg.eval.max_samples] if cfg.eval.max_samples else recs
        b["dirs"].append(d)
        b["splits"].append(sp)
        b["paths"].append(path)
    policy = build_policy(cfg, hf_path, pinfo, trainable=False)
    tok = tokenizer(hf_path)
    engine = rollout_engine(cfg, policy, hf_path)
    results = []
    for bench, b in loaded.items():
        report, recs = b["report"], b["recs"]
        one = len(b["dirs"]) == 1
        builder = InputBuilder(policy, tok, cfg.video, max_prompt_tokens=max_prompt_tokens(cfg, hf_path),
                               skips=report, strict=cfg.data.strict, prompt_style=prompt_style(cfg, b["dirs"][0]))
        stem = os.path.join(run_dir, f"eval_{bench}_{name}")
        header = {"benchmark": bench, "model": hf_path, "records": b["paths"][0] if one else b["paths"],
                  "n_records": len(recs), "max_new_tokens": cfg.eval.max_new_tokens,
                  "video": OmegaConf.to_container(cfg.video), "prompt": builder.prompt_style}
        faults.position(f"eval_{bench}", 0)
        rows = evaluate_benchmark(engine, builder, tok, recs, stem + ".predictions.jsonl", header,
                                  cfg.eval.max_new_tokens, strict=cfg.data.strict, progress=cfg.log.progress,
                                  desc=f"eval[{bench}]", weights=cfg.reward)
        res = {"benchmark": bench, "name": name, "model": hf_path, "data": b["dirs"][0] if one else b["dirs"],
               "split": b["splits"][0] if one else b["splits"], **benchmark_metrics(bench, rows),
               **report.summary(len(recs))}
        res["n_read"] = b["n_read"]
        if res["n_used"] == 0:
            raise NoUsableRecords(f"eval[{bench}]: no usable records in {', '.join(b['paths'])} (skipped: "
                                  f"{report.describe()})")
        if grid.is_writer():
            with open(stem + ".json", "w") as f:
                json.dump(res, f, indent=1)
        log.info("eval[%s] %s: %s (n=%d; %d read, skipped: %s)", bench, name,
                 ", ".join(f"{k} {res['metrics'][k]:.1f}" for k in res["columns"]), res["n"], b["n_read"],
                 report.describe())
        results.append(res)
    return results, format_benchmark_table(results)


def run_main(cfg) -> dict:
    """The main job: dataset -> tiny checkpoint -> SFT -> eval -> RL (Reg-GRPO + DA-Aug by default) -> eval -> plots."""
    from dvr1.train.evaluate import format_table
    from dvr1.train.metrics import plot_run

    t0 = time.time()
    run_dir = os.path.abspath(cfg.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    pinfo = init(cfg)
    setup_logging(run_dir)
    if pinfo.rank == 0:
        with open(os.path.join(run_dir, "config.yaml"), "w") as f:
            from dvr1.config import to_yaml

            f.write(to_yaml(cfg))
    ensure_data(cfg)
    init_hf = ensure_model(cfg)
    sft_hf = run_sft(cfg, pinfo, init_hf)
    res = {"sft": run_eval(cfg, pinfo, sft_hf, "sft")}
    rl_hf = run_rl(cfg, pinfo, sft_hf)
    res["rl"] = run_eval(cfg, pinfo, rl_hf, "rl")
    if pinfo.rank == 0:
        plots = plot_run(run_dir)
        table = format_table({k.upper(): v for k, v in res.items()})
        summary = {"minutes": (time.time() - t0) / 60, "sft": {k: res["sft"][k] for k in ("accuracy", "mean_iou")},
                   "rl": {k: res["rl"][k] for k in ("accuracy", "mean_iou")}, "plots": plots}
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        with open(os.path.join(run_dir, "results.md"), "w") as f:
            f.write(table + "\n")
        print("\n" + table + "\n", flush=True)
        print(f"run directory: {run_dir}  ({summary['minutes']:.1f} min)", flush=True)
    return res
