"""Ablation grids (dvr1.ablate: grid, runner, report): grid expansion, emitted commands, resume-skip through real
subprocesses (a fake `dvr1` script), aggregation over fabricated run directories with known numbers, report and
PNG plots."""

import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dvr1 import ablate
from dvr1.ablate import GridError, aggregate, collect, expand_grid, load_grid
from dvr1.ablate.report import _curve

REPO = Path(__file__).resolve().parents[2]
BASE = str(REPO / "examples" / "smoke.yaml")


def write_grid(tmp_path, body: str, name="g.yaml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body).replace("BASE", BASE).replace("OUT", str(tmp_path / "out")))
    return str(p)


GRID = """\
    name: t
    base: BASE
    out: OUT
    overrides: [rl.steps=2, log.wandb=false]
    arms:
      grpo: [algo.name=grpo, da_aug.enabled=false]
      reg_da: [algo.name=reg_grpo]
    seeds: [3, 1]
    paper_order: [grpo, reg_da]
"""


# ---- grid file -> runs -------------------------------------------------------------------------------------------

def test_expand_grid_order_and_overrides(tmp_path):
    g = load_grid(write_grid(tmp_path, GRID), extra_overrides=["rl.lr=0.1"])
    out = str(tmp_path / "out")
    runs = expand_grid(g)
    assert [(r.arm, r.seed) for r in runs] == [("grpo", 3), ("grpo", 1), ("reg_da", 3), ("reg_da", 1)]
    assert runs[1].run_dir == os.path.join(out, "grpo", "seed1")
    assert runs[1].overrides == ["rl.steps=2", "log.wandb=false", "rl.lr=0.1", "algo.name=grpo",
                                 "da_aug.enabled=false", "seed=1", f"run_dir={out}/grpo/seed1"]
    assert runs[2].overrides == ["rl.steps=2", "log.wandb=false", "rl.lr=0.1", "algo.name=reg_grpo", "seed=3",
                                 f"run_dir={out}/reg_da/seed3"]
    assert g.sft_hf == os.path.join(out, "sft", "sft", "hf")
    ablate.check_configs(g)  # every run's config loads


@pytest.mark.parametrize("extra, message", [
    ("bogus: 1", "unknown key 'bogus' (allowed: arms, base, launcher, name, out, overrides, paper_order, seeds, "
                 "sft, slurm, task)"),
    ("task: dpo", "task: 'dpo' must be one of rl, vidchain"),
    ("task: vidchain", "paper_order: the ordering check is by RL accuracy; a vidchain grid has none"),
    ("sft: {init: x, steps: 3}", "sft: expected a mapping with keys eval, init, overrides"),
])
def test_grid_errors_extra_keys(tmp_path, extra, message):
    p = write_grid(tmp_path, GRID + "    " + extra + "\n")
    with pytest.raises(GridError) as e:
        load_grid(p)
    assert str(e.value) == f"{p}: {message}"


@pytest.mark.parametrize("old, new, message", [
    ("seeds: [3, 1]", "seeds: [3, 3]", "seeds: duplicate seed in [3, 3]"),
    ("seeds: [3, 1]", "seeds: []", "seeds: expected a non-empty list of integers, got []"),
    ("da_aug.enabled=false]", "seed=4]", "arms.grpo[1]: 'seed=4': the ablation runner sets run_dir and seed per run"),
    ("[rl.steps=2,", "[rl.steps,", "overrides[0]: 'rl.steps' is not a key=value override"),
    ("paper_order: [grpo, reg_da]", "paper_order: [grpo, nope]",
     "paper_order: ['grpo', 'nope'] must list distinct arm names from arms"),
    ("  reg_da:", "  reg da:", "arms: 'reg da' is not a valid arm name (letters, digits, _.+-; not 'sft')"),
])
def test_grid_errors(tmp_path, old, new, message):
    p = write_grid(tmp_path, GRID.replace(old, new))
    with pytest.raises(GridError) as e:
        load_grid(p)
    assert str(e.value) == f"{p}: {message}"


def test_bad_config_key_named_before_running(tmp_path):
    p = write_grid(tmp_path, GRID.replace("[algo.name=reg_grpo]", "[algo.nam=reg_grpo]"))
    with pytest.raises(GridError) as e:
        ablate.check_configs(load_grid(p))
    assert str(e.value).startswith(f"{p}: arms.reg_da (seed 3): ConfigKeyError: Key 'nam' not in 'AlgoConfig'.")
    assert "\n" not in str(e.value)


# ---- emitted commands --------------------------------------------------------------------------------------------

def test_emit_commands(tmp_path):
    g = load_grid(write_grid(tmp_path, GRID))
    out = str(tmp_path / "out")
    lines = ablate.emit(g, "commands", launcher="dvr1").splitlines()
    assert lines[2] == (f"dvr1 sft -c {BASE} rl.steps=2 log.wandb=false run_dir={out}/sft && dvr1 eval -c {BASE} "
                        f"--model {out}/sft/sft/hf --name sft rl.steps=2 log.wandb=false run_dir={out}/sft")
    runs = [l for l in lines if l.startswith("test -f")]
    assert len(runs) == 4
    assert runs[3] == (f"test -f {out}/reg_da/seed1/eval_rl.json || {{ dvr1 train -c {BASE} --init {out}/sft/sft/hf "
                       f"rl.steps=2 log.wandb=false algo.name=reg_grpo seed=1 run_dir={out}/reg_da/seed1 && dvr1 eval "
                       f"-c {BASE} --model {out}/reg_da/seed1/rl/hf --name rl rl.steps=2 log.wandb=false "
                       f"algo.name=reg_grpo seed=1 run_dir={out}/reg_da/seed1; }}")
    with pytest.raises(GridError, match="--emit 'json': must be one of commands, sbatch"):
        ablate.emit(g, "json")


def test_emit_honours_the_arm_and_seed_subsets(tmp_path, capsys):
    """`--emit` with `--arms` / `--seeds` prints only those runs (not silently the whole grid); unknown ones and a
    non-integer seed list are one-line errors."""
    path = write_grid(tmp_path, GRID)
    out = str(tmp_path / "out")
    assert ablate.main([path, "--emit", "commands", "--arms", "reg_da", "--seeds", "1", "--launcher", "dvr1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# dvr1 ablation grid 't': 1 runs (1 arms x 1 seeds)"
    assert [l.split(" || ")[0] for l in lines if l.startswith("test -f")] == [f"test -f {out}/reg_da/seed1/eval_rl.json"]
    script = ablate.emit(load_grid(path), "sbatch", "dvr1", seeds=[3])
    assert "#SBATCH --array=0-1\n" in script and "(2 arms x 1 seeds)" in script and "seed1" not in script
    assert ablate.main([path, "--emit", "commands", "--seeds", "0"]) == 2
    assert capsys.readouterr().err == f"dvr1 ablate: --seeds: 0 is not a seed of {path} (3, 1)\n"
    assert ablate.main([path, "--emit", "commands", "--arms", "dapo"]) == 2
    assert capsys.readouterr().err == f"dvr1 ablate: --arms: 'dapo' is not an arm of {path} (grpo, reg_da)\n"
    assert ablate.main([path, "--seeds", "1,x"]) == 2
    assert capsys.readouterr().err == "dvr1 ablate: --seeds 1,x: must be comma-separated integers, e.g. --seeds 0,1\n"


def test_emit_sbatch_array_runs_the_right_task(tmp_path):
    g = load_grid(write_grid(tmp_path, GRID + "    slurm: {partition: gpu, gpus-per-node: 8}\n"))
    script = ablate.emit(g, "sbatch", launcher="echo dvr1")
    assert "#SBATCH --array=0-3\n" in script and "#SBATCH --partition=gpu\n" in script
    assert "#SBATCH --gpus-per-node=8\n" in script
    path = tmp_path / "array.sh"
    path.write_text(script)
    out = str(tmp_path / "out")
    res = subprocess.run(["bash", str(path)], env={**os.environ, "SLURM_ARRAY_TASK_ID": "2"}, capture_output=True,
                         text=True, check=True)
    assert res.stdout.splitlines()[1:] == [
        f"dvr1 train -c {BASE} --init {out}/sft/sft/hf rl.steps=2 log.wandb=false algo.name=reg_grpo seed=3 "
        f"run_dir={out}/reg_da/seed3",
        f"dvr1 eval -c {BASE} --model {out}/reg_da/seed3/rl/hf --name rl rl.steps=2 log.wandb=false "
        f"algo.name=reg_grpo seed=3 run_dir={out}/reg_da/seed3"]


# ---- local execution with a fake dvr1 ---------------------------------------------------------------------------

FAKE_DVR1 = r'''
import json, os, sys
cmd, args = sys.argv[1], sys.argv[2:]
kv = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
run_dir = kv["run_dir"]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps([cmd, os.path.relpath(run_dir, os.environ["FAKE_OUT"])]) + "\n")
if cmd == "sft":
    os.makedirs(f"{run_dir}/sft/hf")
    open(f"{run_dir}/sft/hf/model.safetensors", "w").close()
    open(f"{run_dir}/sft/hf/config.json", "w").write("{}")
elif cmd == "train":
    if os.environ.get("FAKE_CRASH") == run_dir:
        print("boom"); sys.exit(3)
    os.makedirs(f"{run_dir}/rl/hf", exist_ok=True)
    open(f"{run_dir}/rl/hf/model.safetensors", "w").close()
elif cmd == "eval":
    name = args[args.index("--name") + 1]
    json.dump({"accuracy": 0.5, "mean_iou": 0.1, "per_task": {}}, open(f"{run_dir}/eval_{name}.json", "w"))
'''


def _fake_grid(tmp_path, monkeypatch):
    """(grid, its out dir, the fake dvr1 script, the calls log) of GRID run by FAKE_DVR1."""
    g = load_grid(write_grid(tmp_path, GRID))
    out = tmp_path / "out"
    fake = tmp_path / "fake_dvr1.py"
    fake.write_text(FAKE_DVR1)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.setenv("FAKE_OUT", str(out))
    return g, out, fake, calls


def test_run_grid_resume_skip_and_crash(tmp_path, monkeypatch):
    g, out, fake, calls = _fake_grid(tmp_path, monkeypatch)
    monkeypatch.setenv("FAKE_CRASH", str(out / "reg_da" / "seed3"))
    # grpo/seed3 finished earlier; grpo/seed1 trained but not evaluated; reg_da/seed1 has a partial RL checkpoint
    (out / "grpo" / "seed3").mkdir(parents=True)
    (out / "grpo" / "seed3" / "eval_rl.json").write_text("{}")
    (out / "grpo" / "seed1" / "rl" / "hf").mkdir(parents=True)
    (out / "grpo" / "seed1" / "rl" / "hf" / "model.safetensors").write_text("")
    (out / "reg_da" / "seed1" / "rl" / "ckpt").mkdir(parents=True)
    (out / "reg_da" / "seed1" / "rl" / "ckpt" / "latest").write_text("7\n")
    launcher = f"{sys.executable} {fake}"
    msgs = []
    recs = ablate.run_grid(g, launcher=launcher, echo=msgs.append)
    assert [(r["arm"], r["seed"], r["status"]) for r in recs] == [
        ("grpo", 3, "skipped"), ("grpo", 1, "done"), ("reg_da", 3, "failed:train"), ("reg_da", 1, "done")]
    read = lambda: [tuple(json.loads(l)) for l in calls.read_text().splitlines()]
    assert read() == [("sft", "sft"), ("eval", "sft"), ("eval", "grpo/seed1"), ("train", "reg_da/seed3"),
                      ("train", "reg_da/seed1"), ("eval", "reg_da/seed1")]
    assert "[ablate 4/4] reg_da seed 1: train (resuming from RL step 7)" in msgs
    rec = json.loads((out / "reg_da" / "seed3" / "ablate_run.json").read_text())
    assert rec["status"] == "failed:train" and rec["attempts"][0]["rc"] == 3 and rec["seed"] == 3
    assert "boom" in (out / "reg_da" / "seed3" / "ablate.log").read_text()
    assert [r.status for r in collect(g)] == ["done", "done", "failed", "done"]

    # rerun: only the failed run is retried; SFT and finished runs are skipped
    monkeypatch.delenv("FAKE_CRASH")
    calls.write_text("")
    recs = ablate.run_grid(g, launcher=launcher, echo=msgs.append)
    assert [r["status"] for r in recs] == ["skipped", "skipped", "done", "skipped"]
    assert read() == [("train", "reg_da/seed3"), ("eval", "reg_da/seed3")]
    rec = json.loads((out / "reg_da" / "seed3" / "ablate_run.json").read_text())
    assert [(a["stage"], a["rc"]) for a in rec["attempts"]] == [("train", 3), ("train", 0), ("eval", 0)]
    assert rec["status"] == "done"

    # the same out directory with other overrides is refused, naming the run directory
    g2 = load_grid(g.path, extra_overrides=["rl.lr=0.5"])
    with pytest.raises(GridError, match=f"^{out}/grpo/seed1: made with overrides "):
        ablate.run_grid(g2, launcher=launcher, echo=msgs.append)
    g.sft_init = str(tmp_path / "other_sft")
    with pytest.raises(GridError) as e:
        ablate.run_grid(g, launcher=launcher, echo=msgs.append)
    assert str(e.value) == (f"{out}/grpo/seed1: trained from {out}/sft/sft/hf but the grid now starts from "
                            f"{tmp_path}/other_sft; use another --out or delete the run directory")


def test_run_locks_keep_two_runners_off_one_run(tmp_path, monkeypatch):
    """A run another live runner holds is skipped (status "locked"), a dead runner's lock is replaced, another host's
    lock is respected, every lock this runner took is gone afterwards, and the shared SFT's lock is waited for."""
    import socket

    from dvr1.ablate import runner

    g, out, fake, calls = _fake_grid(tmp_path, monkeypatch)
    monkeypatch.setattr(runner, "SFT_LOCK_POLL_S", 0.05)
    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for run, holder in (("grpo/seed3", f"{host} {live.pid}"), ("grpo/seed1", f"{host} {dead.pid}"),
                            ("reg_da/seed3", f"other-node {dead.pid}"), ("sft", f"{host} {live.pid}")):
            (out / run).mkdir(parents=True, exist_ok=True)
            (out / run / "ablate.lock").write_text(holder)
        msgs = []

        def echo(m):  # once this runner waits for the shared SFT, the other runner "finishes" it
            msgs.append(m)
            if m.endswith("waiting for it"):
                (out / "sft" / "ablate.lock").unlink()

        recs = ablate.run_grid(g, launcher=f"{sys.executable} {fake}", echo=echo)
    finally:
        live.kill()
        live.wait()
    assert [(r["arm"], r["seed"], r["status"]) for r in recs] == [
        ("grpo", 3, "locked"), ("grpo", 1, "done"), ("reg_da", 3, "locked"), ("reg_da", 1, "done")]
    assert msgs[0] == (f"[ablate] sft: {out}/sft is locked by pid {live.pid} on host {host} (another dvr1 ablate); "
                       "waiting for it")
    assert f"[ablate 1/4] grpo seed 3: {out}/grpo/seed3 is locked by pid {live.pid} on host {host} (another dvr1 " \
           "ablate runs it), skipping" in msgs
    assert f"[ablate 3/4] reg_da seed 3: {out}/reg_da/seed3 is locked by pid {dead.pid} on host other-node " \
           "(another dvr1 ablate runs it), skipping" in msgs
    ran = [tuple(json.loads(line)) for line in calls.read_text().splitlines()]
    assert ran == [("sft", "sft"), ("eval", "sft"), ("train", "grpo/seed1"), ("eval", "grpo/seed1"),
                   ("train", "reg_da/seed1"), ("eval", "reg_da/seed1")]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("ablate.lock")) == ["grpo/seed3/ablate.lock",
                                                                                 "reg_da/seed3/ablate.lock"]
    # the lock is exclusive: a second take by anyone but a dead holder's successor fails
    assert runner.try_lock(str(out / "x")) is None
    assert runner.try_lock(str(out / "x")) == f"pid {os.getpid()} on host {host}"
    runner.unlock(str(out / "x"))
    assert not (out / "x" / "ablate.lock").exists()


def test_failed_sft_stops_the_grid(tmp_path, monkeypatch):
    g = load_grid(write_grid(tmp_path, GRID))
    fake = tmp_path / "fail.py"
    fake.write_text("import sys; sys.exit(5)\n")
    with pytest.raises(GridError) as e:
        ablate.run_grid(g, launcher=f"{sys.executable} {fake}", echo=lambda s: None)
    assert str(e.value) == f"{g.path}: shared sft failed (exit 5); see {tmp_path}/out/sft/ablate.log"


# ---- aggregation and report on fabricated runs ------------------------------------------------------------------

def fabricate(run_dir: Path, acc: dict, iou: float, va: list, rewards: list, wall_s=None, failed=False):
    run_dir.mkdir(parents=True, exist_ok=True)
    if acc is not None:
        n = {t: 10 for t in acc}
        ev = {"n": 20, "accuracy": sum(acc.values()) / len(acc), "mean_iou": iou, "format": 1.0,
              "per_task": {t: {"n": n[t], "accuracy": a, "format": 1.0, "mean_iou": 0.0} for t, a in acc.items()}}
        (run_dir / "eval_rl.json").write_text(json.dumps(ev))
    (run_dir / "metrics").mkdir(exist_ok=True)
    with open(run_dir / "metrics" / "rl.jsonl", "w") as f:
        for i, (v, r) in enumerate(zip(va, rewards)):
            f.write(json.dumps({"step": i + 1, "vanishing_advantage_ratio": v, "reward/mean": r,
                                "rollouts/total": 32 * (i + 1)}) + "\n")
    if wall_s is not None or failed:
        (run_dir / "ablate_run.json").write_text(json.dumps(
            {"status": "failed:train" if failed else "done",
             "attempts": [{"stage": "train", "rc": 1 if failed else 0, "wall_s": wall_s or 1.0}]}))


@pytest.fixture
def fabricated(tmp_path):
    g = load_grid(write_grid(tmp_path, GRID.replace("[3, 1]", "[0, 1, 2]")))
    out = tmp_path / "out"
    A = [({"counting": 0.4, "grounding": 0.6}, 0.30, [0.5, 0.25], [1.0, 1.2], 600.0),
         ({"counting": 0.5, "grounding": 0.7}, 0.40, [0.5, 0.5], [1.1, 1.4], 720.0),
         ({"counting": 0.6, "grounding": 0.8}, 0.50, [0.75, 0.0], [0.9, 1.0], 660.0)]
    for s, (acc, iou, va, rw, wall) in enumerate(A):
        fabricate(out / "grpo" / f"seed{s}", acc, iou, va, rw, wall)
    fabricate(out / "reg_da" / "seed0", {"counting": 0.9, "grounding": 0.7}, 0.6, [0.0, 0.25], [1.5, 1.7], 300.0)
    fabricate(out / "reg_da" / "seed1", None, 0.0, [0.5], [1.0], failed=True)  # crashed mid-RL
    # reg_da/seed2 never ran
    (out / "sft").mkdir()
    (out / "sft" / "eval_sft.json").write_text(json.dumps(
        {"accuracy": 0.25, "mean_iou": 0.125, "per_task": {"counting": {"accuracy": 0.2}, "grounding": {"accuracy":
                                                                                                         0.3}}}))
    return g, A


def test_aggregate_exact(fabricated):
    g, A = fabricated
    res = collect(g)
    assert [(r.arm, r.seed, r.status) for r in res] == [("grpo", 0, "done"), ("grpo", 1, "done"), ("grpo", 2, "done"),
                                                        ("reg_da", 0, "done"), ("reg_da", 1, "failed"),
                                                        ("reg_da", 2, "missing")]
    agg = aggregate(g, res)
    v = agg["grpo"]["values"]
    accs = [0.5, 0.6, 0.7]
    assert v["accuracy"]["mean"] == pytest.approx(0.6, abs=1e-12)
    assert v["accuracy"]["std"] == pytest.approx(0.1, abs=1e-12)  # sample std (ddof=1) of 0.5, 0.6, 0.7
    assert v["accuracy"]["std"] == pytest.approx(statistics.stdev(accs), abs=1e-15)
    assert v["acc/counting"]["mean"] == pytest.approx(0.5) and v["acc/counting"]["std"] == pytest.approx(0.1)
    assert v["mean_iou"]["mean"] == pytest.approx(0.4) and v["mean_iou"]["std"] == pytest.approx(0.1)
    assert v["va_final"]["mean"] == pytest.approx(0.25)  # last steps 0.25, 0.5, 0.0
    assert v["va_final"]["std"] == pytest.approx(0.25)
    assert v["va_mean"]["mean"] == pytest.approx((0.375 + 0.5 + 0.375) / 3)
    assert v["va_mean"]["std"] == pytest.approx(statistics.stdev([0.375, 0.5, 0.375]))
    assert v["wall_min"]["mean"] == pytest.approx(11.0) and v["wall_min"]["std"] == pytest.approx(1.0)
    assert v["accuracy"]["per_seed"] == {0: pytest.approx(0.5), 1: pytest.approx(0.6), 2: pytest.approx(0.7)}
    r = agg["reg_da"]
    assert r["seeds_done"] == [0] and r["not_done"] == {"failed": [1], "missing": [2]}
    assert r["values"]["accuracy"]["mean"] == pytest.approx(0.8) and r["values"]["accuracy"]["n"] == 1
    assert r["values"]["accuracy"]["std"] != r["values"]["accuracy"]["std"]  # NaN for one seed


def test_report_marks_missing_and_writes_pngs(fabricated):
    g, _ = fabricated
    rep = ablate.write_report(g)
    md = rep["markdown"]
    # rollouts / step: the mean of rollouts/total over the two steps (32, 64 -> 48 in every seed)
    assert ("| grpo | 3/3 | 50.0 ± 10.0 | 70.0 ± 10.0 | 60.0 ± 10.0 | 0.400 ± 0.100 | 0.250 ± 0.250 | 0.417 ± 0.072 "
            "| 48 ± 0 | 11.0 ± 1.0 |  |") in md
    assert ("| reg_da | 1/3 | 90.0 (n=1) | 70.0 (n=1) | 80.0 (n=1) | 0.600 (n=1) | 0.250 (n=1) | 0.125 (n=1) "
            "| 48 (n=1) | 5.0 (n=1) | failed: seed 1; missing: seed 2 |") in md
    assert "| SFT (no RL; shared init) | – | 20.0 | 30.0 | 25.0 | 0.125 | – | – | – | – |  |" in md
    assert "sample standard deviation (ddof=1)" in md
    assert ("Paper ordering grpo < reg_da by mean overall accuracy: **held** (observed: grpo < reg_da). "
            "reg_da − grpo = +20.0 pts, max std 10.0 (larger than the seed std).") in md
    assert open(rep["report"]).read() == md
    names = sorted(os.path.basename(p) for p in rep["plots"])
    assert names == ["accuracy_per_arm.png", "reward_vs_step.png", "vanishing_advantage_vs_step.png"]
    for p in rep["plots"]:
        data = open(p, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    saved = json.load(open(rep["results"]))
    assert saved["arms"]["reg_da"]["not_done"] == {"failed": [1], "missing": [2]}


def test_ordering_check_did_not_hold(fabricated):
    g, _ = fabricated
    agg = aggregate(g, collect(g))
    text = ablate.ordering_check(["reg_da", "grpo"], agg)
    assert text.startswith("Paper ordering reg_da < grpo by mean overall accuracy: **did not hold** "
                           "(observed: grpo < reg_da). grpo − reg_da = -20.0 pts")


def test_curve_mean_min_max_and_smoothing(fabricated):
    g, _ = fabricated
    done = [r for r in collect(g) if r.arm == "grpo"]
    steps, mean, lo, hi = _curve(done, "reward/mean", smooth=1)
    assert steps == [1, 2]
    assert mean == pytest.approx([1.0, 1.2]) and lo == pytest.approx([0.9, 1.0]) and hi == pytest.approx([1.1, 1.4])
    _, mean2, lo2, hi2 = _curve(done, "reward/mean", smooth=2)  # step 2 = mean of steps 1-2 per seed
    assert mean2 == pytest.approx([1.0, (1.1 + 1.25 + 0.95) / 3]) and lo2[1] == pytest.approx(0.95)


def test_main_emit_and_grid_error_exit_codes(tmp_path, capsys):
    p = write_grid(tmp_path, GRID)
    assert ablate.main([p, "--emit", "commands", "--launcher", "dvr1"]) == 0
    assert capsys.readouterr().out.count("test -f ") == 4
    bad = write_grid(tmp_path, GRID.replace("seeds: [3, 1]", "seeds: [1, 1]"), "bad.yaml")
    assert ablate.main([bad, "--report-only"]) == 2
    assert capsys.readouterr().err == f"dvr1 ablate: {bad}: seeds: duplicate seed in [1, 1]\n"


# ---- VidChain M-DPO grids (task: vidchain) -------------------------------------------------------------------------

VC_BASE = str(REPO / "examples" / "vidchain_tiny.yaml")
VC_GRID = """\
    name: vc
    task: vidchain
    base: VC_BASE
    out: OUT
    overrides: [vidchain.mdpo_steps=2, log.wandb=false]
    arms:
      b01: [vidchain.beta=0.1]
      b05: [vidchain.beta=0.5]
    seeds: [0, 1]
"""


def vc_grid(tmp_path):
    return load_grid(write_grid(tmp_path, VC_GRID.replace("VC_BASE", VC_BASE)))


def test_vidchain_grid_commands(tmp_path):
    """The shared SFT is `dvr1 vidchain --stop-after sft`; a run is `dvr1 vidchain --init <SFT> --sft-eval <its
    eval>` (M-DPO + eval in one), skipped when its eval_vidchain_mdpo.json exists."""
    g = vc_grid(tmp_path)
    out = str(tmp_path / "out")
    assert g.sft_hf == f"{out}/sft/vidchain_sft/hf" and g.sft_eval_path == f"{out}/sft/eval_vidchain_sft.json"
    lines = ablate.emit(g, "commands", launcher="dvr1").splitlines()
    assert lines[2] == (f"dvr1 vidchain -c {VC_BASE} --stop-after sft vidchain.mdpo_steps=2 log.wandb=false "
                        f"run_dir={out}/sft")
    runs = [l for l in lines if l.startswith("test -f")]
    assert runs[3] == (f"test -f {out}/b05/seed1/eval_vidchain_mdpo.json || {{ dvr1 vidchain -c {VC_BASE} --init "
                       f"{out}/sft/vidchain_sft/hf --sft-eval {out}/sft/eval_vidchain_sft.json vidchain.mdpo_steps=2 "
                       f"log.wandb=false vidchain.beta=0.5 seed=1 run_dir={out}/b05/seed1; }}")
    g.sft_init = "/ckpt/sft"  # an existing SFT model: only its DVC eval is shared
    assert ablate.sft_commands(g, ["dvr1"]) == [("eval_sft", [
        "dvr1", "eval", "--task", "dvc", "-c", VC_BASE, "--model", "/ckpt/sft", "--name", "sft",
        "vidchain.mdpo_steps=2", "log.wandb=false", f"run_dir={out}/sft"])]
    ablate.check_configs(g)


def fabricate_vidchain(run_dir, soda, miou, acc, margin, changed):
    ev = {"n": 4, "SODA_c": soda, "count_acc": 50.0, "parse_rate": 100.0,
          "dvc": {"METEOR": soda / 2, "CIDEr": 3 * soda, "METEOR@0.5": soda / 4},
          "grounding": {"mIoU": miou, "R1@0.3": 60.0, "R1@0.5": 40.0, "R1@0.7": 20.0}}
    run_dir.mkdir(parents=True)
    (run_dir / "eval_vidchain_mdpo.json").write_text(json.dumps(ev))
    (run_dir / "vidchain_results.json").write_text(json.dumps(
        {"changed": {"records": 4, "records_changed": 2, "chain": 12, "chain_changed": changed, "grounding": 8,
                     "grounding_changed": 1}}))
    (run_dir / "metrics").mkdir()
    with open(run_dir / "metrics" / "vidchain_mdpo.jsonl", "w") as f:
        for i, (a, m) in enumerate(zip(acc, margin)):
            f.write(json.dumps({"step": i + 1, "rewards/accuracies": a, "rewards/margins": m, "loss": 0.6,
                                "pairs": 5.0}) + "\n")


def test_vidchain_report_before_after_mean_std(tmp_path):
    g = vc_grid(tmp_path)
    out = tmp_path / "out"
    (out / "sft").mkdir(parents=True)
    (out / "sft" / "eval_vidchain_sft.json").write_text(json.dumps(
        {"n": 4, "SODA_c": 10.0, "count_acc": 50.0, "parse_rate": 100.0,
         "dvc": {"METEOR": 5.0, "CIDEr": 30.0, "METEOR@0.5": 2.5},
         "grounding": {"mIoU": 30.0, "R1@0.3": 60.0, "R1@0.5": 40.0, "R1@0.7": 20.0}}))
    # b01: SODA_c 12, 14 (mean 13, std √2) and mIoU 31, 29 (mean 30 = SFT); 6 steps (last 5 averaged)
    fabricate_vidchain(out / "b01" / "seed0", 12.0, 31.0, [0.5, 0.5, 0.6, 0.6, 0.8, 1.0], [0.1] * 5 + [0.6], 3)
    fabricate_vidchain(out / "b01" / "seed1", 14.0, 29.0, [0.5] * 6, [0.1] * 6, 5)
    rep = ablate.write_report(g)
    md = rep["markdown"]
    v = aggregate(g, collect(g))["b01"]["values"]
    assert v["SODA_c"]["mean"] == pytest.approx(13.0) and v["SODA_c"]["std"] == pytest.approx(2 ** 0.5)
    assert v["pref_acc_last"]["per_seed"] == {0: pytest.approx(0.7), 1: pytest.approx(0.5)}
    assert v["margin_last"]["per_seed"][0] == pytest.approx(0.2) and v["margin_first"]["mean"] == pytest.approx(0.1)
    assert v["changed"]["mean"] == pytest.approx(5.0) and v["changed_of"]["mean"] == 20.0  # (3+1, 5+1) of 12 + 8
    assert ("| CoTasks SFT (before M-DPO; shared) | – | 10.00 | 5.00 | 30.00 | 2.50 | 50.00 | 30.00 | 40.00 | 20.00 "
            "| – | – | – | – |  |") in md
    assert ("| b01 | 2/2 | 13.00 ± 1.41 | 6.50 ± 0.71 | 39.00 ± 4.24 | 3.25 ± 0.35 | 50.00 ± 0.00 | 30.00 ± 1.41 "
            "| 40.00 ± 0.00 | 20.00 ± 0.00 | 0.600 ± 0.141 | 0.100 ± 0.000 → 0.150 ± 0.071 | 5.0 ± 1.4 of 20 |") in md
    assert "| b05 | 0/2 |" in md and "missing: seeds 0, 1" in md
    assert "- b01: SODA_c +3.00 (beyond the seed std); METEOR +1.50 (beyond the seed std)" in md
    assert "mIoU +0.00 (within the seed std)" in md
    names = sorted(os.path.basename(p) for p in rep["plots"])
    assert names == ["dpo_accuracy_vs_step.png", "dpo_loss_vs_step.png", "dpo_margin_vs_step.png",
                     "dpo_pairs_vs_step.png", "dvc_per_arm.png"]
    for p in rep["plots"]:
        assert open(p, "rb").read()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.load(open(rep["results"]))["sft"]["SODA_c"] == 10.0
    assert md.count("Test split, 0-100") == 1 and "changed answers = greedy test answers" in md
    # a grid evaluated on val (vidchain.eval_split=val, recorded in the eval JSONs) says so
    sft = json.loads((out / "sft" / "eval_vidchain_sft.json").read_text())
    (out / "sft" / "eval_vidchain_sft.json").write_text(json.dumps({**sft, "split": "val"}))
    md = ablate.write_report(g)["markdown"]
    assert "Val split, 0-100" in md and "Test split" not in md and "changed answers = greedy val answers" in md
