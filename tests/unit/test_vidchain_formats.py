"""The dense-captioning format readers of `dvr1 data import` (ActivityNet Captions, YouCook2, Charades-STA):
fixtures in the official layouts (tests/fixtures/formats/<module>/) -> the exact records (ids, events sorted and
clipped, captions, splits, videos) and the malformed entries reported (file, line, field) and skipped."""

import json
from pathlib import Path

import pytest

from dvr1.data.schema import DataError
from dvr1.vidchain.data import DenseCaptionRecord
from dvr1.vidchain.formats import DENSE_FORMATS
from dvr1.vidchain.formats import activitynet, charades_sta, youcook2

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "formats"


def _drops(imp):
    return [(Path(s.file).name, s.line, s.id, s.reason, s.message) for s in imp.dropped]


def _round_trip(imp):
    for r in imp.records:
        assert DenseCaptionRecord.from_json(json.loads(json.dumps(r.to_json())), "x:1") == r


def test_registry():
    for name, mod in (("activitynet", activitynet), ("youcook2", youcook2), ("charades-sta", charades_sta)):
        assert mod.NAME == name and mod.KIND == "dense" and DENSE_FORMATS[name] == mod.__name__.split(".")[-1]


def test_activitynet():
    root = FIX / "activitynet"
    imp = activitynet.read(str(root), None, "val_1")
    assert imp.benchmark is None and [Path(p).name for p in imp.sources] == ["val_1.json"]
    a, b = imp.records
    assert (a.id, a.source, a.split, a.duration) == ("v_QOlSCBRmfWY", "v_QOlSCBRmfWY", "val_1", 82.73)
    assert a.events == [[0.83, 19.86], [17.37, 60.81], [56.26, 79.42]]
    assert a.captions[1] == "The girl dances around the room while the camera captures her movements."  # stripped
    assert a.video == str(root / "v_QOlSCBRmfWY.mp4")
    # sorted by start, captions follow their events, whitespace collapsed, 62.5 clipped to the 61.72 s duration
    assert b.events == [[0.0, 11.11], [44.15, 61.72]]
    assert b.captions == ["A dog runs across a field.", "A man is seen throwing a frisbee."]
    assert imp.notes == {"segments_clipped": 1}
    assert _drops(imp) == [("val_1.json", 3, "v_nwznKOuZM7w", "invalid_record",
                            "sentences: expected one sentence per timestamp (2), got ['Only one sentence.']")]
    _round_trip(imp)
    tr = activitynet.read(str(root / "train.json"), "/anet", None)
    assert [(r.id, r.split, r.video) for r in tr.records] == [("v_sJFgo9H6zNo", "train", "/anet/v_sJFgo9H6zNo.mp4")]
    with pytest.raises(DataError, match="unknown split 'val'"):
        activitynet.read(str(root), None, "val")


def test_youcook2(tmp_path):
    root = FIX / "youcook2"
    imp = youcook2.read(str(root), None, None)  # default: validation
    (y,) = imp.records
    assert (y.id, y.split, y.duration, y.meta) == ("xHr8X2Wpmno", "validation", 135.0, {"recipe_type": "101"})
    assert y.events == [[8.0, 22.0], [56.0, 71.0], [120.0, 135.0]]  # sorted; 140 clipped to 135
    assert y.captions == ["crack eggs into a bowl", "add the flour to the bowl", "bake in the oven"]
    assert y.video == str(root / "xHr8X2Wpmno.mp4") and imp.notes == {"segments_clipped": 1}
    assert _drops(imp) == [("youcookii_annotations_trainval.json", 3, "V53XmPeyjIU", "invalid_record",
                            "annotations: every segment must be [start, end] seconds, got [[10]]")]
    _round_trip(imp)
    # the official raw_videos/{subset}/{recipe_type}/ layout
    (tmp_path / "training" / "113").mkdir(parents=True)
    (tmp_path / "training" / "113" / "GLd3aX16zBg.mkv").write_bytes(b"")
    (t,) = youcook2.read(str(root / "youcookii_annotations_trainval.json"), str(tmp_path), "training").records
    assert t.id == "GLd3aX16zBg" and t.video == str(tmp_path / "training" / "113" / "GLd3aX16zBg.mkv")
    assert t.captions == ["spread margarine on two slices of white bread", "place a slice of cheese on the bread"]


def test_charades_sta(tmp_path):
    root = FIX / "charades_sta"
    imp = charades_sta.read(str(root), None, "test")
    assert [Path(p).name for p in imp.sources] == ["charades_sta_test.txt", "Charades_v1_test.csv"]
    assert [(r.id, r.events, r.captions, r.duration, r.source) for r in imp.records] == [
        ("AO8RW#1", [[0.0, 6.9]], ["a person is putting a book on a shelf."], 33.0, "AO8RW"),
        ("AO8RW#2", [[20.0, 33.0]], ["person closes the door."], 33.0, "AO8RW"),   # 35.5 clipped to 33
        ("Y6R7T#4", [[2.5, 8.0]], ["person opens the door"], 8.0, "Y6R7T")]       # 9 clipped to 8
    assert imp.notes == {"segments_clipped": 2} and imp.records[0].video == str(root / "AO8RW.mp4")
    f = "charades_sta_test.txt"
    assert _drops(imp) == [
        (f, 5, "Y6R7T#5", "invalid_record", "line: expected 'vid start end##sentence', got 'Y6R7T 1.0 4.0'"),
        (f, 6, "ZZZZZ#6", "invalid_record", "duration: no duration for video 'ZZZZZ' in Charades_v1_test.csv"),
        (f, 7, "Y6R7T#7", "invalid_record", "segment: not numbers: 'x' '4.0'")]
    _round_trip(imp)
    # the txt file itself (split from its name); the Charades CSV must be next to it
    (tmp_path / "charades_sta_train.txt").write_text("AO8RW 0.0 6.9##a person\n")
    with pytest.raises(DataError, match=r"Charades_v1_train.csv: file not found"):
        charades_sta.read(str(tmp_path / "charades_sta_train.txt"), None, None)
