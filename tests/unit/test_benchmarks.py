"""Benchmark metric sets (docs/ALGORITHMS.md §10.2) on hand-worked predictions; NExT-GQA's grounding metrics against a
plain transcription of its official evaluation (doc-doc/NExT-GQA code/TempGQA/eval_ground.py); the paper's rows in
the table; Video-R1's prompt per problem type; the resumable benchmark eval."""

import json

import pytest

from dvr1.data.prompts import format_question
from dvr1.data.schema import VideoQARecord
from dvr1.train.benchmarks import (PAPER_ROWS, benchmark_metrics, find_benchmarks, format_benchmark_table,
                                   grounding_overlap, nextgqa_metrics, prediction_row)


def _rec(rid, answer="B", problem_type="multiple_choice", task="t", segments=None, meta=None, options=("x", "y", "z")):
    return VideoQARecord(id=rid, video="v.mp4", question="Q?", options=list(options) if options else None,
                         answer=answer, task=task, segment=None, fps=None, duration=10.0, source="s", split="test",
                         meta=meta or {}, problem_type=problem_type, segments=segments)


def _resp(answer, glue=None):
    text = f"<think>t</think><answer>{answer}</answer>"
    return text + (f"<glue>[{', '.join(f'({s}, {e})' for s, e in glue)}]</glue>" if glue else "")


# ---- NExT-GQA: the official evaluation, transcribed as published (reference only) --------------------------------

def _official_get_tIoU(loc, span):
    if span[0] == span[-1]:
        if loc[0] <= span[0] and span[0] <= loc[1]:
            return 0, 1
        else:
            return 0, 0
    span_u = (min(loc[0], span[0]), max(loc[-1], span[-1]))
    span_i = (max(loc[0], span[0]), min(loc[-1], span[-1]))
    dis_i = (span_i[1] - span_i[0])
    if span_u[1] > span_u[0]:
        IoU = dis_i / (span_u[1] - span_u[0])
    else:
        IoU = 0.0
    if span[-1] > span[0]:
        IoP = dis_i / (span[-1] - span[0])
    else:
        IoP = 0.0
    return IoU, IoP


def _official_eval_ground(gt_ground, pred_ground, pred_qa):
    mIoU, mIoP = 0, 0
    cnt, cqt = 0, 0
    crt3, crt5 = 0, 0
    crtp3, crtp5 = 0, 0
    for vid, anno in gt_ground.items():
        for qid, locs in anno['location'].items():
            if not (f'{vid}_{qid}' in pred_ground):
                continue
            max_tIoU, max_tIoP = 0, 0
            for loc in locs:
                span = pred_ground[f'{vid}_{qid}']
                tIoU, tIoP = _official_get_tIoU(loc, span)
                if tIoU > max_tIoU:
                    max_tIoU = tIoU
                if tIoP > max_tIoP:
                    max_tIoP = tIoP
            if max_tIoP >= 0.3:
                crtp3 += 1
                if max_tIoP >= 0.5:
                    crtp5 += 1
                    kid = f'{vid}_{qid}'
                    if pred_qa[kid]['answer'] == pred_qa[kid]['prediction']:
                        cqt += 1
            if max_tIoU >= 0.3:
                crt3 += 1
                if max_tIoU >= 0.5:
                    crt5 += 1
            cnt += 1
            mIoU += max_tIoU
            mIoP += max_tIoP
    return {"Acc@GQA": cqt / cnt * 100, "mIoP": mIoP / cnt * 100, "IoP@0.3": crtp3 / cnt * 100,
            "IoP@0.5": crtp5 / cnt * 100, "mIoU": mIoU / cnt * 100, "IoU@0.3": crt3 / cnt * 100,
            "IoU@0.5": crt5 / cnt * 100}


# (ground-truth segments, predicted glue, predicted letter) with the key "B"
NEXTGQA_CASES = [
    ([[2.0, 6.0]], [(2.0, 6.0)], "B"),  # exact: IoU 1, IoP 1
    ([[0.0, 4.0], [6.0, 10.0]], [(3.0, 7.0)], "B"),  # per seg IoU 1/7, IoP 1/4: max 1/7, 1/4
    ([[0.0, 2.0]], [(5.0, 8.0)], "B"),  # disjoint: negative overlap never counts -> 0, 0
    ([[1.0, 9.0]], [(4.0, 4.0)], "B"),  # zero-length span inside: IoU 0, IoP 1
    ([[1.0, 3.0]], [(3.0, 3.0)], "A"),  # zero-length on the boundary: IoP 1, answer wrong
    ([[0.0, 10.0]], [(2.0, 4.0), (6.0, 9.0)], "B"),  # first glue segment is the span: IoU 0.2, IoP 1
    ([[4.0, 8.0]], [(0.0, 6.0)], "C"),  # IoU 2/8, IoP 2/6, wrong answer
    ([[4.0, 8.0]], [(3.0, 8.0)], "B"),  # IoU 4/5 (>=0.5), IoP 4/5
]
HAND = [(1.0, 1.0), (1 / 7, 1 / 4), (0.0, 0.0), (0.0, 1.0), (0.0, 1.0), (0.2, 1.0), (0.25, 1 / 3), (0.8, 0.8)]


def test_grounding_overlap_by_hand_and_official():
    for (gt, glue, _), (iou, iop) in zip(NEXTGQA_CASES, HAND):
        got = grounding_overlap(list(glue[0]), gt)
        assert got == pytest.approx((iou, iop)), (gt, glue)
        off = [_official_get_tIoU(loc, list(glue[0])) for loc in gt]
        assert got == pytest.approx((max(0, *(x[0] for x in off)), max(0, *(x[1] for x in off))))
    assert grounding_overlap(None, [[0, 1]]) == (0.0, 0.0)


def test_nextgqa_metrics_equal_the_official_evaluation():
    rows, gt, pred_ground, pred_qa = [], {}, {}, {}
    for k, (segs, glue, letter) in enumerate(NEXTGQA_CASES):
        vid, qid = f"v{k}", str(k)
        rec = _rec(f"{vid}_{qid}", "B", "grounded_qa", segments=segs, options=("a", "b", "c", "d", "e"))
        rows.append(prediction_row(rec, _resp(letter, glue)))
        gt[vid] = {"duration": 10.0, "location": {qid: segs}}
        pred_ground[f"{vid}_{qid}"] = list(glue[0])
        pred_qa[f"{vid}_{qid}"] = {"answer": 1, "prediction": "ABCDE".index(letter)}
    got = nextgqa_metrics(rows)
    want = _official_eval_ground(gt, pred_ground, pred_qa)
    for k, v in want.items():
        assert got[k] == pytest.approx(v), k
    # by hand: 6 of 8 answers right; Acc@GQA: right and IoP >= 0.5: cases 0, 1? (IoP 1/4: no), 3, 5, 7 -> 4 of 8
    assert got["Acc@QA"] == pytest.approx(75.0) and got["Acc@GQA"] == pytest.approx(50.0)
    assert got["mIoU"] == pytest.approx(100 * sum(x for x, _ in HAND) / 8)
    assert got["IoU@0.5"] == pytest.approx(25.0) and got["IoP@0.3"] == pytest.approx(75.0)
    # a response without a readable glue block: scored 0 (the official script would skip the question)
    rows.append(prediction_row(_rec("bad", "B", "grounded_qa", segments=[[0, 1]], options="abcde"), _resp("B")))
    assert rows[-1]["span"] is None
    assert nextgqa_metrics(rows)["mIoU"] == pytest.approx(100 * sum(x for x, _ in HAND) / 9)


def test_seed_bench_r1_levels_and_paper_rows():
    recs = [("L1", "B"), ("L1", "A"), ("L2", "B"), ("L3", "C"), ("L3", "B"), ("L3", "B")]
    rows = [prediction_row(_rec(f"r{k}", "B", meta={"level": lv}), _resp(a)) for k, (lv, a) in enumerate(recs)]
    rows.append({"id": "gone", "task": "t", "skipped": "corrupt_video", "message": ""})
    res = benchmark_metrics("seed-bench-r1", rows)
    assert res["metrics"] == pytest.approx({"L1": 50.0, "L2": 100.0, "L3": 200 / 3, "overall": 400 / 6})
    assert res["columns"] == ["L1", "L2", "L3", "overall"] and res["n"] == 6
    table = format_benchmark_table([{"benchmark": "seed-bench-r1", "name": "ours", **res}])
    lines = table.splitlines()
    assert lines[0] == "| model | L1 | L2 | L3 | overall |"
    assert lines[2] == "| paper 3B: base | 31.3 | 32.7 | 27.0 | – |"
    assert lines[6] == "| paper 3B: Reg-GRPO + DA-Aug | 48.1 | 51.1 | 44.0 | – |"
    assert lines[-1] == "| ours | 50.0 | 100.0 | 66.7 | 66.7 |"
    assert len(lines) == 2 + len(PAPER_ROWS["seed-bench-r1"]) + 1


def test_duration_groups_mvbench_tgif_and_generic():
    lvb = [("15", "B"), ("600", "A"), ("60", "B"), ("3600", "B"), ("15", "A")]
    rows = [prediction_row(_rec(f"l{k}", meta={"duration_group": g}), _resp(a)) for k, (g, a) in enumerate(lvb)]
    res = benchmark_metrics("longvideobench", rows)
    assert res["columns"] == ["overall", "15", "60", "600", "3600"]
    assert res["metrics"] == pytest.approx({"overall": 60.0, "15": 50.0, "60": 100.0, "600": 0.0, "3600": 100.0})
    mme = [("long", "B"), ("short", "B"), ("medium", "A"), ("short", "A")]
    rows = [prediction_row(_rec(f"m{k}", meta={"duration_group": g}), _resp(a)) for k, (g, a) in enumerate(mme)]
    res = benchmark_metrics("video-mme", rows)
    assert res["columns"] == ["overall", "short", "medium", "long"]
    assert res["metrics"] == pytest.approx({"overall": 50.0, "short": 50.0, "medium": 0.0, "long": 100.0})
    # MVBench: mean over tasks, not over records: (100 + 50 + 0) / 3
    mv = [("action", "B"), ("object", "B"), ("object", "A"), ("scene", "C"), ("scene", "A"), ("scene", "A")]
    rows = [prediction_row(_rec(f"v{k}", task=t), _resp(a)) for k, (t, a) in enumerate(mv)]
    res = benchmark_metrics("mvbench", rows)
    assert res["metrics"] == pytest.approx({"mean": 50.0, "action": 100.0, "object": 50.0, "scene": 0.0})
    assert res["columns"] == ["mean", "action", "object", "scene"]
    # TGIF-QA per task (Count numerical: Video-R1's decimal-mark rule) and the generic set: regression scores MRA
    rows = [prediction_row(_rec("c1", "3", "numerical", task="Count", options=None), _resp("3")),
            prediction_row(_rec("c2", "3", "numerical", task="Count", options=None), _resp("3.0")),
            prediction_row(_rec("a1", "B", task="Action"), _resp("B"))]
    res = benchmark_metrics("tgif-qa", rows)
    assert res["metrics"] == pytest.approx({"Action": 100.0, "Count": 50.0, "overall": 200 / 3})
    rows = [prediction_row(_rec("g1", "10", "regression", task="dist", options=None), _resp("11")),
            prediction_row(_rec("g2", "B", task="mc"), _resp("B"))]
    assert rows[0]["score"] == pytest.approx(0.8) and rows[0]["accuracy"] == pytest.approx(0.9)
    res = benchmark_metrics("vsi-bench", rows)
    assert res["metrics"] == pytest.approx({"dist": 80.0, "mc": 100.0, "overall": 90.0})


def test_all_table_has_each_benchmarks_headline():
    seed = {"benchmark": "seed-bench-r1", "name": "rl", "metrics": {"L1": 40.0, "L2": 41.0, "L3": 42.0},
            "columns": ["L1", "L2", "L3", "overall"], "headline": ["L1", "L2", "L3"]}
    mv = {"benchmark": "mvbench", "name": "rl", "metrics": {"mean": 55.5}, "columns": ["mean"], "headline": ["mean"]}
    lines = format_benchmark_table([seed, mv]).splitlines()
    assert lines[0] == "| model | seed-bench-r1/L1 | seed-bench-r1/L2 | seed-bench-r1/L3 | mvbench/mean |"
    assert lines[2] == "| paper 3B: base | 31.3 | 32.7 | 27.0 | – |"
    assert lines[-1] == "| rl | 40.0 | 41.0 | 42.0 | 55.5 |"


def test_find_benchmarks(tmp_path):
    for name, bench in (("a", "nextgqa"), ("b", None), ("c", "x")):
        (tmp_path / name).mkdir()
        m = {"format": "video-r1" if bench is None else bench, "benchmark": bench, "split": "val"}
        (tmp_path / name / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "c" / "manifest.json").write_text(json.dumps({"seed": 0, "splits": {}}))  # dvr1's synthetic set
    (tmp_path / "d").mkdir()
    assert [(b, d.rsplit("/", 1)[1]) for b, d, _ in find_benchmarks(str(tmp_path))] == [("nextgqa", "a"),
                                                                                         ("video-r1", "b")]
    assert [b for b, _, _ in find_benchmarks(str(tmp_path / "a"))] == ["nextgqa"]


# ---- Video-R1's prompts -------------------------------------------------------------------------------------------

VIDEO_R1_TAIL = (
    "\nPlease think about this question as if you were a human pondering deeply. Engage in an internal dialogue using "
    "expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it down', etc, or other natural "
    "language thought expressions It's encouraged to include self-reflection or verification in the reasoning "
    "process. Provide your detailed reasoning between the <think> </think> tags, and then give your final answer "
    "between the <answer> </answer> tags."
)


def test_video_r1_prompts_per_problem_type():
    r = _rec("m", "B", options=("run", "sit"))
    r.question = "What does he do?"
    assert format_question(r, style="video_r1") == (
        "What does he do?Options:\nA. run\nB. sit\n" + VIDEO_R1_TAIL +
        " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags.")
    n = _rec("n", "3", "numerical", options=None)
    assert format_question(n, style="video_r1") == "Q?" + VIDEO_R1_TAIL + (
        " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.")
    o = _rec("o", "STOP", "ocr", options=None)
    assert format_question(o, style="video_r1", hint="a red sign") == "Q?Hint: a red sign\n" + VIDEO_R1_TAIL + (
        " Please transcribe text from the image/video clearly and provide your text answer within the <answer> "
        "</answer> tags.")
    f = _rec("f", "a dog", "free_form", options=None)
    assert format_question(f, style="video_r1").endswith(
        VIDEO_R1_TAIL + " Please provide your text answer within the <answer> </answer> tags.")
    g = _rec("g", "B", "grounded_qa", segments=[[0, 1]], options=("a", "b"))
    assert "<glue>[(start, end), ...]</glue>" in format_question(g, style="video_r1")
    assert format_question(r) == "What does he do?\nA. run\nB. sit" + (  # the synthetic set's template unchanged
        " Output the thinking process in <think> </think> and final answer in <answer> </answer> tags, i.e., "
        "<think> reasoning process here </think><answer> answer here </answer>.")
    with pytest.raises(ValueError, match="style must be one of"):
        format_question(r, style="r1")


# ---- resumable benchmark eval -------------------------------------------------------------------------------------

class _Tok:
    def convert_tokens_to_ids(self, t):
        return 0


class _Engine:
    """Answers record k's prompt with option "AB"[k % 2] (token ids are record indices); counts generated prompts;
    raises after `fail_after` generate calls (a killed eval)."""

    def __init__(self, fail_after=None):
        self.prompts, self.calls, self.fail_after = [], 0, fail_after

    def generate(self, requests, sp, desc=""):
        import types

        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        self.prompts += [r for r in requests]
        return [types.SimpleNamespace(token_ids=[[r]]) for r in requests]


class _Builder:
    skips = None

    def prepare(self, record):
        import types

        if record.id == "r5":
            from dvr1.data.video import VideoError

            raise VideoError("r5.mp4: corrupt")
        return types.SimpleNamespace(request=int(record.id[1:]))


def test_benchmark_eval_resumes_where_it_was_killed(tmp_path, monkeypatch):
    from dvr1.data.schema import SkipReport
    from dvr1.train import evaluate as ev

    monkeypatch.setattr(ev, "decode_response", lambda tok, ids, stop: _resp("AB"[ids[0] % 2]))
    recs = [_rec(f"r{k}", "B", meta={"level": f"L{1 + k % 3}"}) for k in range(11)]
    header = {"model": "m", "n": 11}
    full = ev.evaluate_benchmark(_Engine(), _Builder(), _Tok(), recs, str(tmp_path / "full.jsonl"), header, batch=3)
    assert [r.get("skipped") for r in full].count("corrupt_video") == 1
    path = str(tmp_path / "p.jsonl")
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate_benchmark(_Engine(fail_after=2), _Builder(), _Tok(), recs, path, header, batch=3)
    with open(path, "a") as f:
        f.write('{"id": "r6", "task": "t", "resp')  # the line a kill cut short
    assert len(open(path).read().splitlines()) == 1 + 6 + 1
    again, report = _Engine(), SkipReport()
    builder = _Builder()
    builder.skips = report
    rows = ev.evaluate_benchmark(again, builder, _Tok(), recs, path, header, batch=3)
    assert rows == full
    assert again.prompts == [6, 7, 8, 9, 10]  # only the batches not finished before the kill
    assert [json.loads(x) for x in open(path).read().splitlines()[1:]] == full
    assert [(s.id, s.reason) for s in report.entries] == [("r5", "corrupt_video")]  # re-reported from the file
    assert benchmark_metrics("seed-bench-r1", rows)["metrics"]["overall"] == pytest.approx(40.0)  # r1 r3 r7 r9 / 10
    # another header (model, data, settings): starts again
    other = _Engine()
    ev.evaluate_benchmark(other, _Builder(), _Tok(), recs, path, {"model": "other", "n": 11}, batch=3)
    assert len(other.prompts) == 10
