"""Dense-captioning records: exact error messages, JSONL round trip, and the verifiable builder's events/captions
against its construction metadata (the public-format readers: test_vidchain_formats.py)."""

import json

import av
import pytest

from dvr1.vidchain.data import DenseRecordError, build_dense_dataset, read_dense_records, write_dense_records


def test_record_validation_and_round_trip(tmp_path):
    base = {"id": "a", "video": "v.webm", "duration": 4.0, "events": [[0, 1], [2, 3]], "captions": ["x", "y"],
            "split": "train"}
    (tmp_path / "v.webm").write_bytes(b"")
    p = tmp_path / "d.jsonl"
    lines = [base, dict(base, id="b", events=[[2, 3], [0, 1]]), dict(base, id="c", captions=["x"]),
             dict(base, id="d", events=[[0, 5]]), dict(base, id="e", extra=1)]
    errors = {"b": "events: events must be sorted by start time",
              "c": "captions: 1 captions for 2 events",
              "d": "events: [0] needs 0 <= start < end <= duration (4.0), got [0, 5]",
              "e": "extra: unknown field"}
    for rec in lines[1:]:
        p.write_text(json.dumps(base) + "\n" + json.dumps(rec) + "\n")
        with pytest.raises(DenseRecordError) as e:
            read_dense_records(p, strict=True)
        assert str(e.value) == f"{p}:2: {errors[rec['id']]}"
        assert [r.id for r in read_dense_records(p)] == [base["id"]]  # reported and skipped
    p.write_text(json.dumps(base) + "\n")
    (r,) = read_dense_records(p)
    out = tmp_path / "o.jsonl"
    write_dense_records(out, [r])
    assert json.loads(out.read_text()) == dict(base, events=[[0.0, 1.0], [2.0, 3.0]], duration=4.0, source="",
                                                fps=0.0, meta={})


def test_builder_events_from_construction(tmp_path):
    m = build_dense_dataset(str(tmp_path), seed=3, n_train=3, n_val=1, n_test=1, max_events=3)
    recs = read_dense_records(tmp_path / "train.jsonl")
    assert sorted(len(r.events) for r in recs) == [1, 2, 3]  # balanced event counts
    for r in recs:
        assert r.captions == [f"a {e['color']} {e['shape']} moves {e['direction']}" for e in r.meta["events"]]
        assert r.events == [e["segment"] for e in r.meta["events"]]
        assert all(a[1] <= b[0] for a, b in zip(r.events, r.events[1:]))  # non-overlapping, time-ordered
        assert all(abs(x * 2 - round(x * 2)) < 1e-9 for ev in r.events for x in ev)  # 0.5 s grid
        with av.open(r.video) as c:
            n = sum(1 for _ in c.decode(video=0))
        assert n == round(r.duration * 8)
    assert set(m["splits"]["test"]["real_sources"]).isdisjoint(m["splits"]["train"]["real_sources"])
    again = tmp_path / "again"
    build_dense_dataset(str(again), seed=3, n_train=3, n_val=1, n_test=1, max_events=3)
    assert (again / "train.jsonl").read_text() == (tmp_path / "train.jsonl").read_text()


def test_vidchain_never_writes_into_a_users_directory(tmp_path):
    """`dvr1 vidchain`'s data step: a directory of the user's records is read-only (bytes unchanged), a directory that
    is neither dvr1's nor a dataset is refused with what to do (no build into it)."""
    import hashlib
    import types

    import pytest

    from dvr1.data.build import DataRootError
    from dvr1.vidchain.job import ensure_data

    user = tmp_path / "user"
    user.mkdir()
    (user / "train.jsonl").write_text('{"id": "mine"}\n')
    (user / "notes.txt").write_text("my notes\n")
    digest = lambda d: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}  # noqa: E731
    before = digest(user)
    opts = types.SimpleNamespace(data_root=str(user), data_seed=0, n_train=1, n_val=1, n_test=1, fps=8.0, size=64,
                                 max_events=2)
    assert ensure_data(opts) == str(user)
    assert digest(user) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "photo.png").write_bytes(b"x")
    with pytest.raises(DataRootError, match="neither a dataset"):
        ensure_data(types.SimpleNamespace(**{**vars(opts), "data_root": str(other)}))
    assert [p.name for p in other.iterdir()] == ["photo.png"]
