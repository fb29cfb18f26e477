"""MVBench (the 20 per-task JSON files under ``json/``) -> multiple-choice records.

Source: OpenGVLab/Ask-Anything, ``video_chat2/mvbench.ipynb`` (the official evaluation: the ``data_list`` table
task name -> (json file, video prefix, data type, bound); ``MVBench_dataset.qa_template`` letters the
``candidates`` A, B, ... and the answer is the letter of the candidate equal to ``answer``; ``get_index`` reads
frames between ``start`` and ``end`` seconds only for the tasks whose bound flag is set; ``read_frame`` reads the
Episodic Reasoning items from frame directories ``{video}/00001.jpg ...`` at 3 fps). Layout: the HF dataset
``OpenGVLab/MVBench`` with ``json/*.json`` and ``video/{prefix}/...``.

One entry of a task file: ``{"video": "166583.webm", "question": "...", "candidates": ["...", ...],
"answer": "<the text of one candidate>"}`` plus ``"start"``, ``"end"`` (seconds) in the bounded tasks.

Mapping: id ``"{json stem}-{n:04d}"`` (n = 1-based position in the file); options = candidates; answer = the
letter of the candidate equal to ``answer`` (a row whose answer is no candidate is dropped); task = the official
task name (``"Action Sequence"`` ...); meta: ``benchmark``, ``data_type`` (``"video"`` or ``"frame"``; a
``"frame"`` record's video is the frame directory, ``meta["frame_fps"] = 3``), and for bounded tasks ``start``,
``end`` (seconds, the clip to sample from). MVBench has no duration groups.

``annotations``: the MVBench root (holding ``json/``), the ``json/`` directory, or one task file. ``videos``: the
directory holding the prefixes (default ``{root}/video``); where a prefix is missing there, the renamed folders of
later HF revisions are tried (``ssv2_video_mp4/``, ``nturgbd_convert/``). ``split``: a name for the records
(default ``test``; MVBench ships one set).
"""

from __future__ import annotations

import os

from dvr1.data.formats._common import Collector, is_text, load_json
from dvr1.data.schema import DataError, LETTERS

NAME = "mvbench"
KIND = "qa"
DESCRIPTION = "MVBench per-task JSON files (video, question, candidates, answer text; start/end for bounded tasks)"

TASKS = {
    "Action Sequence": ("action_sequence.json", "star/Charades_v1_480/", "video", True),
    "Action Prediction": ("action_prediction.json", "star/Charades_v1_480/", "video", True),
    "Action Antonym": ("action_antonym.json", "ssv2_video/", "video", False),
    "Fine-grained Action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos/", "video", False),
    "Unexpected Action": ("unexpected_action.json", "FunQA_test/test/", "video", False),
    "Object Existence": ("object_existence.json", "clevrer/video_validation/", "video", False),
    "Object Interaction": ("object_interaction.json", "star/Charades_v1_480/", "video", True),
    "Object Shuffle": ("object_shuffle.json", "perception/videos/", "video", False),
    "Moving Direction": ("moving_direction.json", "clevrer/video_validation/", "video", False),
    "Action Localization": ("action_localization.json", "sta/sta_video/", "video", True),
    "Scene Transition": ("scene_transition.json", "scene_qa/video/", "video", False),
    "Action Count": ("action_count.json", "perception/videos/", "video", False),
    "Moving Count": ("moving_count.json", "clevrer/video_validation/", "video", False),
    "Moving Attribute": ("moving_attribute.json", "clevrer/video_validation/", "video", False),
    "State Change": ("state_change.json", "perception/videos/", "video", False),
    "Fine-grained Pose": ("fine_grained_pose.json", "nturgbd/", "video", False),
    "Character Order": ("character_order.json", "perception/videos/", "video", False),
    "Egocentric Navigation": ("egocentric_navigation.json", "vlnqa/", "video", False),
    "Episodic Reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq/", "frame", True),
    "Counterfactual Inference": ("counterfactual_inference.json", "clevrer/video_validation/", "video", False),
}
"""The official ``data_list``: task name -> (json file, video prefix under ``video/``, data type, bound)."""

RENAMED = {"ssv2_video/": "ssv2_video_mp4/", "nturgbd/": "nturgbd_convert/"}
"""Prefixes renamed in later revisions of the HF dataset (tried when the official one is absent)."""

FRAME_FPS = 3.0  # read_frame(fps=3): the tvqa frames were extracted at 3 fps

_BY_FILE = {v[0]: k for k, v in TASKS.items()}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _video(video_root: str, prefix: str, name: str) -> str:
    first = os.path.join(video_root, prefix, name)
    if not os.path.exists(first) and prefix in RENAMED:
        alt = os.path.join(video_root, RENAMED[prefix], name)
        if os.path.exists(alt):
            return os.path.abspath(alt)
    return os.path.abspath(first)


def read(annotations: str, videos: str | None = None, split: str | None = None):
    """Read MVBench task files (module docstring); tasks in the official table's order, rows in file order.

    Raises:
        DataError: no task file found, a single file that is not one of the 20 task files, an unreadable file, or a
            file that is not a JSON array.
    """
    split = split or "test"
    if os.path.isdir(annotations):
        json_dir = os.path.join(annotations, "json") if os.path.isdir(os.path.join(annotations, "json")) \
            else annotations
        tasks = [(t, os.path.join(json_dir, v[0])) for t, v in TASKS.items()
                 if os.path.isfile(os.path.join(json_dir, v[0]))]
        if not tasks:
            raise DataError(f"{annotations}: no MVBench task file (e.g. json/action_sequence.json) found")
    else:
        name = os.path.basename(annotations)
        if name not in _BY_FILE:
            raise DataError(f"{annotations}: not an MVBench task file (known: {', '.join(_BY_FILE)})")
        json_dir = os.path.dirname(os.path.abspath(annotations))
        tasks = [(_BY_FILE[name], annotations)]
    json_dir = os.path.abspath(json_dir)
    root = os.path.dirname(json_dir) if os.path.basename(json_dir) == "json" else json_dir
    video_root = os.path.abspath(videos) if videos else os.path.join(root, "video")
    out = Collector()
    for task, path in tasks:
        _, prefix, data_type, bound = TASKS[task]
        stem = os.path.splitext(os.path.basename(path))[0]
        data = load_json(path)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of questions, got {type(data).__name__}")
        out.sources.append(path)
        for i, d in enumerate(data):
            line, rid = i + 1, f"{stem}-{i + 1:04d}"
            if not isinstance(d, dict):
                out.skip(path, line, rid, "record", f"expected a JSON object, got {type(d).__name__}")
                continue
            if not is_text(d.get("video")):
                out.skip(path, line, rid, "video", f"expected a non-empty string, got {d.get('video')!r}")
                continue
            cands = d.get("candidates")
            if not isinstance(cands, list) or not all(isinstance(c, str) or _number(c) for c in cands):
                out.skip(path, line, rid, "candidates", f"expected a list of strings, got {cands!r}")
                continue
            hits = [k for k, c in enumerate(cands) if c == d.get("answer")]
            if not hits or hits[-1] >= len(LETTERS):
                out.skip(path, line, rid, "answer", f"{d.get('answer')!r} is not one of the candidates {cands!r}")
                continue
            meta = {"benchmark": NAME, "data_type": data_type}
            if bound:
                s, e = d.get("start"), d.get("end")
                if not (_number(s) and _number(e) and 0 <= s < e):
                    out.skip(path, line, rid, "start", f"task {task!r} samples [start, end] seconds; got start "
                                                       f"{s!r}, end {e!r}")
                    continue
                meta["start"], meta["end"] = float(s), float(e)
            if data_type == "frame":
                meta["frame_fps"] = FRAME_FPS
            obj = {"id": rid, "video": _video(video_root, prefix, d["video"]), "question": d.get("question"),
                   "options": [str(c) for c in cands], "answer": LETTERS[hits[-1]], "task": task,
                   "problem_type": "multiple_choice", "source": d["video"], "split": split, "meta": meta}
            out.add_qa(obj, path, line)
    return out.imported(NAME)
