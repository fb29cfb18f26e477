"""The QA format readers of `dvr1 data import` (LongVideoBench, MVBench, Video-MME, TGIF-QA): fixtures in each
dataset's official layout (tests/fixtures/formats/<module>/, rows taken from or shaped after the released files) ->
the exact records (ids, options, answers, tasks, problem types, meta) and the dropped rows (file, line, field)."""

import json
import shutil
from pathlib import Path

import pytest

from dvr1.data.formats import QA_FORMATS, load_format
from dvr1.data.schema import DataError, VideoQARecord

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "formats"


def _drops(imp):
    return [(Path(s.file).name, s.line, s.id, s.reason, s.message) for s in imp.dropped]


def _round_trip(imp):
    """Every record survives the JSONL reader unchanged (what `dvr1 data import` writes is what eval reads)."""
    for r in imp.records:
        back = VideoQARecord.from_json(json.loads(json.dumps(r.to_json())), "x:1")
        assert back == r


def test_registry_names_match_modules():
    for name in ("longvideobench", "mvbench", "video-mme", "tgif-qa"):
        mod = load_format(name)
        assert mod.NAME == name and mod.KIND == "qa" and mod.DESCRIPTION
        assert QA_FORMATS[name] == mod.__name__.split(".")[-1]


def test_longvideobench():
    root = FIX / "longvideobench"
    imp = load_format("longvideobench").read(str(root), None, "val")
    assert imp.benchmark == "longvideobench" and [Path(p).name for p in imp.sources] == ["lvb_val.json"]
    a, b = imp.records
    assert a.id == "86CxyhFV9MI_0" and a.answer == "B" and len(a.options) == 4  # correct_choice 1 -> B
    assert a.options[1].startswith("run away countless times")
    assert a.video == str(root / "videos" / "86CxyhFV9MI.mp4") and a.duration == 190.16
    assert a.task == "TOS" and a.problem_type == "multiple_choice" and a.split == "val" and a.source == "86CxyhFV9MI"
    assert a.meta == {"benchmark": "longvideobench", "duration_group": "600", "question_category": "TOS",
                      "topic_category": "NP-News-Programs", "level": "L2-Relation", "position": [854, 948, 1373],
                      "video_id": "86CxyhFV9MI", "starting_timestamp_for_subtitles": 0,
                      "subtitles": str(root / "subtitles" / "86CxyhFV9MI_en.json")}
    # five candidates, answer index 4 -> E; its subtitle file is not there -> no meta["subtitles"]
    assert (b.id, b.answer, len(b.options), b.meta["duration_group"]) == ("ZdB5rZ_3hZM_1", "E", 5, "15")
    assert "subtitles" not in b.meta
    assert _drops(imp) == [
        ("lvb_val.json", 3, "ZdB5rZ_3hZM_2", "invalid_record",
         "correct_choice: expected an index into the 2 candidates, got 2"),
        ("lvb_val.json", 4, "ZdB5rZ_3hZM_1", "duplicate_id", f"id: duplicate of {root / 'lvb_val.json'}:2")]
    _round_trip(imp)
    # the file itself, and --videos
    imp2 = load_format("longvideobench").read(str(root / "lvb_val.json"), "/data/lvb", None)
    assert [r.video for r in imp2.records] == ["/data/lvb/86CxyhFV9MI.mp4", "/data/lvb/ZdB5rZ_3hZM.mp4"]
    with pytest.raises(DataError, match="no ground truth"):
        load_format("longvideobench").read(str(root), None, "test")


def test_mvbench(tmp_path):
    root = FIX / "mvbench"
    imp = load_format("mvbench").read(str(root), None, None)
    assert imp.benchmark == "mvbench"
    assert [Path(p).name for p in imp.sources] == ["action_sequence.json", "action_antonym.json",
                                                   "episodic_reasoning.json"]  # the official table's order
    seq, anto, epi = imp.records
    assert (seq.id, seq.task, seq.answer) == ("action_sequence-0001", "Action Sequence", "A")
    assert seq.video == str(root / "video" / "star" / "Charades_v1_480" / "6H78U.mp4")
    assert seq.meta == {"benchmark": "mvbench", "data_type": "video", "start": 15.6, "end": 27.7}
    assert (anto.id, anto.task, anto.answer) == ("action_antonym-0001", "Action Antonym", "C")  # "Piling ..." = 3rd
    assert anto.options == ["Not sure", "Scattering something down", "Piling something up"]
    assert anto.meta == {"benchmark": "mvbench", "data_type": "video"}  # unbounded task: no start/end
    assert anto.video == str(root / "video" / "ssv2_video" / "166583.webm") and anto.split == "test"
    assert (epi.task, epi.answer, len(epi.options)) == ("Episodic Reasoning", "A", 5)
    assert epi.video == str(root / "video" / "tvqa" / "frames_fps3_hq" / "castle_s07e04_seg02_clip_14")
    assert epi.meta == {"benchmark": "mvbench", "data_type": "frame", "start": 0.0, "end": 12.3, "frame_fps": 3.0}
    assert _drops(imp) == [
        ("action_sequence.json", 2, "action_sequence-0002", "invalid_record",
         "start: task 'Action Sequence' samples [start, end] seconds; got start None, end None"),
        ("action_antonym.json", 2, "action_antonym-0002", "invalid_record",
         "answer: 'Pulling something from left to right' is not one of the candidates ['Pushing something from "
         "right to left', 'Pushing something from left to right', 'Not sure']")]
    _round_trip(imp)
    # one task file; --videos with the renamed ssv2 folder of later HF revisions
    (tmp_path / "ssv2_video_mp4").mkdir()
    (tmp_path / "ssv2_video_mp4" / "166583.webm").write_bytes(b"")
    one = load_format("mvbench").read(str(root / "json" / "action_antonym.json"), str(tmp_path), "test")
    assert [r.video for r in one.records] == [str(tmp_path / "ssv2_video_mp4" / "166583.webm")]
    with pytest.raises(DataError, match="not an MVBench task file"):
        load_format("mvbench").read(str(root / "json" / "nope.json"), None, None)


def test_video_mme_json_export():
    root = FIX / "video_mme"
    imp = load_format("video-mme").read(str(root), None, "test")
    assert imp.benchmark == "video-mme"
    a, b = imp.records
    assert (a.id, a.answer, a.task, a.source) == ("001-1", "C", "Counting Problem", "fFjv93ACGo8")
    assert a.options == ["Apples.", "Candles.", "Berries.", "The three kinds are of the same number."]
    assert a.video == str(root / "data" / "fFjv93ACGo8.mp4") and a.duration is None and a.split == "test"
    assert a.meta == {"benchmark": "video-mme", "duration_group": "short", "domain": "Knowledge",
                      "sub_category": "Humanity & History", "video_id": "001", "videoID": "fFjv93ACGo8",
                      "url": "https://www.youtube.com/watch?v=fFjv93ACGo8",
                      "subtitles": str(root / "subtitle" / "fFjv93ACGo8.srt")}
    assert (b.id, b.answer, b.task) == ("001-2", "A", "Information Synopsis")
    f = "test-00000-of-00001.jsonl"
    assert [d[:4] for d in _drops(imp)] == [(f, 3, "601-1", "invalid_record"), (f, 4, None, "invalid_json")]
    assert _drops(imp)[0][4] == "answer: expected one of A, B, C, D, got 'E'"
    assert _drops(imp)[1][4].startswith("json: ")
    _round_trip(imp)
    with pytest.raises(DataError, match="one split, test"):
        load_format("video-mme").read(str(root), None, "val")


def test_video_mme_parquet_same_records(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    src = FIX / "video_mme" / "videomme" / "test-00000-of-00001.jsonl"
    rows = [json.loads(x) for x in src.read_text().splitlines()[:3]]
    (tmp_path / "videomme").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "videomme" / "test-00000-of-00001.parquet")
    shutil.copytree(FIX / "video_mme" / "subtitle", tmp_path / "subtitle")
    par = load_format("video-mme").read(str(tmp_path), None, None)
    js = load_format("video-mme").read(str(FIX / "video_mme"), None, None)
    assert [(r.id, r.options, r.answer, r.meta["duration_group"]) for r in par.records] == \
        [(r.id, r.options, r.answer, r.meta["duration_group"]) for r in js.records]


def test_tgif_qa():
    root = FIX / "tgif_qa"
    imp = load_format("tgif-qa").read(str(root), None, "test")
    assert imp.benchmark == "tgif-qa"
    assert [Path(p).name for p in imp.sources] == ["Test_frameqa_question.tsv", "Test_count_question.tsv",
                                                   "Test_action_question.tsv", "Test_transition_question.csv"]
    got = [(r.id, r.task, r.problem_type, r.answer, r.options) for r in imp.records]
    assert got == [
        ("FRAMEQA1159", "FrameQA", "free_form", "cookie", None),
        ("FRAMEQA26835", "FrameQA", "free_form", "two", None),
        ("FRAMEQA4460", "FrameQA", "free_form", "black", None),
        ("COUNT12", "Count", "numerical", "3", None),
        ("ACTION4", "Action", "multiple_choice", "E",
         ["stuff marshmallow", "holds a phone towards face", "fall over", "talk", "flap wings"]),
        ("TRANS23", "Transition", "multiple_choice", "E",
         ["vacuum with unnattached tube", "tilt head", "tip hat", "removes glasses", "sing passionately"])]
    fq = imp.records[0]
    assert fq.meta == {"benchmark": "tgif-qa", "gif_name": "tumblr_no73q2fm0I1uuf348o1_250", "key": "27138",
                       "type": 0, "description": "a chocolate cookie is being placed in a white ice cream cone ."}
    # only a converted .mp4 exists for this GIF -> it is used; the others name the .gif
    assert fq.video == str(root / "tumblr_no73q2fm0I1uuf348o1_250.mp4")
    assert imp.records[3].video == str(root / "tumblr_nezfs4uELd1u1a7cmo1_250.gif")
    assert imp.records[3].meta == {"benchmark": "tgif-qa", "gif_name": "tumblr_nezfs4uELd1u1a7cmo1_250", "key": "52"}
    assert _drops(imp) == [
        ("Test_count_question.tsv", 3, None, "invalid_record", "row: expected 5 tab-separated columns, got 4"),
        ("Test_action_question.tsv", 3, "ACTION12", "invalid_record",
         "answer: expected the index 0-4 of the right choice, got '7'")]
    _round_trip(imp)
    train = load_format("tgif-qa").read(str(root / "Train_count_question.tsv"), "/gifs", None)
    assert [(r.id, r.split, r.answer, r.video) for r in train.records] == [
        ("COUNT2", "train", "5", "/gifs/tumblr_nd53vw6Crc1r7na6zo1_400.gif")]


def test_tgif_qa_bad_header(tmp_path):
    p = tmp_path / "Test_count_question.tsv"
    p.write_text("gif_name\tquestion\tanswer\tvid_id\n")
    with pytest.raises(DataError, match=r"Test_count_question.tsv:1: header: expected 'gif_name question answer "
                                         r"vid_id key'"):
        load_format("tgif-qa").read(str(tmp_path), None, "test")
