"""Fault injection for the chaos test (tests/e2e/test_chaos.py): SIGKILL this process at a named point of a stage.

Two environment variables, read when a point is reached (neither set: every call here is a no-op and
:func:`instrument` wraps nothing):

- ``DVR1_KILL_AT="<stage>:<step>:<point>[:<n>]"`` kills the process with SIGKILL (no clean-up, no flush, like the
  OOM killer or a pre-empted node) the n-th time (default 1) it reaches ``point`` while ``stage`` runs step ``step``;
  e.g. ``rl:2:update`` or ``rl:3:decode:40``.
- ``DVR1_FAULT_TRACE=<file>`` appends ``<stage>:<step>:<point>:<n>`` for every point reached, so a test can draw kill
  points from an uninterrupted run's trace (each is then reached again by the same command).

Points, in the order one training step reaches them (``n`` counts from 1 within the step):

==================  ====================================================================================
``rollout``         a rollout engine ``generate()`` call starts (n=1: the policy's rollout; n>1: DA-Aug's
                    answer-revealed and augmented rollouts, after the policy's rollout consumed its RNG)
``decode``          one forward of the policy inside a native-engine rollout (the prefill or one token)
``update``          ``optimizer.step()`` is called (gradients computed, weights unchanged)
``updated``         ``optimizer.step()`` returned (weights changed in memory, scheduler not stepped, nothing saved)
``ckpt.begin``      ``save_checkpoint``: ``step_N.tmp`` created, nothing written
``ckpt.dist``       the megatron dist checkpoint written, per-rank state not
``ckpt.rank_file``  half of this rank's ``extra/rank_R.pt`` written (a truncated file on disk)
``ckpt.meta``       all per-rank files written, ``meta.json`` not
``ckpt.swap``       re-saving an existing step: the old ``step_N`` moved aside, the new one not yet in place
``ckpt.rename``     ``step_N.tmp`` renamed to ``step_N``, ``latest`` still names the previous step
``ckpt.latest``     ``latest`` names step N, older checkpoints not yet pruned
``export``          the stage's last checkpoint saved, its HF export not written
``eval``            a benchmark eval appended a batch of predictions (stage ``eval_<benchmark>``, step 0;
                    ``n`` counts the batches of this run)
==================  ====================================================================================
"""

from __future__ import annotations

import os
import re
import signal

KILL_ENV = "DVR1_KILL_AT"
TRACE_ENV = "DVR1_FAULT_TRACE"
POINTS = ("rollout", "decode", "update", "updated", "ckpt.begin", "ckpt.dist", "ckpt.rank_file", "ckpt.meta",
          "ckpt.swap", "ckpt.rename", "ckpt.latest", "export", "eval")
_SPEC = re.compile(r"^(?P<stage>[\w-]+):(?P<step>\d+):(?P<point>[\w.]+)(?::(?P<n>[1-9]\d*))?$")

_stage: str | None = None
_step: int | None = None
_counts: dict[str, int] = {}


def parse_kill_spec(spec: str) -> str:
    """``"<stage>:<step>:<point>[:<n>]"`` -> the canonical ``"<stage>:<step>:<point>:<n>"``.
    Raises ValueError naming ``DVR1_KILL_AT`` for a malformed spec or an unknown point."""
    m = _SPEC.match(spec.strip())
    if m is None:
        raise ValueError(f"{KILL_ENV}={spec!r}: expected <stage>:<step>:<point>[:<n>], e.g. rl:2:update")
    if m["point"] not in POINTS:
        raise ValueError(f"{KILL_ENV}={spec!r}: unknown point {m['point']!r} (one of {', '.join(POINTS)})")
    return f"{m['stage']}:{int(m['step'])}:{m['point']}:{int(m['n'] or 1)}"


def enabled() -> bool:
    return bool(os.environ.get(KILL_ENV) or os.environ.get(TRACE_ENV))


def position(stage: str, step: int) -> None:
    """The stage and step now running (the training loop calls it before each step); resets the point counters.
    Validates ``DVR1_KILL_AT`` so a typo fails at the first step, not silently never."""
    global _stage, _step
    _stage, _step = stage, int(step)
    _counts.clear()
    if os.environ.get(KILL_ENV):
        parse_kill_spec(os.environ[KILL_ENV])


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def point(name: str) -> None:
    """Reached point ``name`` (one of :data:`POINTS`): trace it and/or SIGKILL this process (module docstring)."""
    kill, trace = os.environ.get(KILL_ENV), os.environ.get(TRACE_ENV)
    if not (kill or trace) or _stage is None:
        return
    n = _counts[name] = _counts.get(name, 0) + 1
    here = f"{_stage}:{_step}:{name}:{n}"
    if trace:
        with open(trace, "a") as f:
            f.write(here + "\n")
    if kill and parse_kill_spec(kill) == here:
        _die()


def instrument(trainer) -> None:
    """Wrap the trainer's ``optimizer.step`` (points ``update`` / ``updated``) and, if it has one, its rollout
    engine's ``generate`` (``rollout``) and the native engine's policy forward (``decode``, a forward pre-hook).
    The wrappers only count and call :func:`point`; nothing happens unless :func:`enabled`."""
    if not enabled():
        return
    opt = trainer.optimizer
    opt_step = opt.step

    def step(*args, **kwargs):
        point("update")
        out = opt_step(*args, **kwargs)
        point("updated")
        return out

    opt.step = step
    engine = getattr(trainer, "engine", None)
    if engine is None:
        return
    generate, in_rollout = engine.generate, [False]

    def generate_(*args, **kwargs):
        point("rollout")
        in_rollout[0] = True
        try:
            return generate(*args, **kwargs)
        finally:
            in_rollout[0] = False

    engine.generate = generate_
    policy = getattr(engine, "policy", None)
    if policy is not None:
        policy.register_forward_pre_hook(lambda module, args: point("decode") if in_rollout[0] else None)
