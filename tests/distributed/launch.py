"""Run a torchrun script from a pytest test: ``run_torchrun(script, *args)``.

Launches ``python -m torch.distributed.run --nproc-per-node N --master-port <free port> script args`` from the repo
root with the repo on ``PYTHONPATH`` and ``OMP_NUM_THREADS=1`` (2 or 4 processes share the cores), waits up to
``timeout`` seconds and fails the calling test with the command's output (tail) on a non-zero exit or a timeout.
Scripts run on CPU over gloo; they must keep their work under ``if __name__ == "__main__":`` (megatron-core's
checkpoint writer spawns a process that re-imports the main module).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Union

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(
    script: Union[str, Path], *args: object, nproc: int = 2, timeout: float = 300.0, tail: int = 6000
) -> subprocess.CompletedProcess:
    """Run ``script`` under torchrun with ``nproc`` local processes; return the completed process (text output).

    Calls ``pytest.fail`` with the command and the last ``tail`` characters of stdout and stderr when the exit
    code is non-zero or ``timeout`` (seconds) passes.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        str(script), *map(str, args),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"timeout after {timeout}s: {' '.join(cmd)}\n--- stdout\n{out[-tail:]}\n--- stderr\n{err[-tail:]}")
    if proc.returncode != 0:
        pytest.fail(
            f"exit {proc.returncode}: {' '.join(cmd)}\n"
            f"--- stdout\n{proc.stdout[-tail:]}\n--- stderr\n{proc.stderr[-tail:]}"
        )
    return proc
