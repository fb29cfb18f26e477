"""ActivityNet Captions (``train.json`` / ``val_1.json`` / ``val_2.json``) -> dense-captioning records, one per video.

Source: the ActivityNet Captions release (Krishna et al. 2017; ranjaykrishna/densevid_eval ``evaluate.py`` scores
against its ``val_1.json`` / ``val_2.json``): a JSON object ``{video_id: {"duration": seconds,
"timestamps": [[start, end], ...], "sentences": ["...", ...]}}`` with one sentence per timestamp; ids like ``"v_QOlSCBRmfWY"``.

Mapping: id = source = the video id; events = the timestamps sorted by start (captions follow their events), an
end past the duration clipped to it (the annotations have a few; counted in ``notes["segments_clipped"]``);
captions with runs of whitespace collapsed; split = the split read.

``annotations``: the directory holding the three files (``split`` picks one: ``train``, ``val_1`` (default) or
``val_2``) or one of the files (split = its name). ``videos``: the directory of ``{id}.mp4`` (``.mkv``/``.webm`` are
tried too; default the annotation directory).
"""

from __future__ import annotations

import os

from dvr1.data.formats._common import Collector, find_video, load_json
from dvr1.data.schema import DataError
from dvr1.vidchain.data import DenseCaptionRecord, DenseRecordError
from dvr1.vidchain.formats._dense import caption_text, clip_events, is_pairs, sort_events

NAME = "activitynet"
KIND = "dense"
DESCRIPTION = "ActivityNet Captions train.json / val_1.json / val_2.json (duration, timestamps, sentences)"

SPLITS = ("train", "val_1", "val_2")
_EXTS = (".mp4", ".mkv", ".webm")


def read(annotations: str, videos: str | None = None, split: str | None = None):
    """Read one ActivityNet Captions file (module docstring).

    Raises:
        DataError: an unknown split, a missing or unreadable file, a file that is not a JSON object.
    """
    if os.path.isdir(annotations):
        split = split or "val_1"
        if split not in SPLITS:
            raise DataError(f"activitynet: unknown split {split!r}; known: {', '.join(SPLITS)}")
        path = os.path.join(annotations, f"{split}.json")
    else:
        path, split = annotations, split or os.path.splitext(os.path.basename(annotations))[0]
    video_dir = os.path.abspath(videos) if videos else os.path.dirname(os.path.abspath(path))
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {{video_id: annotation}}, got {type(data).__name__}")
    out = Collector()
    out.sources.append(path)
    for i, (vid, ann) in enumerate(data.items()):
        line = i + 1
        if not isinstance(ann, dict):
            out.skip(path, line, vid, "record", f"expected a JSON object, got {type(ann).__name__}")
            continue
        d, ts, sents = ann.get("duration"), ann.get("timestamps"), ann.get("sentences")
        if not is_pairs(ts):
            out.skip(path, line, vid, "timestamps", f"expected a list of [start, end] seconds, got {ts!r}")
            continue
        if not isinstance(sents, list) or len(sents) != len(ts):
            out.skip(path, line, vid, "sentences", f"expected one sentence per timestamp ({len(ts)}), got {sents!r}")
            continue
        if isinstance(d, (int, float)) and not isinstance(d, bool) and d > 0:
            ts, n = clip_events(ts, float(d))
            if n:
                out.note("segments_clipped", n)
        events, caps = sort_events(ts, [caption_text(c) for c in sents])
        obj = {"id": vid, "video": find_video(video_dir, vid, _EXTS), "duration": d, "events": events,
               "captions": caps, "split": split, "source": vid}
        out.add_checked(DenseCaptionRecord.from_json, DenseRecordError, obj, path, line)
    return out.imported(None)
