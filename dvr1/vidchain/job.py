"""The VidChain job (ALGORITHMS §7): dense-captioning data -> tiny checkpoint -> CoTasks SFT -> eval -> M-DPO -> eval.

    dvr1 vidchain -c examples/vidchain_tiny.yaml [key=value ...]      (= python -m dvr1.vidchain.job ...)
    dvr1 vidchain -c CONFIG --stop-after sft | --init SFT_HF [--sft-eval JSON]   (the stages apart: `dvr1 ablate`)
    dvr1 eval --task dvc --model HF_DIR -c examples/vidchain_tiny.yaml [--name NAME] [--split test]

The YAML is dvr1's run config (`dvr1.config.RunConfig`: run_dir, model, video, parallel, log, ...) whose
``vidchain:`` section (`dvr1.config.VidChainOptions`) holds the job's options (``vidchain.*`` overrides). Stages reuse
`dvr1.train.job` (policy building, optimizer, checkpoint/resume/export loop) and write ``<run_dir>/vidchain_sft`` and
``<run_dir>/vidchain_mdpo`` (each with ``hf/``), ``eval_vidchain_{sft,mdpo}.json``, ``vidchain_results.{md,json}``
(with the count of greedy test outputs M-DPO changed) and ``plots/`` (the DPO curves, `dvr1.train.metrics.plot_run`).

Evaluation (:func:`evaluate_vidchain`): greedy decoding of the ``count_seg_cap`` chain where each turn sees the
model's own earlier answers; DVC METEOR/CIDEr at tIoU {0.3, 0.5, 0.7, 0.9} and SODA_c; grounding (``"ground"`` chain,
one query per event) mIoU and R1@{0.3, 0.5, 0.7}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

from omegaconf import OmegaConf
from tqdm import tqdm

from dvr1.config import VidChainOptions, load_config  # noqa: F401  (VidChainOptions: re-exported)
from dvr1.parallel import grid

log = logging.getLogger("dvr1.vidchain")


def load(path: str | None, overrides: list[str] | None = None):
    """(RunConfig, its ``vidchain`` section) from `dvr1.config.load_config` (YAML with a ``vidchain:`` section and
    ``key=value`` overrides, ``vidchain.*`` ones for the options). Raises `dvr1.config.ConfigError` / omegaconf
    errors naming the key."""
    cfg = load_config(path, overrides)
    return cfg, cfg.vidchain


def records(opts, split: str):
    from dvr1.vidchain.data import read_dense_records

    return read_dense_records(os.path.join(os.path.abspath(opts.data_root), f"{split}.jsonl"))


def _rank0_builds(path_done: str, build) -> None:
    """Run ``build()`` on global rank 0 unless ``path_done`` exists; every rank waits for it (torchrun)."""
    import torch.distributed as dist

    if not os.path.exists(path_done) and grid.is_writer():
        build()
    if dist.is_initialized():
        dist.barrier()


def ensure_data(opts) -> str:
    """The dense-captioning set at ``vidchain.data_root``, built there only if dvr1 owns the directory (new, empty, or
    an interrupted build), as `dvr1.train.job.ensure_data` does: a directory of the user's records (or a finished
    set) is read-only, anything else an error saying what to do. Returns the root.

    Raises: `dvr1.data.build.DataRootError` for a directory that is neither."""
    import json

    import torch.distributed as dist

    from dvr1.data.build import BUILDING, MANIFEST, check_buildable, data_root_state
    from dvr1.vidchain.data import build_dense_dataset

    root = os.path.abspath(opts.data_root)
    state = data_root_state(root)
    if state in ("new", "partial"):
        if grid.is_writer():
            log.info("building the dense-captioning set at %s", root)
            os.makedirs(root, exist_ok=True)
            with open(os.path.join(root, MANIFEST), "w", encoding="utf-8") as fh:
                json.dump(BUILDING, fh)  # an interrupted build stays dvr1's: rebuilt by the next run
            build_dense_dataset(root, seed=opts.data_seed, n_train=opts.n_train, n_val=opts.n_val,
                                n_test=opts.n_test, fps=opts.fps, size=opts.size, max_events=opts.max_events)
        if dist.is_initialized():
            dist.barrier()
    elif state == "other":
        check_buildable(root)  # raises, saying what to do
    return root


def ensure_model(cfg, opts) -> str:
    """``model.path`` or ``<run_dir>/vidchain_tiny_init``: the tiny checkpoint with a tokenizer trained on the CoTasks
    texts of train/val, and the main job's stand-ins for pretraining that apply to dense captioning: the LM's copy
    warm-up (``model.tiny_copy_steps``) and the tower's perception warm-up (``model.tiny_vision_*``, on clips of
    ``vidchain.size`` pixels), then the caption drill of the whole model (``model.tiny_caption_*``:
    `dvr1.vidchain.drill.drill_sample` clips of that size, ``video.num_frames`` frames, ``vidchain.fps`` and
    ``max_events``). Raises `dvr1.config.ConfigError` for ``model.tiny_answer_steps`` /
    ``tiny_reading_steps`` > 0: those drills read video-QA option lists, which dense-captioning records lack."""
    import functools

    from dvr1.config import ConfigError
    from dvr1.models.tiny import make_tiny_checkpoint, text_overrides
    from dvr1.train import job
    from dvr1.vidchain.cotasks import CHAINS, chain_texts
    from dvr1.vidchain.drill import drill_sample

    if cfg.model.path:
        return os.path.abspath(cfg.model.path)
    for key in ("tiny_answer_steps", "tiny_reading_steps"):
        if getattr(cfg.model, key):
            raise ConfigError(f"model.{key}={getattr(cfg.model, key)}: that drill reads the option lists of video-QA "
                              f"records; VidChain's dense-captioning records have none (set it to 0)")
    path = os.path.join(os.path.abspath(cfg.run_dir), "vidchain_tiny_init")

    def build():
        texts = []
        for split in ("train", "val"):
            for r in records(opts, split):
                for chain in CHAINS[:2]:
                    texts += chain_texts(chain, r.events, r.captions, r.duration)
                for ev, cap in zip(r.events, r.captions):
                    texts += chain_texts("ground", [ev], [cap], r.duration)
        log.info("making the tiny checkpoint at %s (tokenizer on %d texts)", path, len(texts))
        make_tiny_checkpoint(path, texts, seed=cfg.seed, vocab_size=cfg.model.tokenizer_vocab,
                             copy_steps=cfg.model.tiny_copy_steps, text=text_overrides(cfg.model),
                             caption_sample=functools.partial(
                                 drill_sample, size=opts.size, num_frames=job.tiny_clip_frames(cfg),
                                 min_pixels=cfg.video.min_pixels, max_pixels=cfg.video.max_pixels, fps=opts.fps,
                                 max_events=opts.max_events),
                             caption_steps=cfg.model.tiny_caption_steps, caption_lr=cfg.model.tiny_caption_lr,
                             caption_vision_lr=cfg.model.tiny_caption_vision_lr, mrope_rule=cfg.model.mrope_rule,
                             progress=cfg.log.progress,
                             **job.tiny_vision_warmup(cfg, opts.size))

    _rank0_builds(os.path.join(path, "config.json"), build)
    return path


def _greedy(engine, inputs, tok, rec, turns, max_new_tokens):
    """Decode every turn greedily, each seeing the model's own earlier answers; returns the answers."""
    from dvr1.models.tokenizer import decode_response
    from dvr1.rollout.base import SamplingParams
    from dvr1.vidchain.cotasks import Turn

    eos = tok.convert_tokens_to_ids("<|im_end|>")
    sp = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, stop_token_ids=(eos,))
    turns = list(turns)
    for k, t in enumerate(turns):
        out = engine.generate([inputs.prepare(rec, turns, k).request], sp)[0]
        turns[k] = Turn(t.kind, t.user, decode_response(tok, out.token_ids[0], (eos,)))
    return [t.answer for t in turns]


def evaluate_vidchain(engine, inputs, tok, recs, scorers: dict, max_new_tokens: int = 48, progress: bool = False,
                      out_path: str | None = None, split: str | None = None) -> dict:
    """DVC + grounding metrics of greedy chains on ``recs`` (module docstring). Scores are on a 0-100 scale.

    Returns: ``{"n", "split" (the ``split`` name the records are of, recorded as given), "dvc": {METEOR@t, CIDEr@t,
    METEOR, CIDEr, Precision*, Recall*}, "SODA_c", "count_acc", "parse_rate", "grounding": {mIoU, R1@t}, "samples",
    "outputs"}``; also written to ``out_path`` as JSON.
    ``samples``: the first 10 records with their ground truth; ``outputs``: every record's greedy answers,
    ``{"id", "chain": [count, segments, captions], "grounding": [one answer per event]}`` (:func:`changed_outputs`).
    """
    from dvr1.vidchain.cotasks import from_percent, parse_captions, parse_count, parse_segments
    from dvr1.vidchain.metrics import dvc_metrics, grounding_metrics, soda_c

    preds, gts, soda, count_ok, parsed, samples, outputs = {}, {}, [], 0, 0, [], []
    g_pred, g_gt = [], []
    meteor = scorers.get("METEOR")
    for rec in tqdm(recs, desc="eval vidchain", disable=not progress):
        count_a, seg_a, cap_a = _greedy(engine, inputs, tok, rec, inputs.turns(rec, "count_seg_cap"), max_new_tokens)
        segs, caps = parse_segments(seg_a), parse_captions(cap_a)
        count_ok += parse_count(count_a) == len(rec.events)
        pairs = []
        if segs and caps:
            parsed += 1
            pairs = [((from_percent(s, rec.duration), from_percent(e, rec.duration)), c)
                     for (s, e), c in zip(segs, caps)]
        preds[rec.id] = pairs
        gts[rec.id] = ([tuple(e) for e in rec.events], list(rec.captions))
        if meteor is not None:
            soda.append(soda_c([p[0] for p in pairs], [p[1] for p in pairs], gts[rec.id][0], rec.captions, meteor))
        if len(samples) < 10:
            samples.append({"id": rec.id, "gt": {"events": rec.events, "captions": rec.captions},
                            "answers": [count_a, seg_a, cap_a]})
        outputs.append({"id": rec.id, "chain": [count_a, seg_a, cap_a], "grounding": []})
        for e in range(len(rec.events)):
            (a,) = _greedy(engine, inputs, tok, rec, inputs.turns(rec, "ground", e), max_new_tokens)
            outputs[-1]["grounding"].append(a)
            s = parse_segments(a)
            g_pred.append(None if not s else (from_percent(s[0][0], rec.duration), from_percent(s[0][1], rec.duration)))
            g_gt.append(tuple(rec.events[e]))
    dvc = {k: 100.0 * v for k, v in dvc_metrics(preds, gts, scorers).items()}
    res = {"n": len(recs), "split": split, "dvc": dvc, "SODA_c": 100.0 * sum(soda) / len(soda) if soda else None,
           "count_acc": 100.0 * count_ok / max(len(recs), 1), "parse_rate": 100.0 * parsed / max(len(recs), 1),
           "grounding": {k: 100.0 * v for k, v in grounding_metrics(g_pred, g_gt).items()}, "samples": samples,
           "outputs": outputs}
    if out_path:
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)
    return res


def changed_outputs(before: dict, after: dict) -> dict:
    """How many greedy answers differ between two :func:`evaluate_vidchain` results on the same records (e.g. the
    CoTasks-SFT and the M-DPO model on the test split): ``{"records", "records_changed" (any answer differs),
    "chain", "chain_changed" (count / segments / captions turns), "grounding", "grounding_changed"}``.

    Raises ValueError when either has no ``outputs`` (an eval JSON written before they were recorded) or when they
    are not over the same record ids in the same order."""
    a, b = before.get("outputs"), after.get("outputs")
    if a is None or b is None:
        raise ValueError("changed_outputs: both evaluations need per-record 'outputs' (re-run the eval)")
    if [r["id"] for r in a] != [r["id"] for r in b]:
        raise ValueError("changed_outputs: the two evaluations are not over the same records")
    out = dict.fromkeys(("records", "records_changed", "chain", "chain_changed", "grounding", "grounding_changed"), 0)
    for x, y in zip(a, b):
        chain = sum(p != q for p, q in zip(x["chain"], y["chain"]))
        ground = sum(p != q for p, q in zip(x["grounding"], y["grounding"]))
        out["records"] += 1
        out["records_changed"] += bool(chain or ground)
        out["chain"] += len(x["chain"])
        out["chain_changed"] += chain
        out["grounding"] += len(x["grounding"])
        out["grounding_changed"] += ground
    return out


def format_changed(c: dict, split: str = "test") -> str:
    """One line for :func:`changed_outputs` of the evaluations on ``split``."""
    return (f"Greedy outputs changed by M-DPO on the {split} split: {c['records_changed']} of {c['records']} records; "
            f"{c['chain_changed']} of {c['chain']} chain answers, {c['grounding_changed']} of {c['grounding']} "
            "grounding answers.")


def format_results(results: dict) -> str:
    """Markdown table, one row per stage: SODA_c, METEOR/CIDEr (mean over tIoUs), METEOR@0.5, count accuracy, parse
    rate, grounding mIoU and R1@{0.3,0.5,0.7} (0-100)."""
    cols = ["SODA_c", "METEOR", "CIDEr", "METEOR@0.5", "count acc", "parsed", "mIoU", "R1@0.3", "R1@0.5", "R1@0.7"]
    lines = ["| stage | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in results.items():
        vals = [r["SODA_c"], r["dvc"].get("METEOR"), r["dvc"]["CIDEr"], r["dvc"].get("METEOR@0.5"), r["count_acc"],
                r["parse_rate"], *(r["grounding"][k] for k in ("mIoU", "R1@0.3", "R1@0.5", "R1@0.7"))]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in vals) + " |")
    return "\n".join(lines)


def run_eval(cfg, pinfo, hf_path: str, name: str, split: str | None = None, scorers: dict | None = None) -> dict:
    """Greedy DVC + grounding evaluation (:func:`evaluate_vidchain`) of the HF checkpoint ``hf_path`` on ``split``
    (None = ``vidchain.eval_split``).

    ``dvr1 eval --task dvc --model HF_DIR -c CONFIG [--name NAME] [--split test]`` runs this. Records: the
    ``vidchain.data_root`` split (built first if the set is missing), the first ``vidchain.eval_max_samples`` if
    > 0; greedy decoding up to ``vidchain.max_new_tokens`` with ``eval.engine`` (`dvr1.train.job.evaluation_engine`);
    scorers :func:`dvr1.vidchain.metrics.default_scorers` with
    ``vidchain.meteor`` unless given. Writes ``<run_dir>/eval_vidchain_<name>.json`` (global rank 0) and returns the
    result dict of :func:`evaluate_vidchain`. Every rank of a TP/PP layout must call it (the decode is collective).
    Raises FileNotFoundError when ``hf_path`` has no ``config.json``.
    """
    from dvr1.train import job
    from dvr1.train.inputs import InputBuilder
    from dvr1.vidchain.metrics import default_scorers
    from dvr1.vidchain.sft import ChainInputs

    opts = cfg.vidchain
    if not os.path.exists(os.path.join(hf_path, "config.json")):
        raise FileNotFoundError(f"{hf_path}: not a HF checkpoint directory (no config.json)")
    ensure_data(opts)
    split = split or opts.eval_split
    recs = records(opts, split)
    if opts.eval_max_samples:
        recs = recs[: opts.eval_max_samples]
    scorers = scorers if scorers is not None else default_scorers(meteor=opts.meteor)
    run_dir = os.path.abspath(cfg.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    out = os.path.join(run_dir, f"eval_vidchain_{name}.json")
    writer = grid.is_writer()
    policy = job.build_policy(cfg, hf_path, pinfo, trainable=False)
    tok = job.tokenizer(hf_path)
    inputs = ChainInputs(InputBuilder(policy, tok, cfg.video, strict=cfg.data.strict))
    res = evaluate_vidchain(job.evaluation_engine(cfg, policy, hf_path), inputs, tok, recs, scorers,
                            opts.max_new_tokens, cfg.log.progress, out if writer else None, split)
    log.info("eval[%s]: %s", name, format_results({name: res}).splitlines()[-1])
    return res


def sft_stage(cfg, pinfo, init_hf: str, train):
    """(CoTasksSFTTrainer, DDP model, optimizer, scheduler) of the CoTasks SFT stage from the HF checkpoint
    ``init_hf`` on the ``train`` records: ``vidchain.sft_lr`` / ``sft_warmup`` / ``sft_chains`` /
    ``sft_batch_size``, ``sft.weight_decay``, grad clip 1.0. The vision tower + merger train too when
    `dvr1.config.freeze_vision` (cfg, "sft") is false (``sft.freeze_vision``, else ``model.freeze_vision``), at
    ``vidchain.sft_vision_lr`` (None = ``vidchain.sft_lr``) on the same warmup; the exported ``hf/`` then carries
    the trained tower (`dvr1.models.export.export_hf`)."""
    from dvr1.config import freeze_vision
    from dvr1.train import job
    from dvr1.train.inputs import InputBuilder
    from dvr1.vidchain.sft import ChainInputs, CoTasksSFTTrainer

    opts = cfg.vidchain
    policy = job.build_policy(cfg, init_hf, pinfo, train_vision=not freeze_vision(cfg, "sft"))
    model, opt, sched = job.optimizer_for(policy, opts.sft_lr, cfg.sft.weight_decay, 1.0, opts.sft_warmup, cfg,
                                          vision_lr=opts.sft_vision_lr)
    tok = job.tokenizer(init_hf)
    inputs = ChainInputs(InputBuilder(policy, tok, cfg.video, strict=cfg.data.strict))
    trainer = CoTasksSFTTrainer(model, opt, sched, inputs, train, opts.sft_chains, opts.sft_batch_size, cfg.seed)
    return trainer, model, opt, sched


def mdpo_stage(cfg, pinfo, sft_hf: str, train, caption_scorer):
    """(MDPOTrainer, DDP model, optimizer, scheduler) of the M-DPO stage from the CoTasks-SFT checkpoint ``sft_hf``
    (π_ref = a frozen copy of it): ``vidchain.mdpo_lr``, ``rl.weight_decay``, ``rl.clip_grad``, no warmup. The
    vision tower trains when `dvr1.config.freeze_vision` (cfg, "rl") is false (``rl.freeze_vision``, else
    ``model.freeze_vision``), at ``vidchain.mdpo_vision_lr`` (None = ``vidchain.mdpo_lr``): the pairs' rows then
    carry pixel values, so the policy and π_ref each encode the clip with their own tower, and the rollouts'
    embeddings are re-encoded after every update (`InputBuilder`'s version-keyed cache)."""
    from dvr1.config import freeze_vision
    from dvr1.train import job
    from dvr1.train.inputs import InputBuilder
    from dvr1.vidchain.mdpo import MDPOTrainer
    from dvr1.vidchain.sft import ChainInputs

    opts = cfg.vidchain
    policy = job.build_policy(cfg, sft_hf, pinfo, train_vision=not freeze_vision(cfg, "rl"))
    reference = job.build_policy(cfg, sft_hf, pinfo, trainable=False)
    model, opt, sched = job.optimizer_for(policy, opts.mdpo_lr, cfg.rl.weight_decay, cfg.rl.clip_grad, 0, cfg,
                                          vision_lr=opts.mdpo_vision_lr)
    tok = job.tokenizer(sft_hf)
    inputs = ChainInputs(InputBuilder(policy, tok, cfg.video, strict=cfg.data.strict))
    engine = job.rollout_engine(cfg, policy, sft_hf)
    trainer = MDPOTrainer(model, opt, sched, reference, engine, inputs, tok, train, opts, caption_scorer,
                          seed=cfg.seed + 17)
    return trainer, model, opt, sched


def run(cfg, opts, init: str | None = None, stop_after: str | None = None, sft_eval: str | None = None) -> dict:
    """The whole VidChain job (module docstring); returns ``{"sft": eval, "mdpo": eval, "changed": ...}``.

    Args:
        init: an HF checkpoint of a CoTasks-SFT model: skip the SFT stage and run M-DPO from it (π_ref = it).
        stop_after: "sft" to stop after the SFT stage and its evaluation (returns ``{"sft": eval}``).
        sft_eval: an ``eval_vidchain_*.json`` of the SFT model (on this config's ``vidchain.eval_split``) to reuse
            instead of evaluating it again (the ablation runner passes the shared SFT's).
    Writes ``vidchain_results.md`` (the table and the count of greedy outputs M-DPO changed, :func:`changed_outputs`),
    ``vidchain_results.json`` and ``plots/`` (`dvr1.train.metrics.plot_run`) under ``run_dir``.
    Raises FileNotFoundError for an ``init`` that is not an HF checkpoint, ValueError for another ``stop_after`` or
    an ``sft_eval`` of another split.
    """
    from dvr1.train import job
    from dvr1.train.metrics import plot_run
    from dvr1.vidchain.metrics import default_scorers

    if stop_after not in (None, "sft"):
        raise ValueError(f"dvr1 vidchain: --stop-after {stop_after!r}: only 'sft' is a stage to stop after")
    if init is not None and not os.path.exists(os.path.join(init, "config.json")):
        raise FileNotFoundError(f"dvr1 vidchain: --init {init}: not a HF checkpoint directory (no config.json)")
    t0 = time.time()
    run_dir = os.path.abspath(cfg.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    pinfo = job.init(cfg)
    job.setup_logging(run_dir)
    if pinfo.rank == 0:
        with open(os.path.join(run_dir, "vidchain_config.yaml"), "w") as f:
            f.write(OmegaConf.to_yaml(cfg))
    ensure_data(opts)
    scorers = default_scorers(meteor=opts.meteor)
    caption_scorer = scorers.get("METEOR", scorers["CIDEr"])
    train = records(opts, "train")

    # CoTasks SFT (or the given SFT model)
    if init is not None:
        sft_hf = os.path.abspath(init)
    else:
        init_hf = ensure_model(cfg, opts)
        sft_hf, sft_done = job.finished_stage(cfg, "vidchain_sft")
        if not sft_done:
            trainer, model, opt, sched = sft_stage(cfg, pinfo, init_hf, train)
            sft_hf = job._train_loop(cfg, "vidchain_sft", trainer, model, opt, sched, opts.sft_steps,
                                     max(opts.sft_steps // 3, 1), 1, init_hf)

    if sft_eval:
        with open(sft_eval) as f:
            results = {"sft": json.load(f)}
        got = results["sft"].get("split")  # None: an eval JSON written before the split was recorded
        if got is not None and got != opts.eval_split:
            raise ValueError(f"dvr1 vidchain: --sft-eval {sft_eval}: evaluated on the {got} split; "
                             f"this run evaluates on vidchain.eval_split={opts.eval_split}")
    else:
        results = {"sft": run_eval(cfg, pinfo, sft_hf, "sft", opts.eval_split, scorers)}
    if stop_after == "sft":
        return results

    # M-DPO from the SFT model; π_ref = the frozen SFT model
    mdpo_hf, mdpo_done = job.finished_stage(cfg, "vidchain_mdpo")
    if not mdpo_done:
        trainer, model, opt, sched = mdpo_stage(cfg, pinfo, sft_hf, train, caption_scorer)
        mdpo_hf = job._train_loop(cfg, "vidchain_mdpo", trainer, model, opt, sched, opts.mdpo_steps,
                                  max(opts.mdpo_steps // 3, 1), 1, sft_hf)
    results["mdpo"] = run_eval(cfg, pinfo, mdpo_hf, "mdpo", opts.eval_split, scorers)
    try:
        results["changed"] = changed_outputs(results["sft"], results["mdpo"])
    except ValueError as e:  # an SFT eval JSON without per-record outputs, or of other records
        log.warning("%s", e)
        results["changed"] = None

    table = format_results({"CoTasks SFT": results["sft"], "+ M-DPO": results["mdpo"]})
    if results["changed"] is not None:
        table += "\n\n" + format_changed(results["changed"], opts.eval_split)
    if pinfo.rank == 0:
        with open(os.path.join(run_dir, "vidchain_results.md"), "w") as f:
            f.write(table + "\n")
        with open(os.path.join(run_dir, "vidchain_results.json"), "w") as f:
            json.dump({k: ({kk: vv for kk, vv in v.items() if kk != "outputs"} if k != "changed" and v else v)
                       for k, v in results.items()}, f, indent=1)
        plot_run(run_dir)
    print("\n" + table + "\n", flush=True)
    print(f"run directory: {run_dir}  ({(time.time() - t0) / 60:.1f} min)", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """``dvr1 vidchain -c CONFIG [--init SFT_HF] [--stop-after sft] [--sft-eval JSON] [key=value ...]``
    (``vidchain.*`` keys for `dvr1.config.VidChainOptions`; :func:`run`). Returns the exit status 0 (the results
    are printed and written under ``run_dir``; :func:`run` returns them)."""
    p = argparse.ArgumentParser(prog="dvr1 vidchain", description=__doc__.split("\n")[0])
    p.add_argument("-c", "--config", default=None, help="YAML (dvr1 run config with a vidchain: section)")
    p.add_argument("--init", default=None, help="a CoTasks-SFT HF checkpoint: skip SFT, run M-DPO from it")
    p.add_argument("--stop-after", choices=("sft",), default=None, help="stop after the SFT stage and its eval")
    p.add_argument("--sft-eval", default=None, help="eval_vidchain_*.json of the SFT model, reused (not re-run)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. vidchain.mdpo_steps=10")
    a = p.parse_intermixed_args(argv)  # key=value overrides may come before or after the options
    cfg, opts = load(a.config, a.overrides)
    run(cfg, opts, a.init, a.stop_after, a.sft_eval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
