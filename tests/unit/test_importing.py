"""`dvr1 data import` on fixtures in each dataset's official layout (tests/fixtures/formats/<name>/, built from the
published format descriptions cited in each reader's docstring): the exact records, the manifest's counts and
dropped rows (file + line), strict mode, the refusal to overwrite, and the imported directory read back by the
training/eval readers."""

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest

from dvr1.cli import main as cli_main
from dvr1.data.schema import read_records

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "formats"


def _import(*args) -> int:
    return cli_main(["data", "import", *map(str, args)])


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def _manifest(out):
    return json.loads((Path(out) / "manifest.json").read_text())


def _dropped(m):
    return [(Path(d["file"]).name, d["line"], d["id"], d["reason"]) for d in m["dropped"]]


# ---- NExT-GQA ------------------------------------------------------------------------------------------------------

def _ng(vid, path, q, options, answer, task, fps, duration, qid, fc, w, h, segments):
    d = {"id": f"{vid}_{qid}", "video": path, "question": q, "options": options, "answer": answer, "task": task,
         "segment": segments[0] if len(segments) == 1 else None, "fps": fps, "duration": duration, "source": vid,
         "split": "val", "meta": {"benchmark": "nextgqa", "video_id": vid, "qid": qid, "frame_count": fc, "width": w,
                                  "height": h}, "problem_type": "grounded_qa"}
    if len(segments) > 1:
        d["segments"] = segments
    return d


def test_nextgqa_import_exact_records_and_manifest(tmp_path):
    videos = tmp_path / "NExTVideo"
    videos.mkdir()
    out = tmp_path / "ng"
    assert _import("--format", "nextgqa", "--annotations", FIX / "nextgqa", "--videos", videos, "--out", out,
                   "--split", "val") == 0
    v = str(videos)
    expected = [
        _ng("4882821564", f"{v}/1025/4882821564.mp4",
            "why did the boy pick up one present from the group of them and move to the sofa",
            ["share with the girl", "approach lady sitting there", "unwrap it", "playing with toy train",
             "gesture something"], "C", "CW", 29.97, 90.0, "1", 2697, 640, 480,
            [[10.2, 15.8], [40.0, 47.5]]),  # [91.0, 93.5] starts after the 90 s duration: removed
        _ng("2435100235", f"{v}/1006/2435100235.mp4",
            "how does the man cycling try to sell the watch to the man in the trishaw",
            ["give him catalogue", "show him a video", "show him the watch", "dismount his bicycle",
             "give him the watch strap"], "C", "CH", 29.97002997002997, 64.0, "7", 1906, 640, 480,
            [[20.9, 22.7], [23.8, 26.0], [50.5, 57.5], [58.5, 63.6]]),
        _ng("2834146886", f"{v}/0036/2834146886.mp4", "what does the white dog do after going to the cushion",
            ["drink again", "shake its body", "smells the black dog", "wagging tail", "touch lady in blue stripes"],
            "C", "TN", 30.0, 62.0, "8", 1881, 496, 370, [[40.0, 62.0]]),  # 62.6 clipped to the 62 s duration
        _ng("4260763967", f"{v}/1150/4260763967.mp4",
            "why is the boy, in yellow, reaching out to things on the green mat",  # quoted csv field with commas
            ["team uniform", "watch something in the pool", "assembling parts to build toy", "keep his belonging",
             "grab remote control"], "C", "CW", 25.0, 34.0, "4", 1017, 640, 480, [[0.0, 5.8]]),
        _ng("3462517143", f"{v}/1018/3462517143.mp4", "why is the white dog walking around the green container",
            ["chasing", "get drink", "fashion for dogs", "leading the way", "excited"], "B", "CW", 29.97, 24.0, "2",
            722, 640, 480, [[3.1, 9.4]]),
        _ng("9873067604", f"{v}/1201/9873067604.mp4", "why did the boy in white sway his head around",
            ["he is looking through it", "see where the ball is falling", "talking", "acting", "moving with rhythm"],
            "C", "CW", 23.976023976023978, 30.0, "4", 920, 640, 360, [[3.5, 30.0]]),
    ]
    assert _lines(out / "val.jsonl") == expected
    m = _manifest(out)
    assert (m["format"], m["benchmark"], m["split"]) == ("nextgqa", "nextgqa", "val")
    assert m["counts"] == {"read": 11, "written": 6, "dropped": 5,
                           "dropped_by_reason": {"no_location": 1, "duplicate_id": 1, "invalid_record": 2,
                                                 "no_video_mapping": 1}}
    assert m["notes"] == {"segments_clipped": 1, "segments_removed_empty": 1}
    assert _dropped(m) == [("val.csv", 5, "8132842161_2", "no_location"),
                           ("val.csv", 8, "3462517143_2", "duplicate_id"),
                           ("val.csv", 9, "3441428429_10", "invalid_record"),
                           ("val.csv", 10, None, "invalid_record"),
                           ("val.csv", 12, "5735711594_5", "no_video_mapping")]
    assert m["dropped"][3]["message"] == "row: expected 13 fields, got 10"
    names = [Path(s["path"]).name for s in m["sources"]]
    assert names == ["val.csv", "gsub_val.json", "map_vid_vidorID.json"]
    for s in m["sources"]:
        data = Path(s["path"]).read_bytes()
        assert s["sha256"] == hashlib.sha256(data).hexdigest() and s["bytes"] == len(data)


def test_nextgqa_missing_file_and_unknown_split(tmp_path, capsys):
    ann = tmp_path / "nextgqa"
    shutil.copytree(FIX / "nextgqa", ann)
    (ann / "map_vid_vidorID.json").unlink()
    assert _import("--format", "nextgqa", "--annotations", ann, "--out", tmp_path / "o", "--split", "val") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dvr1 data import: {ann / 'map_vid_vidorID.json'}: file not found"
    assert _import("--format", "nextgqa", "--annotations", FIX / "nextgqa", "--out", tmp_path / "o",
                   "--split", "train") == 2
    assert "format nextgqa has splits val, test" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---- Video-R1 ------------------------------------------------------------------------------------------------------

def test_video_r1_import_exact_records(tmp_path):
    ann = FIX / "video_r1" / "Video-R1-data" / "Video-R1-260k.json"
    out = tmp_path / "vr"
    assert _import("--format", "video-r1", "--annotations", ann, "--out", out) == 0
    root = str(ann.parent)  # default --videos: the JSON's directory; "./x" -> root + "/x" (Video-R1's join)

    def rec(rid, path, q, options, answer, task, ptype, reasoning, source_name):
        d = {"id": rid, "video": root + path[1:], "question": q, "options": options, "answer": answer, "task": task,
             "segment": None, "fps": None, "duration": None, "source": path, "split": "train",
             "meta": {"problem_id": int(rid), "data_source": source_name}}
        if ptype != "multiple_choice":
            d["problem_type"] = ptype
        d["reasoning"] = reasoning
        return d

    expected = [
        rec("1", "./LLaVA-Video-178K/liwei_youtube_videos/videos/youtube_video_2024/ytb_7nRmsEw7nsE.mp4",
            "What does the man do right after entering the kitchen?",
            ["He opens the fridge", "He puts the cup down", "He drinks water", "He leaves the room"], "B",
            "LLaVA-Video-178K/2_3_m_youtube_v0_1", "multiple_choice",
            "Let me think. He walks in holding a cup and places it on the counter before anything else, so B.",
            "LLaVA-Video-178K/2_3_m_youtube_v0_1"),
        rec("2", "./STAR/Charades_v1_480/6H78U.mp4", "How many people sit at the table at the end of the video?",
            None, "3", "STAR", "numerical", "Counting the chairs that are occupied at the end: three.", "STAR"),
        rec("3", "./LLaVA-Video-178K/academic_source/ego4d/0a1b2c.mp4", "What text is written on the shop sign?",
            None, "OPEN 24 HOURS", "LLaVA-Video-178K/0_30_s_academic_v0_1", "ocr", "The sign reads OPEN 24 HOURS.",
            "LLaVA-Video-178K/0_30_s_academic_v0_1"),
        rec("4", "./PerceptionTest/videos/video_10023.mp4", "Describe what the person does with the onion.", None,
            "The person slices the onion and puts it into the pan.", "PerceptionTest", "free_form",
            "Hmm, the person slices it, then it goes into the pan.", "PerceptionTest"),
        rec("5", "./SR-91k/scannet/scene0000_00.mp4",
            "What is the distance between the sofa and the table (in meters)?", None, "2.5", "regression",
            "regression", "The table is about two and a half meters away.", None),  # no data_source: the type
    ]
    assert _lines(out / "train.jsonl") == expected
    m = _manifest(out)
    assert (m["format"], m["benchmark"], m["split"]) == ("video-r1", None, "train")
    assert m["counts"] == {"read": 10, "written": 5, "dropped": 5,
                           "dropped_by_reason": {"image_sample": 1, "unsupported_problem_type": 1,
                                                 "invalid_record": 2, "duplicate_id": 1}}
    name = "Video-R1-260k.json"  # line = the JSON array index + 1
    assert _dropped(m) == [(name, 6, "6", "image_sample"), (name, 7, "7", "unsupported_problem_type"),
                           (name, 8, "8", "invalid_record"), (name, 9, "1", "duplicate_id"),
                           (name, 10, "10", "invalid_record")]
    assert m["dropped"][4]["message"] == "answer: expected one of A, B, C, D, got 'E'"


def test_video_r1_videos_dir_and_not_an_array(tmp_path, capsys):
    ann = FIX / "video_r1" / "Video-R1-data" / "Video-R1-260k.json"
    vids = tmp_path / "media"
    vids.mkdir()
    assert _import("--format", "video-r1", "--annotations", ann, "--videos", vids, "--out", tmp_path / "o") == 0
    assert _lines(tmp_path / "o" / "train.jsonl")[1]["video"] == f"{vids}/STAR/Charades_v1_480/6H78U.mp4"
    bad = tmp_path / "bad.json"
    bad.write_text('{"problem_id": 1}')
    assert _import("--format", "video-r1", "--annotations", bad, "--out", tmp_path / "o2") == 2
    assert capsys.readouterr().err.strip() == f"dvr1 data import: {bad}: expected a JSON array of items, got dict"


# ---- SEED-Bench-R1 -------------------------------------------------------------------------------------------------

SB = FIX / "seed_bench_r1" / "data"


def test_seed_bench_r1_validation_levels(tmp_path):
    out = tmp_path / "sb"
    assert _import("--format", "seed-bench-r1", "--annotations", SB, "--out", out) == 0  # default split: val
    recs = _lines(out / "val.jsonl")
    root = str(SB)
    assert [(r["id"], r["task"], r["meta"]["level"], r["answer"]) for r in recs] == [
        ("L1-115", "L1", "L1", "A"), ("L2-115", "L2", "L2", "C"),
        ("L3-ca6e9ec9-46ac-4a02-8034-7c31157dc52c_2", "L3", "L3", "A")]
    assert recs[0] == {
        "id": "L1-115", "video": f"{root}/videos/EpicKitchens/115.mp4",
        "question": "Considering the progress shown in the video and my current observation in the last frame, what "
                    "action should I take next in order to store cereal?",
        "options": ["put cereal box into cupboard", "take cereal bag", "open cupboard",
                    "put cereal bag into cereal box"],
        "answer": "A", "task": "L1", "segment": None, "fps": None, "duration": None,
        "source": "EpicKitchens/P01_13", "split": "val",
        "meta": {"level": "L1", "benchmark": "seed-bench-r1", "sample_id": 115, "video_id": "P01_13",
                 "video_source": "EpicKitchens", "task_goal": "store cereal",
                 "image": f"{root}/images/EpicKitchens/115.png"}}
    assert recs[2]["options"] == ["attach stopwatch", "place oven tray", "operate oven", "set stopwatch"]
    assert recs[2]["meta"]["domain"] == "Hobbies" and recs[2]["meta"]["scenario"] == "baking"
    assert recs[2]["video"] == f"{root}/videos/Ego4D/ca6e9ec9-46ac-4a02-8034-7c31157dc52c_2.mp4"
    m = _manifest(out)
    assert (m["benchmark"], m["split"]) == ("seed-bench-r1", "val")
    assert m["counts"] == {"read": 6, "written": 3, "dropped": 3,
                           "dropped_by_reason": {"image_sample": 1, "invalid_record": 1, "invalid_json": 1}}
    assert _dropped(m) == [("validation_L1.jsonl", 2, "L1-116", "image_sample"),
                           ("validation_L3.jsonl", 2, "L3-ca6e9ec9-46ac-4a02-8034-7c31157dc52c_3", "invalid_record"),
                           ("validation_L3.jsonl", 3, None, "invalid_json")]
    assert [Path(s["path"]).name for s in m["sources"]] == [
        "validation_L1.jsonl", "validation_L2.jsonl", "validation_L3.jsonl"]
    # one level alone, from the annotations/ directory itself
    assert _import("--format", "seed-bench-r1", "--annotations", SB / "annotations", "--out", tmp_path / "l2",
                   "--split", "L2") == 0
    assert [r["id"] for r in _lines(tmp_path / "l2" / "L2.jsonl")] == ["L2-115"]


def test_seed_bench_r1_training_options_sampled(tmp_path):
    out = tmp_path / "t"
    assert _import("--format", "seed-bench-r1", "--annotations", SB, "--out", out, "--split", "train") == 0
    recs = _lines(out / "train.jsonl")
    rows = [json.loads(x) for x in (SB / "annotations" / "training_6k.jsonl").read_text().splitlines()]
    for rec, row in zip(recs, rows, strict=True):
        # the documented rule: Random(first 8 bytes of sha256(id))  .sample(negatives, 3) + [answer], shuffled
        rng = random.Random(int.from_bytes(hashlib.sha256(rec["id"].encode()).digest()[:8], "big"))
        opts = rng.sample(row["negative_answers"], min(3, len(row["negative_answers"]))) + [row["answer"]]
        rng.shuffle(opts)
        assert rec["options"] == opts
        assert rec["options"][ord(rec["answer"]) - 65] == row["answer"]
        assert rec["task"] == "train" and "level" not in rec["meta"]
    assert [len(r["options"]) for r in recs] == [4, 3]  # the second row has only 2 negatives
    m = _manifest(out)
    assert m["benchmark"] is None and m["notes"] == {"options_sampled": 2}
    assert _import("--format", "seed-bench-r1", "--annotations", SB, "--out", tmp_path / "t2", "--split",
                   "train") == 0
    assert _lines(tmp_path / "t2" / "train.jsonl") == recs  # deterministic


# ---- the command ---------------------------------------------------------------------------------------------------

def test_strict_fails_on_first_malformed_row(tmp_path, capsys):
    ann = FIX / "video_r1" / "Video-R1-data" / "Video-R1-260k.json"
    out = tmp_path / "o"
    assert _import("--format", "video-r1", "--annotations", ann, "--out", out, "--strict") == 2
    # image_sample / unsupported_problem_type rows are not malformed; the first malformed one is item 8
    assert capsys.readouterr().err.strip() == (
        f"dvr1 data import: {ann}:8: solution: expected '<answer>...</answer>', got '2' (id '8')")
    assert not out.exists()
    ng = tmp_path / "ng"
    assert _import("--format", "nextgqa", "--annotations", FIX / "nextgqa", "--out", ng, "--split", "val",
                   "--strict") == 2
    assert capsys.readouterr().err.strip() == (
        f"dvr1 data import: {FIX / 'nextgqa' / 'val.csv'}:8: id: duplicate id '3462517143_2' (first at "
        f"{FIX / 'nextgqa' / 'val.csv'}:7) (id '3462517143_2')")


def test_overwrite_refusals(tmp_path, capsys):
    ann = FIX / "video_r1" / "Video-R1-data" / "Video-R1-260k.json"
    args = ["--format", "video-r1", "--annotations", ann]
    out = tmp_path / "o"
    assert _import(*args, "--out", out) == 0
    first = (out / "train.jsonl").read_bytes()
    capsys.readouterr()
    assert _import(*args, "--out", out) == 2
    err = capsys.readouterr().err
    assert "train.jsonl exists" in err and "pass --overwrite" in err
    assert _import(*args, "--out", out, "--overwrite") == 0
    assert (out / "train.jsonl").read_bytes() == first
    # another split into the same directory: refused (one import per directory)
    assert _import(*args, "--out", out, "--split", "val") == 2
    assert "holds the import of split 'train'" in capsys.readouterr().err
    # a user's records without an import manifest: never written, even with --overwrite
    user = tmp_path / "user"
    user.mkdir()
    (user / "train.jsonl").write_text("mine\n")
    assert _import(*args, "--out", user, "--overwrite") == 2
    assert "holds no manifest.json written by 'dvr1 data import'" in capsys.readouterr().err
    assert (user / "train.jsonl").read_text() == "mine\n" and not (user / "manifest.json").exists()
    # a foreign manifest.json (e.g. the synthetic set's) is not ours either
    (user / "train.jsonl").unlink()
    (user / "manifest.json").write_text(json.dumps({"seed": 0, "splits": {}}))
    assert _import(*args, "--out", user, "--overwrite") == 2
    assert json.loads((user / "manifest.json").read_text()) == {"seed": 0, "splits": {}}
    f = tmp_path / "file"
    f.write_text("x")
    assert _import(*args, "--out", f) == 2
    assert capsys.readouterr().err.strip().endswith("is not a directory")


def test_round_trip_and_read_only_data_root(tmp_path):
    """The records written read back identically through dvr1.data.schema.read_records, and the directory is a
    user's dataset to the training/eval readers (used, never built into)."""
    from dvr1.data.build import DataRootError, check_buildable, data_root_state

    out = tmp_path / "ng"
    videos = tmp_path / "NExTVideo"
    videos.mkdir()
    assert _import("--format", "nextgqa", "--annotations", FIX / "nextgqa", "--videos", videos, "--out", out,
                   "--split", "val") == 0
    from dvr1.data.formats import load_format

    imported = load_format("nextgqa").read(str(FIX / "nextgqa"), str(videos), "val")
    back = read_records(out / "val.jsonl", strict=True, check_video=False)
    firsts = {}
    want = [r for r in imported.records if firsts.setdefault(r.id, r) is r]
    assert back == want  # dataclass equality (where excluded): every field, segments included
    assert data_root_state(out) == "user"
    with pytest.raises(DataRootError, match="dvr1 never writes"):
        check_buildable(str(out))
    from dvr1.data.schema import write_records

    (tmp_path / "again").mkdir()
    write_records(tmp_path / "again" / "val.jsonl", back)  # byte-identical when written again
    assert (tmp_path / "again" / "val.jsonl").read_text() == (out / "val.jsonl").read_text()


def test_cli_data_alone_still_parses_and_help_lists_formats(capsys):
    from dvr1.cli import _parser

    a = _parser().parse_args(["data", "data.root=x"])
    assert a.command == "data" and a.overrides == ["data.root=x"]
    with pytest.raises(SystemExit) as e:
        _import("--help")
    assert e.value.code == 0
    text = capsys.readouterr().out
    from dvr1.data.formats import load_format

    for name in ("video-r1", "seed-bench-r1", "nextgqa"):
        mod = load_format(name)
        assert f"  {name:<16} qa     {mod.DESCRIPTION}" in text


def test_dense_format_dispatch(tmp_path, monkeypatch):
    """A dense format (dvr1.vidchain.formats.<mod>) is written with write_dense_records."""
    import sys
    import types

    from dvr1.data.formats import Imported
    from dvr1.vidchain import formats as vf
    from dvr1.vidchain.data import DenseCaptionRecord, read_dense_records

    rec = DenseCaptionRecord(id="v1", video=str(tmp_path / "v1.mp4"), duration=10.0, events=[[0.0, 2.0]],
                             captions=["a cat jumps"], split="val", source="v1", fps=0, meta={})
    mod = types.ModuleType("dvr1.vidchain.formats._fake")
    mod.NAME, mod.KIND, mod.DESCRIPTION = "fake-dense", "dense", "a fake dense format"
    mod.read = lambda a, v, s: Imported(records=[rec], sources=[a])
    monkeypatch.setitem(sys.modules, "dvr1.vidchain.formats._fake", mod)
    monkeypatch.setitem(vf.DENSE_FORMATS, "fake-dense", "_fake")
    ann = tmp_path / "ann.json"
    ann.write_text("{}")
    assert _import("--format", "fake-dense", "--annotations", ann, "--out", tmp_path / "d", "--split", "val") == 0
    assert read_dense_records(tmp_path / "d" / "val.jsonl", check_video=False) == [rec]
    assert _manifest(tmp_path / "d")["counts"]["written"] == 1


def test_repeated_id_is_dropped_by_the_reader_only(tmp_path, monkeypatch):
    """The duplicate-id rule has one owner (the readers' Collector); a reader that returns an id twice anyway is a
    bug the command reports instead of silently dropping."""
    import sys
    import types

    from dvr1.data.formats import Imported
    from dvr1.vidchain import formats as vf
    from dvr1.vidchain.data import DenseCaptionRecord

    rec = DenseCaptionRecord(id="v1", video=str(tmp_path / "v1.mp4"), duration=10.0, events=[[0.0, 2.0]],
                             captions=["a cat jumps"], split="val", source="v1", fps=0, meta={})
    mod = types.ModuleType("dvr1.vidchain.formats._twice")
    mod.NAME, mod.KIND, mod.DESCRIPTION = "twice", "dense", "returns one id twice"
    mod.read = lambda a, v, s: Imported(records=[rec, rec], sources=[a])
    monkeypatch.setitem(sys.modules, "dvr1.vidchain.formats._twice", mod)
    monkeypatch.setitem(vf.DENSE_FORMATS, "twice", "_twice")
    ann = tmp_path / "ann.json"
    ann.write_text("{}")
    with pytest.raises(RuntimeError, match="format twice: the reader returned id 'v1' twice"):
        _import("--format", "twice", "--annotations", ann, "--out", tmp_path / "d", "--split", "val")
    assert not (tmp_path / "d").exists()
    # every reader's Skips carry stage "import" in the manifest
    out = tmp_path / "vr"
    assert _import("--format", "video-r1", "--annotations", FIX / "video_r1" / "Video-R1-data" / "Video-R1-260k.json",
                   "--out", out) == 0
    assert {d["stage"] for d in _manifest(out)["dropped"]} == {"import"}


@pytest.mark.parametrize("fmt, ann, split", [
    ("longvideobench", "longvideobench", "val"),
    ("mvbench", "mvbench", "test"),
    ("video-mme", "video_mme", "test"),
    ("tgif-qa", "tgif_qa", "test"),
    ("tgif-qa", "tgif_qa/Train_count_question.tsv", "train"),  # a file's name says its split
    ("activitynet", "activitynet", "val_1"),
    ("activitynet", "activitynet/train.json", "train"),
    ("youcook2", "youcook2", "validation"),
    ("charades-sta", "charades_sta", "test"),
])
def test_default_split_is_the_readers(fmt, ann, split, tmp_path):
    """Without --split, a reader without DEFAULT_SPLIT reads its documented default split (or the one its file's
    name says) and the output is named by it; a directory holding another split's import is still refused."""
    out = tmp_path / "o"
    assert _import("--format", fmt, "--annotations", FIX / ann, "--out", out) == 0
    m = _manifest(out)
    assert m["split"] == split and sorted(p.name for p in out.iterdir()) == ["manifest.json", f"{split}.jsonl"]
    assert {r["split"] for r in _lines(out / f"{split}.jsonl")} == {split}
    # the command writes exactly what the format's reader returns, and counts it in the manifest
    from dvr1.importing import get_format

    imp = get_format(fmt).read(str(FIX / ann), None, split)
    assert m["counts"]["written"] == len(imp.records) == len(_lines(out / f"{split}.jsonl")) > 0
    assert m["counts"]["dropped"] == len(imp.dropped) and m["counts"]["read"] == len(imp.records) + len(imp.dropped)
    assert [r["id"] for r in _lines(out / f"{split}.jsonl")] == [r.id for r in imp.records]
    assert [(d["file"], d["line"], d["reason"]) for d in m["dropped"]] == \
        [(x.file, x.line, x.reason) for x in imp.dropped]
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({**m, "split": "elsewhere"}))
    assert _import("--format", fmt, "--annotations", FIX / ann, "--out", other) == 2
