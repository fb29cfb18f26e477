"""PromptSampler: the same permutation on every rank, disjoint DP shards, epochs, resume, dropped records."""

import types

import pytest

from dvr1.data.sampler import PromptSampler

RECORDS = [types.SimpleNamespace(id=f"r{i}") for i in range(10)]


def _draw(s, n):
    return [s.next().id for _ in range(n)]


def test_dp_shards_are_disjoint_and_cover_an_epoch():
    a, b = PromptSampler(RECORDS, seed=3, dp_rank=0, dp_size=2), PromptSampler(RECORDS, seed=3, dp_rank=1, dp_size=2)
    ra, rb = _draw(a, 5), _draw(b, 5)
    assert not set(ra) & set(rb) and sorted(ra + rb) == sorted(r.id for r in RECORDS)
    # rank r takes positions r, r + dp, ... of the one permutation every rank draws
    whole = [r.id for r in (RECORDS[i] for i in PromptSampler(RECORDS, seed=3).order)]
    assert ra == whole[0::2] and rb == whole[1::2]
    # a TP/PP peer of DP rank 0 (same dp_rank) sees the same prompts
    assert _draw(PromptSampler(RECORDS, seed=3, dp_rank=0, dp_size=2), 5) == ra


def test_epochs_reshuffle_and_drop_the_remainder():
    s = PromptSampler(RECORDS[:7], seed=1, dp_rank=0, dp_size=2)  # 3 full DP steps per epoch, 1 record left over
    first = _draw(s, 3)
    assert s.epoch == 0
    second = _draw(s, 3)
    assert s.epoch == 1 and len(set(first)) == 3 and len(set(second)) == 3
    assert first != second  # a new permutation per epoch


def test_resume_continues_the_stream_exactly():
    s = PromptSampler(RECORDS, seed=5, dp_rank=1, dp_size=2)
    _draw(s, 7)  # into the second epoch
    s.bad.add("r3")
    state = s.state_dict()
    want = _draw(s, 12)
    t = PromptSampler(RECORDS, seed=5, dp_rank=1, dp_size=2)
    t.load_state_dict(state)
    assert _draw(t, 12) == want and "r3" not in want


def test_bad_records_are_skipped_and_all_bad_fails():
    s = PromptSampler(RECORDS[:2], seed=0)
    s.bad.add("r0")
    assert _draw(s, 4) == ["r1"] * 4
    s.bad.add("r1")
    with pytest.raises(RuntimeError, match="PromptSampler: every training record of this rank failed to load"):
        s.next()


def test_too_few_records_for_the_dp_size():
    with pytest.raises(ValueError, match="PromptSampler: 1 records cannot be sharded over 2 DP ranks"):
        PromptSampler(RECORDS[:1], seed=0, dp_size=2)
