"""VideoQARecord validation, JSONL round trip, skip/strict error messages."""

import json
import logging
import os

import pytest

from dvr1.data.schema import (
    RecordError,
    VideoQARecord,
    format_segment,
    parse_segment,
    read_records,
    write_records,
)


def _mc(**kw):
    d = dict(
        id="r0",
        video="videos/a.webm",
        question="In which direction does the red disc move?",
        options=["left", "right", "up", "down"],
        answer="B",
        task="motion_direction",
        segment=None,
        fps=8.0,
        duration=2.0,
        source="render:r0",
        split="train",
        meta={"direction": "right"},
    )
    d.update(kw)
    return d


def _gr(**kw):
    d = _mc(
        id="g0",
        question="During which seconds does the red disc appear?",
        options=None,
        answer="[1.5, 3.0]",
        task="grounding",
        segment=[1.5, 3.0],
        duration=4.0,
    )
    d.update(kw)
    return d


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.webm").write_bytes(b"x")
    return tmp_path


def test_segment_format_and_parse():
    assert format_segment(1.5, 3.0) == "[1.5, 3.0]"
    assert format_segment(0, 2.25) == "[0.0, 2.2]"  # round-half-even on 2.25 in binary is 2.2
    assert parse_segment("[0.5, 12.0]") == (0.5, 12.0)
    with pytest.raises(ValueError, match=r"expected '\[s, e\]'"):
        parse_segment("[1.25, 3]")


def test_round_trip(tree):
    recs = [VideoQARecord.from_json(_mc(), "x:1"), VideoQARecord.from_json(_gr(), "x:2")]
    path = tree / "train.jsonl"
    write_records(path, recs)
    back = read_records(path, strict=True)
    assert [r.id for r in back] == ["r0", "g0"]
    assert back[0].video == os.path.join(str(tree), "videos", "a.webm")
    assert back[1].segment == [1.5, 3.0] and back[1].options is None
    assert back[0].to_json() == dict(_mc(), video=back[0].video)
    # absolute paths under the directory are written back relative: byte-identical file
    first = path.read_bytes()
    write_records(path, back)
    assert path.read_bytes() == first
    assert json.loads(first.decode().splitlines()[0])["video"] == "videos/a.webm"


@pytest.mark.parametrize(
    "obj, msg",
    [
        (_mc(answer="E"), "f:3: answer: expected one of A, B, C, D, got 'E'"),
        (_mc(options=["a", "b", "c"]), "f:3: options: expected 4 non-empty strings, got ['a', 'b', 'c']"),
        (_mc(options=["a", "a", "c", "d"]), "f:3: options: duplicate options ['a', 'a', 'c', 'd']"),
        (_mc(task="ocr"), "f:3: task: expected one of arrow_of_time, temporal_order, grounding, counting, "
                          "motion_direction, got 'ocr'"),
        (_mc(fps=0), "f:3: fps: expected a positive number, got 0"),
        (_mc(duration="2"), "f:3: duration: expected a positive number, got '2'"),
        (_mc(id=""), "f:3: id: expected a non-empty string, got ''"),
        (_mc(segment=[0.0, 1.0]), "f:3: segment: must be null for motion_direction"),
        (_mc(meta=[1]), "f:3: meta: expected an object, got list"),
        (_mc(colour="red"), "f:3: colour: unknown field"),
        ({k: v for k, v in _mc().items() if k != "source"}, "f:3: source: missing"),
        (_gr(answer="[3.0, 1.5]", segment=[3.0, 1.5]), "f:3: answer: start must be < end, got '[3.0, 1.5]'"),
        (_gr(answer="1.5-3.0"), "f:3: answer: expected '[s, e]' with seconds to 1 decimal, got '1.5-3.0'"),
        (_gr(answer="[1.5, 4.5]", segment=[1.5, 4.5]), "f:3: answer: end 4.5 exceeds duration 4.0"),
        (_gr(segment=[1.5, 2.5]), "f:3: segment: [1.5, 2.5] disagrees with answer '[1.5, 3.0]'"),
        (_gr(segment=None), "f:3: segment: expected [start, end] seconds for grounding, got None"),
        (_gr(options=["a", "b", "c", "d"]), "f:3: options: must be null for grounding"),
        ([1, 2], "f:3: record: expected a JSON object, got list"),
    ],
)
def test_from_json_errors(obj, msg):
    with pytest.raises(RecordError) as ei:
        VideoQARecord.from_json(obj, "f:3")
    assert str(ei.value) == msg


def test_bad_lines_skipped_and_strict(tree, caplog):
    path = tree / "d.jsonl"
    lines = [
        json.dumps(_mc()),
        "{not json",
        "",
        json.dumps(_mc(id="r1", answer="Z")),
        json.dumps(_mc(id="r2", video="videos/missing.webm")),
        json.dumps(_gr()),
    ]
    path.write_text("\n".join(lines) + "\n")
    log = logging.getLogger("test.schema")
    with caplog.at_level(logging.WARNING, logger="test.schema"):
        recs = read_records(path, log=log)
    assert [r.id for r in recs] == ["r0", "g0"]
    missing = os.path.join(str(tree), "videos", "missing.webm")
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:2: skipped: json: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        f"{path}:4: skipped: answer: expected one of A, B, C, D, got 'Z'",
        f"{path}:5: skipped: video: file not found: {missing}",
    ]
    with pytest.raises(RecordError) as ei:
        read_records(path, strict=True)
    assert str(ei.value) == (
        f"{path}:2: json: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )
    # without the existence check the missing video is kept
    assert [r.id for r in read_records(path, check_video=False)] == ["r0", "r2", "g0"]


def test_missing_file(tmp_path):
    with pytest.raises(RecordError, match=r"nope.jsonl: file not found$"):
        read_records(tmp_path / "nope.jsonl")
