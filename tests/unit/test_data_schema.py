"""VideoQARecord validation, JSONL round trip, skip/strict error messages."""

import json
import logging
import os

import pytest

from dvr1.data.schema import (
    RecordError,
    SkipReport,
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
        (_mc(options=["a"]), "f:3: options: expected 2-26 non-empty strings, got ['a']"),
        (_mc(options=[f"o{k}" for k in range(27)], answer="A"), "f:3: options: expected 2-26 non-empty strings, got "
         + repr([f"o{k}" for k in range(27)])),
        (_mc(options=["a", "b"], answer="C"), "f:3: answer: expected one of A, B, got 'C'"),
        (_mc(options=["a", "a", "c", "d"]), "f:3: options: duplicate options ['a', 'a', 'c', 'd']"),
        (_mc(problem_type="essay"), "f:3: problem_type: expected one of multiple_choice, numerical, ocr, free_form, "
                                    "regression, grounding, grounded_qa, got 'essay'"),
        (_mc(task="frameqa", options=None, answer="dog"), "f:3: problem_type: missing (a record without options "
         "needs one of multiple_choice, numerical, ocr, free_form, regression, grounding, grounded_qa)"),
        (_mc(problem_type="numerical", options=None, answer="three"), "f:3: answer: expected a number, got 'three'"),
        (_mc(problem_type="regression", options=None, answer=0), "f:3: answer: a regression target must be non-zero "
                                                                 "(its reward divides by |answer|)"),
        (_mc(problem_type="ocr", options=None, answer=" "), "f:3: answer: expected a non-empty string, got ' '"),
        (_mc(problem_type="ocr"), "f:3: options: must be null for ocr"),
        (_mc(reasoning=""), "f:3: reasoning: expected a non-empty string, got ''"),
        (_gr(problem_type="grounded_qa", options=["a", "b"], answer="A", segment=None,
             segments=[[0.5, 1.0], [2.0, 1.0]]), "f:3: segments: [1] needs 0 <= start < end, got [2.0, 1.0]"),
        (_gr(problem_type="grounded_qa", options=["a", "b"], answer="A", segment=None, segments=[]),
         "f:3: segments: expected a non-empty list of [start, end] seconds, got []"),
        (_gr(segments=[[1.5, 3.0]]), "f:3: segments: give either segment (one pair) or segments (a list of pairs), "
                                     "not both"),
        (_gr(answer=None, segment=None, segments=[[1.0, 2.0], [3.0, 9.0]]),
         "f:3: segments: [1] end 9.0 exceeds duration 4.0"),
        (_mc(fps=0), "f:3: fps: expected a positive number, got 0"),
        (_mc(duration="2"), "f:3: duration: expected a positive number, got '2'"),
        (_mc(id=""), "f:3: id: expected a non-empty string, got ''"),
        (_mc(segment=[0.0, 1.0]), "f:3: segment: must be null for multiple_choice"),
        (_mc(meta=[1]), "f:3: meta: expected an object, got list"),
        (_mc(colour="red"), "f:3: colour: unknown field"),
        ({k: v for k, v in _mc().items() if k != "question"}, "f:3: question: missing"),
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
        f"{path}:4: skipped: answer: expected one of A, B, C, D, got 'Z' (id 'r1')",
        f"{path}:5: skipped: video: file not found: {missing} (id 'r2')",
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


# ---- the open schema (issue 14, problem 5) ---------------------------------------------------------------------


def test_open_schema_types_options_segments_reasoning(tree):
    """Free task names, 2- and 5-option questions, "A. " prefixes removed once, several segments, numerical /
    OCR / free-form / regression answers and a reasoning field; a round trip through write/read keeps them."""
    objs = [
        {"id": "t1", "video": "videos/a.webm", "question": "Is it played forward?", "task": "transition",
         "options": ["A. forward", "B. backward"], "answer": "B"},
        {"id": "n1", "video": "videos/a.webm", "question": "Why?", "task": "causal", "problem_type": "grounded_qa",
         "options": ["a", "b", "c", "d", "e"], "answer": "(E)", "segments": [[0.5, 1.25], [2.0, 3.0]],
         "duration": 4.0, "reasoning": "The man drops the cup, so it breaks."},
        {"id": "c1", "video": "videos/a.webm", "question": "How many?", "problem_type": "numerical", "answer": 3},
        {"id": "o1", "video": "videos/a.webm", "question": "What does the sign say?", "problem_type": "ocr",
         "answer": " STOP "},
        {"id": "f1", "video": "videos/a.webm", "question": "Describe it.", "problem_type": "free_form",
         "task": "caption", "answer": "a dog runs"},
        {"id": "r1", "video": "videos/a.webm", "question": "How far (m)?", "problem_type": "regression",
         "answer": "12.5"},
        {"id": "g1", "video": "videos/a.webm", "question": "When?", "problem_type": "grounding",
         "segments": [[1.0, 2.0], [3.0, 3.5]]},
    ]
    recs = [VideoQARecord.from_json(o, f"x:{k}") for k, o in enumerate(objs, 1)]
    t1, n1, c1, o1, f1, r1, g1 = recs
    assert (t1.problem_type, t1.task, t1.options, t1.answer) == ("multiple_choice", "transition",
                                                                  ["forward", "backward"], "B")
    assert (n1.answer, n1.segments, n1.segment, n1.reasoning) == ("E", [[0.5, 1.25], [2.0, 3.0]], None,
                                                                  "The man drops the cup, so it breaks.")
    assert (c1.task, c1.answer, o1.answer, f1.task, r1.answer) == ("numerical", "3", "STOP", "caption", "12.5")
    assert g1.answer == "[1.0, 3.5]" and g1.segments == [[1.0, 2.0], [3.0, 3.5]]
    assert (t1.fps, t1.duration, t1.source, t1.split, t1.where) == (None, None, "videos/a.webm", None, "x:1")
    path = tree / "open.jsonl"
    write_records(path, recs)
    back = read_records(path, strict=True)
    assert [b.to_json() for b in back] == [dict(r.to_json(), video=str(tree / "videos" / "a.webm")) for r in recs]
    assert json.loads(path.read_text().splitlines()[1])["segments"] == [[0.5, 1.25], [2.0, 3.0]]
    assert "problem_type" not in json.loads(path.read_text().splitlines()[0])  # inferred: multiple_choice


def test_option_prefixes_only_when_every_option_has_its_letter():
    mc = lambda opts: VideoQARecord.from_json(_mc(options=opts), "x:1").options  # noqa: E731
    assert mc(["A. up", "B) down", "(C) left", "D: right"]) == ["up", "down", "left", "right"]
    assert mc(["A. Lincoln", "Washington", "Grant", "Lee"]) == ["A. Lincoln", "Washington", "Grant", "Lee"]
    assert mc(["B. up", "A. down", "C. left", "D. right"]) == ["B. up", "A. down", "C. left", "D. right"]


def test_synthetic_records_keep_their_bytes(tree):
    """A synthetic record (no problem_type/segments/reasoning) is written with exactly its old fields."""
    for obj in (_mc(), _gr()):
        rec = VideoQARecord.from_json(obj, "x:1")
        assert list(rec.to_json()) == list(obj) and rec.to_json() == obj
    assert VideoQARecord.from_json(_gr(), "x:1").problem_type == "grounding"
    assert VideoQARecord.from_json(_mc(), "x:1").problem_type == "multiple_choice"


# ---- record identity and reading that never crashes (problems 2, 3) -----------------------------------------------


def test_duplicate_id_reported_with_both_positions(tree):
    path = tree / "d.jsonl"
    path.write_text("\n".join(json.dumps(o) for o in [_mc(), _mc(id="r1"), _mc(question="again")]) + "\n")
    report = SkipReport()
    assert [r.id for r in read_records(path, report=report)] == ["r0", "r1"]
    assert [s.to_json() for s in report.entries] == [
        {"stage": "", "file": str(path), "line": 3, "id": "r0", "reason": "duplicate_id",
         "message": f"id: duplicate id 'r0' (first at {path}:1)"}]
    with pytest.raises(RecordError) as ei:
        read_records(path, strict=True)
    assert str(ei.value) == f"{path}:3: id: duplicate id 'r0' (first at {path}:1)"


def test_duplicate_id_across_the_splits_of_a_dataset(tree):
    """An id of an earlier split (train < val < test) repeated in a later one is a duplicate of that line."""
    import types

    from dvr1.train.job import records

    for split, ids in (("train", ["r0", "r1"]), ("val", ["r2"]), ("test", ["r3", "r1"])):
        (tree / f"{split}.jsonl").write_text("\n".join(json.dumps(_mc(id=i)) for i in ids) + "\n")
    cfg = types.SimpleNamespace(data=types.SimpleNamespace(root=str(tree), strict=False))
    report = SkipReport()
    assert [r.id for r in records(cfg, "test", report)] == ["r3"]
    assert [(s.line, s.id, s.message) for s in report.entries] == [
        (2, "r1", f"id: duplicate id 'r1' (first at {tree / 'train.jsonl'}:2)")]
    assert [r.id for r in records(cfg, "train")] == ["r0", "r1"]  # the first occurrence stays


def test_invalid_utf8_line_is_skipped_not_fatal(tree, caplog):
    path = tree / "u.jsonl"
    path.write_bytes(json.dumps(_mc()).encode() + b"\n" + b'{"id": "bad\xff\xfe"}\n' + json.dumps(_mc(id="r1")).encode()
                     + b"\n")
    report = SkipReport()
    with caplog.at_level(logging.WARNING, logger="dvr1.data"):
        assert [r.id for r in read_records(path, report=report)] == ["r0", "r1"]
    assert caplog.records[-1].getMessage() == f"{path}:2: skipped: utf8: invalid UTF-8 at byte 11 of the line"
    assert report.counts() == {"invalid_utf8": 1} and report.summary(2) == {
        "n_read": 3, "n_used": 2, "n_skipped": {"invalid_utf8": 1}}
    with pytest.raises(RecordError, match=r"u.jsonl:2: utf8: invalid UTF-8 at byte 11 of the line$"):
        read_records(path, strict=True)


def test_skip_report_file_and_reasons(tree):
    path = tree / "m.jsonl"
    lines = [json.dumps(_mc()), "{broken", json.dumps(_mc(id="r1", answer="Z")),
             json.dumps(_mc(id="r2", video="videos/missing.webm"))]
    path.write_text("\n".join(lines) + "\n")
    out = tree / "run" / "skipped.jsonl"
    for _ in range(2):  # a rerun does not repeat the entries
        report = SkipReport(str(out), stage="eval_x")
        read_records(path, report=report)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["stage"], r["line"], r["id"], r["reason"]) for r in rows] == [
        ("eval_x", 2, None, "invalid_json"), ("eval_x", 3, "r1", "invalid_record"), ("eval_x", 4, "r2", "missing_video")]
    assert report.describe() == f"1 invalid_json, 1 invalid_record, 1 missing_video (listed in {out})"


def test_json_schema_file_validates_records(tree):
    """dvr1/data/record.schema.json (package data) accepts the records the reader accepts, and rejects what it can
    express (unknown field, one option, options on OCR, a grounding record without segments)."""
    import jsonschema

    import dvr1.data

    with open(os.path.join(os.path.dirname(dvr1.data.__file__), "record.schema.json")) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    good = [_mc(), _gr(), _mc(options=["A. x", "B. y"], answer="A", task="action"),
            {"id": "n", "video": "v", "question": "q", "problem_type": "numerical", "answer": 3},
            {"id": "g", "video": "v", "question": "q", "problem_type": "grounded_qa", "options": list("abcde"),
             "answer": "E", "segments": [[0, 1], [2, 3]], "reasoning": "because"}]
    for obj in good:
        VideoQARecord.from_json(obj, "x:1")
        assert not list(v.iter_errors(obj)), obj
    bad = [_mc(colour="red"), _mc(options=["a"]), _mc(problem_type="ocr", answer="x"),
           {"id": "g", "video": "v", "question": "q", "problem_type": "grounding"}]
    for obj in bad:
        with pytest.raises(RecordError):
            VideoQARecord.from_json(obj, "x:1")
        assert list(v.iter_errors(obj)), obj
