"""SEED-Bench-R1 (Chen et al. 2025): the training set and the L1/L2/L3 validation sets as released on Hugging Face
(``TencentARC/SEED-Bench-R1``).

Sources followed (github.com/TencentARC/SEED-Bench-R1): ``README.md`` (data layout: the HF dataset cloned into
``data/``); ``scripts/grpo.sh`` (training file ``data/annotations/training_6k.jsonl``); ``scripts/eval.sh``
(``data/annotations/validation_L1.jsonl``, ``validation_L2.jsonl``, ``validation_L3.jsonl``);
``src/open_r1_egoplan/grpo.py`` (``make_conversation_egoplan``: a row without ``golden_choice_idx`` (training) has
``answer`` + ``negative_answers``, of which 3 are sampled and shuffled with the answer; a validation row has
``choice_a..choice_d`` and ``golden_choice_idx`` (a letter); the video is
``data/videos/{video_source}/{video_basename}`` and exists only when ``task_progress_metadata`` is non-empty; the
current observation is the image ``data/images/{video_source}/{current_observation_basename}``). Video-R1's
``eval_bench.py`` (``make_conversation_seed_bench_r1``) reads the validation files the same way, options in
``choice_a..d`` order, answer ``golden_choice_idx``.

``--annotations`` is the dataset root (holding ``annotations/``) or its ``annotations/`` directory; ``--videos`` the
directory holding ``{video_source}/{video_basename}`` (default: ``<root>/videos``). Splits: ``train``
(training_6k.jsonl), ``val`` (the three validation files, in L1, L2, L3 order), ``L1``, ``L2``, ``L3`` (one each).

Mapping: ``multiple_choice``; id ``"{level}-{sample_id}"`` (``"train-{sample_id}"`` for training rows: the levels'
sample ids are numbered independently); ``question`` as given; validation options ``[choice_a, .., choice_d]``,
answer ``golden_choice_idx`` (checked against ``answer``); training options: 3 of ``negative_answers`` and the
answer, sampled and shuffled with a generator seeded by the sample id (deterministic, like the official sampling
but fixed per row; ``notes["options_sampled"]``); ``source`` = ``"{video_source}/{video_id}"`` (the recording);
``task`` = the level (``"L1"``, ``"L2"``, ``"L3"``; ``"train"`` for the training set); ``meta``
``{"benchmark": "seed-bench-r1", "level" (both validation only), "sample_id", "video_id", "video_source",
"task_goal", "image"}`` (+ ``domain``/``scenario`` where given). ``image`` is the absolute path of
the current-observation frame the official prompt shows after the video. A row with an empty
``task_progress_metadata`` has no video (only that image) and is reported (``"image_sample"``) and skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random

from dvr1.data.formats import Imported, check_split, progress, skip, to_record
from dvr1.data.schema import LETTERS, DataError

NAME = "seed-bench-r1"
KIND = "qa"
DESCRIPTION = ("SEED-Bench-R1 (HF TencentARC/SEED-Bench-R1 `data/`): training_6k.jsonl and validation_L1/L2/L3.jsonl, "
               "levels as task names; splits train, val, L1, L2, L3")
LEVELS = ("L1", "L2", "L3")
SPLITS = ("train", "val", *LEVELS)
DEFAULT_SPLIT = "val"
BENCHMARK = "seed-bench-r1"
TRAIN_FILE = "training_6k.jsonl"
N_NEGATIVES = 3  # the official training code samples 3 negatives


def level_file(level: str) -> str:
    return f"validation_{level}.jsonl"


def read(annotations: str, videos: str | None, split: str | None) -> Imported:
    """Read split ``split`` (default ``val``: L1, L2 and L3) of the SEED-Bench-R1 data root ``annotations``.

    Raises:
        DataError: no ``annotations/`` directory, a split's file is missing, or a file is not UTF-8.
    """
    split = check_split(split, SPLITS, DEFAULT_SPLIT, NAME)
    if not os.path.isdir(annotations):
        raise DataError(f"{annotations}: not a directory (give SEED-Bench-R1's data root holding annotations/)")
    ann_dir = os.path.join(annotations, "annotations")
    if not os.path.isdir(ann_dir):
        ann_dir = annotations
    root = os.path.dirname(os.path.abspath(ann_dir))
    video_dir = os.path.abspath(videos) if videos is not None else os.path.join(root, "videos")
    image_dir = os.path.join(root, "images")
    parts = [("train", TRAIN_FILE)] if split == "train" else [
        (lv, level_file(lv)) for lv in (LEVELS if split == "val" else (split,))]
    out = Imported(records=[], benchmark=None if split == "train" else BENCHMARK)
    if split == "train":
        out.notes["options_sampled"] = 0
    for level, name in parts:
        path = os.path.join(ann_dir, name)
        if not os.path.isfile(path):
            raise DataError(f"{path}: file not found")
        out.sources.append(path)
        for line, obj in progress(_jsonl(path, out), f"seed-bench-r1 {level}"):
            rec = _row(obj, path, line, level, split, video_dir, image_dir, out)
            if rec is not None:
                out.records.append(rec)
    return out


def _jsonl(path: str, out: Imported) -> list[tuple[int, dict]]:
    """(line, object) of each non-blank line; lines that are not JSON are reported into ``out.dropped``."""
    rows = []
    with open(path, "rb") as fh:
        for line, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                out.dropped.append(skip(path, line, None, "invalid_utf8", "utf8",
                                        f"invalid UTF-8 at byte {exc.start} of the line"))
                continue
            if not text.strip():
                continue
            try:
                rows.append((line, json.loads(text)))
            except json.JSONDecodeError as exc:
                out.dropped.append(skip(path, line, None, "invalid_json", "json", str(exc)))
    return rows


def sampled_options(sample_id: str, answer: str, negatives: list[str]) -> list[str]:
    """3 of ``negatives`` (all when fewer) and ``answer``, shuffled; the generator is seeded by ``sample_id`` (the
    first 8 bytes of its sha256), so the same row always gets the same options."""
    rng = random.Random(int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big"))
    opts = rng.sample(negatives, min(N_NEGATIVES, len(negatives))) + [answer]
    rng.shuffle(opts)
    return opts


def _row(obj, path, line, level, split, video_dir, image_dir, out: Imported):
    if not isinstance(obj, dict):
        out.dropped.append(skip(path, line, None, "invalid_record", "record",
                                f"expected a JSON object, got {type(obj).__name__}"))
        return None
    sid = obj.get("sample_id")
    if isinstance(sid, bool) or not isinstance(sid, (int, str)) or not str(sid).strip():
        out.dropped.append(skip(path, line, None, "invalid_record", "sample_id", f"expected an id, got {sid!r}"))
        return None
    rid = f"{level}-{sid}"
    for name in ("video_source", "current_observation_basename"):
        if not isinstance(obj.get(name), str) or not obj[name].strip():
            out.dropped.append(skip(path, line, rid, "invalid_record", name,
                                    f"expected a non-empty string, got {obj.get(name)!r}"))
            return None
    progress_meta = obj.get("task_progress_metadata")
    if not isinstance(progress_meta, list):
        out.dropped.append(skip(path, line, rid, "invalid_record", "task_progress_metadata",
                                f"expected a list, got {progress_meta!r}"))
        return None
    if not progress_meta:
        out.dropped.append(skip(path, line, rid, "image_sample", "task_progress_metadata",
                                "empty: the sample has no video, only the current-observation image"))
        return None
    basename = obj.get("video_basename")
    if not isinstance(basename, str) or not basename.strip():
        out.dropped.append(skip(path, line, rid, "invalid_record", "video_basename",
                                f"expected a non-empty string, got {basename!r}"))
        return None
    answer = obj.get("answer")
    if "golden_choice_idx" in obj:
        options = [obj.get(f"choice_{c}") for c in "abcd"]
        letter = obj["golden_choice_idx"]
        k = LETTERS.index(letter) if isinstance(letter, str) and letter in LETTERS[:4] else None
        if k is None:
            out.dropped.append(skip(path, line, rid, "invalid_record", "golden_choice_idx",
                                    f"expected one of A, B, C, D, got {letter!r}"))
            return None
        if isinstance(answer, str) and options[k] != answer:
            out.dropped.append(skip(path, line, rid, "invalid_record", "answer", f"{answer!r} is not "
                                    f"choice_{'abcd'[k]} {options[k]!r} (golden_choice_idx {letter})"))
            return None
    else:
        negatives = obj.get("negative_answers")
        if (not isinstance(answer, str) or not isinstance(negatives, list) or not negatives
                or not all(isinstance(n, str) for n in negatives)):
            out.dropped.append(skip(path, line, rid, "invalid_record", "negative_answers",
                                    "a row without golden_choice_idx needs answer and a list of negative_answers"))
            return None
        options = sampled_options(rid, answer, negatives)
        letter = LETTERS[options.index(answer)]
        out.notes["options_sampled"] = out.notes.get("options_sampled", 0) + 1
    src = obj["video_source"]
    meta = {"level": level} if split != "train" else {}
    if split != "train":
        meta["benchmark"] = BENCHMARK
    meta.update({"sample_id": sid, "video_id": obj.get("video_id"), "video_source": src,
                 "task_goal": obj.get("task_goal"),
                 "image": os.path.join(image_dir, src, obj["current_observation_basename"])})
    for name in ("domain", "scenario"):
        if name in obj:
            meta[name] = obj[name]
    rec = {"id": rid, "video": os.path.join(video_dir, src, basename), "question": obj.get("question"),
           "options": options, "answer": letter, "task": level, "problem_type": "multiple_choice",
           "split": split, "source": f"{src}/{obj.get('video_id') or basename}", "meta": meta}
    return to_record(rec, path, line, out.dropped)
