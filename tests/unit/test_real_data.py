"""Real data, safely (issue 14): a user's mixed JSONL — good records of several problem types and task names,
2- and 5-option questions, multi-segment grounding, and every kind of bad line and bad video — goes through
`dvr1 data`, `make-tiny`, `sft`, `train`, `eval` and `main` (in-process `dvr1.cli.main`, tiny settings):

- every command exits 0, every good record is used, every bad one is in `<run_dir>/skipped.jsonl` with its reason,
  and the counts (`n_read`, `n_used`, `n_skipped`) are in the eval JSON and each stage's records.json;
- the bytes of the user's data directory are unchanged after every command (dvr1 never writes into it);
- a directory that is neither dvr1's nor a dataset, a file with no usable record, a bad config key, a missing config
  file or model: one line on stderr and exit code 2.
"""

import hashlib
import json
import os

import numpy as np
import pytest

from dvr1 import cli
from dvr1.data.build import DataRootError, build_dataset, write_webm

GOOD = [
    {"id": "mc2", "video": "videos/a.webm", "question": "Is the clip played forward?", "task": "transition",
     "options": ["A. yes", "B. no"], "answer": "A"},
    {"id": "mc5", "video": "videos/b.webm", "question": "What does the man do?", "task": "action",
     "options": ["run", "jump", "sit", "wave", "swim"], "answer": "D",
     "reasoning": "He raises his hand and moves it side to side."},
    {"id": "gqa", "video": "videos/a.webm", "question": "Why does the cup fall?", "task": "causal",
     "problem_type": "grounded_qa", "options": ["a", "b", "c", "d", "e"], "answer": "B",
     "segments": [[0.0, 0.5], [1.0, 1.5]], "duration": 2.0},
    {"id": "gr", "video": "videos/b.webm", "question": "When is the ball visible?", "problem_type": "grounding",
     "segments": [[0.2, 0.8], [1.2, 1.9]]},
    {"id": "num", "video": "videos/a.webm", "question": "How many cups?", "task": "count",
     "problem_type": "numerical", "answer": 3},
    {"id": "ocr", "video": "videos/b.webm", "question": "What does the sign say?", "problem_type": "ocr",
     "answer": "STOP"},
    {"id": "ff", "video": "videos/a.webm", "question": "Describe the scene.", "problem_type": "free_form",
     "answer": "a cup falls off a table"},
    {"id": "reg", "video": "videos/b.webm", "question": "How far does it roll (m)?", "problem_type": "regression",
     "answer": "2.5"},
    {"id": "syn", "video": "videos/a.webm", "question": "Is the clip played forward or in reverse?",
     "options": ["played forward", "played in reverse", "frozen", "boomerang"], "answer": "B",
     "task": "arrow_of_time", "segment": None, "fps": 8.0, "duration": 2.0, "source": "s", "split": "train",
     "meta": {"reversed": True}},
]
# (line text or bytes, reason): every way a line can be bad
BAD = [
    (b'{"id": "utf", "question": "caf\xe9"}', "invalid_utf8"),
    ('{"id": "broken", "video": ', "invalid_json"),
    (json.dumps({"id": "nofield", "video": "videos/a.webm"}), "invalid_record"),
    (json.dumps({"id": "badval", "video": "videos/a.webm", "question": "q", "options": ["x", "y"], "answer": "C"}),
     "invalid_record"),
    (json.dumps({"id": "mc2", "video": "videos/b.webm", "question": "same id, other video", "options": ["x", "y"],
                 "answer": "A"}), "duplicate_id"),
    (json.dumps({"id": "novideo", "video": "videos/missing.webm", "question": "q", "options": ["x", "y"],
                 "answer": "A"}), "missing_video"),
    (json.dumps({"id": "corrupt", "video": "videos/corrupt.webm", "question": "q", "options": ["x", "y"],
                 "answer": "A"}), "corrupt_video"),
    (json.dumps({"id": "long", "video": "videos/a.webm", "question": "why " * 3000, "options": ["x", "y"],
                 "answer": "A"}), "prompt_too_long"),
]
READ_REASONS = {"invalid_utf8", "invalid_json", "invalid_record", "duplicate_id", "missing_video"}
TINY = ["log.wandb=false", "log.progress=false", "model.max_prompt_tokens=1500", "video.num_frames=4",
        "video.max_pixels=3136", "sft.steps=3", "sft.batch_size=4", "sft.warmup=0", "rl.steps=1",
        "rl.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4", "eval.max_new_tokens=4",
        "eval.split=train", "model.tokenizer_vocab=400", "model.tiny_copy_steps=0", "model.tiny_answer_steps=0",
        "model.tiny_reading_steps=0",
        "model.tiny_vision_steps=0"]


def _tree_bytes(root) -> dict:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = (hashlib.sha256(fh.read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("user") / "mine"
    (root / "videos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_webm(str(root / "videos" / f"{name}.webm"), rng.integers(0, 255, (16, 56, 56, 3), dtype=np.uint8), 8)
    (root / "videos" / "corrupt.webm").write_bytes(b"\x1a\x45\xdf\xa3 not a video" * 20)
    lines = [json.dumps(g).encode() for g in GOOD] + [b if isinstance(b, bytes) else b.encode() for b, _ in BAD]
    (root / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return root


def _dvr1(*args, ov=()):
    return cli.main([*args, "-c", "examples/tiny_cpu.yaml", *TINY, *ov])


def test_every_command_on_user_data_reports_bad_records_and_never_writes(user_data, tmp_path, parallel_state_1,
                                                                         capsys):
    before = _tree_bytes(user_data)
    run = tmp_path / "run"
    ov = [f"data.root={user_data}", f"run_dir={run}"]
    assert _dvr1("data", ov=ov) == 0
    assert capsys.readouterr().out.strip() == str(user_data)  # nothing built
    assert _dvr1("make-tiny", ov=ov) == 0
    # the tokenizer was trained on whole chat prompts: the fixed system header is a few merged tokens, not ~25
    # near-characters ("s", "y", "st", "e", "m", ... as when only the questions were its training text)
    from transformers import AutoTokenizer

    from dvr1.models.tokenizer import SYSTEM_PROMPT

    header = AutoTokenizer.from_pretrained(run / "tiny_init")(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n",
                                                             add_special_tokens=False)["input_ids"]
    assert len(header) <= 14, len(header)  # 11 here; 30 with the questions alone
    assert _dvr1("sft", ov=ov) == 0
    assert _dvr1("train", ov=ov) == 0
    assert _dvr1("eval", "--model", str(run / "sft" / "hf"), "--name", "mixed", ov=ov) == 0
    assert _dvr1("main", ov=ov) == 0  # stages already finished: data check, tiny model, both evals
    assert _tree_bytes(user_data) == before

    n_good = len(GOOD)
    ev = json.loads((run / "eval_mixed.json").read_text())
    want_skipped = {"invalid_utf8": 1, "invalid_json": 1, "invalid_record": 2, "duplicate_id": 1,
                    "missing_video": 1, "corrupt_video": 1, "prompt_too_long": 1}
    assert (ev["n_read"], ev["n_used"], ev["n"], ev["n_skipped"], ev["skipped"]) == (
        n_good + len(BAD), n_good, n_good, want_skipped, len(BAD))
    assert sorted(s["id"] for s in ev["samples"]) == sorted(g["id"] for g in GOOD)
    # "outputs": every scored record once, its accuracy the per-record score the total averages
    assert sorted(o["id"] for o in ev["outputs"]) == sorted(g["id"] for g in GOOD)
    assert sum(o["accuracy"] for o in ev["outputs"]) / n_good == pytest.approx(ev["accuracy"], abs=1e-12)
    assert [o["response"] for o in ev["outputs"][:len(ev["samples"])]] == [s["response"] for s in ev["samples"]]
    assert set(ev["per_task"]) == {"transition", "action", "causal", "grounding", "count", "ocr", "free_form",
                                   "regression", "arrow_of_time"}
    # SFT drew 12 records of the 11 readable ones: every good one used, the corrupt and the over-long one skipped
    sft = json.loads((run / "sft" / "records.json").read_text())
    assert sft == {"split": "train", "n_read": n_good + len(BAD), "n_used": n_good, "n_skipped": want_skipped}
    rl = json.loads((run / "rl" / "records.json").read_text())
    assert rl["n_read"] == n_good + len(BAD) and {k: v for k, v in rl["n_skipped"].items()
                                                 if k in READ_REASONS} == {k: v for k, v in want_skipped.items()
                                                                            if k in READ_REASONS}
    rows = [json.loads(x) for x in (run / "skipped.jsonl").read_text().splitlines()]
    for stage in ("sft", "eval_mixed"):
        got = sorted((r["line"], r["reason"]) for r in rows if r["stage"] == stage)
        assert got == [(n_good + 1 + k, reason) for k, (_, reason) in enumerate(BAD)], stage
        assert all(r["file"] == str(user_data / "train.jsonl") and r["message"] for r in rows)
    by_reason = {r["reason"]: r for r in rows if r["stage"] == "eval_mixed"}
    assert by_reason["duplicate_id"]["message"] == (f"id: duplicate id 'mc2' (first at {user_data / 'train.jsonl'}:1)")
    assert by_reason["corrupt_video"]["id"] == "corrupt" and by_reason["prompt_too_long"]["id"] == "long"
    assert by_reason["prompt_too_long"]["message"].startswith("prompt of ") and by_reason["prompt_too_long"][
        "message"].endswith("exceeds model.max_prompt_tokens=1500 even with one temporal patch of frames")
    # SFT targets: one record's own reasoning, one from construction metadata, the rest answer-only
    sft_rows = [json.loads(x) for x in (run / "metrics" / "sft.jsonl").read_text().splitlines()]
    total = {k: sum(r[f"sft/target_{k}"] for r in sft_rows) for k in ("reasoning", "meta", "answer_only")}
    assert sum(total.values()) == 12 and total["reasoning"] >= 1 and total["meta"] >= 1


def test_build_refuses_user_data_and_foreign_directories(user_data, tmp_path, capsys):
    before = _tree_bytes(user_data)
    with pytest.raises(DataRootError, match="holds records dvr1 did not build"):
        build_dataset(str(user_data), n_train=1, n_val=0, n_test=0, tasks=("counting",), progress=False)
    assert _tree_bytes(user_data) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert cli.main(["data", f"data.root={other}", f"run_dir={tmp_path / 'r'}", "log.wandb=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"dvr1 data: {other}: neither a dataset (no *.jsonl records, no manifest.json) nor empty; point "
                       "data.root at your records' directory ({train,val,test}.jsonl), or at a new or empty directory "
                       "for dvr1's synthetic set")
    assert (other / "notes.txt").read_text() == "mine" and os.listdir(other) == ["notes.txt"]


def test_no_usable_record_and_user_errors_exit_2_with_one_line(user_data, tmp_path, capsys, parallel_state_1):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "test.jsonl").write_text("{oops\n" + json.dumps({"id": "x"}) + "\n")
    model = str(tmp_path / "run" / "tiny_init")  # not needed: the records fail first
    os.makedirs(model)
    open(os.path.join(model, "config.json"), "w").close()
    cases = [
        (["eval", "--model", model, f"data.root={bad}", f"run_dir={tmp_path / 'run'}", "log.wandb=false"],
         f"dvr1 eval: {bad / 'test.jsonl'}: no usable records (skipped: 1 invalid_json, 1 invalid_record (listed in "
         f"{tmp_path / 'run' / 'skipped.jsonl'}))"),
        (["data", "rl.stepz=3"], "dvr1 data: Key 'stepz' not in 'RLConfig'. Did you mean: 'steps'?"),
        (["data", "-c", str(tmp_path / "nope.yaml")], f"dvr1 data: config file not found: {tmp_path / 'nope.yaml'}"),
        (["make-tiny", f"data.root={user_data}", f"model.path={tmp_path / 'nomodel'}", f"run_dir={tmp_path / 'r2'}"],
         f"dvr1 make-tiny: model.path={tmp_path / 'nomodel'}: not a Hugging Face checkpoint directory (no "
         "config.json)"),
        (["eval", "--model", model, "data.strict=true", "eval.split=train", f"data.root={user_data}",
          f"run_dir={tmp_path / 'r3'}", "log.wandb=false"],
         f"dvr1 eval: {user_data / 'train.jsonl'}:{len(GOOD) + 1}: utf8: invalid UTF-8 at byte 30 of the line"),
    ]
    for argv, msg in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == msg
        assert "Traceback" not in "\n".join(err)
