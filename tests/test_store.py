"""The feature store's promises (DESIGN.md), against a real Icechunk store on disk."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.store import FeatureStore, StoreBusyError, StoreError, StoreMismatchError, StoreWriter
from pipeline.store.pairs import PairQuery, PairReader
from schemas.identity import SamplingParams
from schemas.records import ActionTrack, EpisodeRef
from tests.stores import fake_encoder

ENC = fake_encoder("fake")
TOKENS = (4, 8)
PARAMS = SamplingParams(fps=5.0, size=32)


def ref(i: int, content: str = "v1", kind: str = "robot") -> EpisodeRef:
    return EpisodeRef(source="src", episode_id=f"ep{i}", kind=kind, uri=f"/videos/ep{i}.mp4",
                      content_hash=f"{content}-{i}", instruction=f"task {i}")


def feats(i: int, n: int) -> np.ndarray:
    """Features whose values say which episode and frame they are: [episode, frame, ...]."""
    f = np.zeros((n, *TOKENS), np.float16)
    f[:, 0, 0] = i
    f[:, 0, 1] = np.arange(n)
    return f


def put(w: StoreWriter, r: EpisodeRef, n: int, blocks: int = 2, actions: bool = True, i: int | None = None) -> None:
    i = int(r.episode_id[2:]) if i is None else i
    w.start_episode(r, PARAMS)
    f = feats(i, n)
    ts = np.arange(n) / 5.0
    for part_f, part_t in zip(np.array_split(f, blocks), np.array_split(ts, blocks), strict=True):
        w.append_frames(r, part_f, part_t)
    track = None
    if actions:
        at = np.arange(n * 4) / 20.0  # control at 20 Hz, 4 actions per kept frame
        track = ActionTrack(at, np.stack([at, -at], 1).astype(np.float32))
    w.finish_episode(r, track, fps=5.0)


def open_writer(uri, **kw) -> StoreWriter:
    return StoreWriter.open(str(uri), encoder=ENC, chunk_frames=4, **kw)


def test_committed_episodes_read_back_exactly(tmp_path):
    with open_writer(tmp_path / "s") as w:
        for i in range(3):
            put(w, ref(i), n=5 + i)
        version = w.commit("first")
    store = FeatureStore.open(str(tmp_path / "s"))
    assert store.version == version
    assert len(store) == 3
    ep = store.episode("src/ep2")
    np.testing.assert_array_equal(ep.features, feats(2, 7))
    np.testing.assert_allclose(ep.timestamps, np.arange(7) / 5.0)
    assert ep.instruction == "task 2"
    assert ep.actions.actions.shape == (28, 2)


def test_uncommitted_writes_are_invisible(tmp_path):
    with open_writer(tmp_path / "s") as w:
        put(w, ref(0), n=5)
        v1 = w.commit("first")
        put(w, ref(1), n=5)  # written, never committed: as if the process died here
    store = FeatureStore.open(str(tmp_path / "s"))
    assert store.version == v1
    assert store.episodes()["episode_id"].to_pylist() == ["ep0"]


def test_old_versions_reopen_unchanged(tmp_path):
    uri = str(tmp_path / "s")
    with open_writer(uri) as w:
        put(w, ref(0), n=5)
        v1 = w.commit("first")
        put(w, ref(1), n=6)
        v2 = w.commit("second")
    assert len(FeatureStore.open(uri)) == 2
    old = FeatureStore.open(uri, version=v1)
    assert len(old) == 1 and old.version == v1
    assert [v.id for v in FeatureStore.open(uri).versions()][:2] == [v2, v1]
    cat = FeatureStore.open(uri).catalog()
    assert dict(zip(cat["episode_id"].to_pylist(), cat["store_version"].to_pylist(), strict=True)) == {
        "ep0": v1, "ep1": v2}


def test_store_with_nothing_committed_is_a_clear_error(tmp_path):
    with open_writer(tmp_path / "s") as w:
        put(w, ref(0), n=3)  # never committed
    with pytest.raises(StoreError, match="no committed data"):
        FeatureStore.open(str(tmp_path / "s"))


def test_unknown_version_is_a_clear_error(tmp_path):
    with open_writer(tmp_path / "s") as w:
        put(w, ref(0), n=3)
        w.commit("first")
    with pytest.raises(StoreError, match="no version"):
        FeatureStore.open(str(tmp_path / "s"), version="NOTAVERSION000000000")
    with pytest.raises(StoreError, match="no feature store"):
        FeatureStore.open(str(tmp_path / "missing"))


def test_plan_skips_unchanged_holds_quarantined_and_redoes_changed(tmp_path):
    uri = str(tmp_path / "s")
    with open_writer(uri) as w:
        put(w, ref(0), n=3)
        put(w, ref(1), n=3)
        w.quarantine(ref(2), "CorruptVideoError: truncated", PARAMS)
        w.commit("first")
    with open_writer(uri) as w:
        plan = w.plan([ref(0), ref(1, content="v2"), ref(2), ref(3)], lambda r: PARAMS)
        assert [r.episode_id for r in plan.skipped] == ["ep0"]
        assert [r.episode_id for r in plan.todo] == ["ep1", "ep3"]
        assert [r.episode_id for r in plan.held] == ["ep2"]  # quarantined, same input: not retried
        assert [r.episode_id for r in w.plan([ref(2)], lambda r: PARAMS, retry_quarantined=True).todo] == ["ep2"]
        assert [r.episode_id for r in w.plan([ref(2, content="v2")], lambda r: PARAMS).todo] == ["ep2"]
        # a different sampling rate is a different ingest: everything is redone
        assert not w.plan([ref(0)], lambda r: SamplingParams(fps=10.0, size=32)).skipped


def test_redone_episode_replaces_its_row(tmp_path):
    uri = str(tmp_path / "s")
    with open_writer(uri) as w:
        put(w, ref(0), n=3)
        put(w, ref(1), n=3)
        w.commit("first")
    with open_writer(uri) as w:
        put(w, ref(1, content="v2"), n=6, i=9)
        w.commit("second")
    store = FeatureStore.open(uri)
    assert sorted(store.episodes()["episode_id"].to_pylist()) == ["ep0", "ep1"]
    np.testing.assert_array_equal(store.episode("src/ep1").features, feats(9, 6))


def test_quarantine_never_drops_a_committed_episode(tmp_path):
    uri = str(tmp_path / "s")
    with open_writer(uri) as w:
        put(w, ref(0), n=3)
        w.commit("first")
    with open_writer(uri) as w:
        w.quarantine(ref(0, content="v2"), "CorruptVideoError: truncated", PARAMS)
        w.commit("second")
    store = FeatureStore.open(uri)
    np.testing.assert_array_equal(store.episode("src/ep0").features, feats(0, 3))


def test_another_encoder_is_refused_and_store_untouched(tmp_path):
    uri = str(tmp_path / "s")
    with open_writer(uri) as w:
        put(w, ref(0), n=3)
        v1 = w.commit("first")
    with pytest.raises(StoreMismatchError, match="never mix"):
        StoreWriter.open(uri, encoder=fake_encoder("fake", layer=3))
    assert FeatureStore.open(uri).version == v1


def test_second_writer_is_refused_while_one_writes(tmp_path):
    uri = str(tmp_path / "s")
    with open_writer(uri), pytest.raises(StoreBusyError):  # noqa: SIM117
        with open_writer(uri):
            pass


def test_pairs_and_the_actions_between_them(tmp_path):
    uri = str(tmp_path / "s")
    with open_writer(uri) as w:
        put(w, ref(0), n=9)
        put(w, ref(1, kind="human"), n=12, actions=False)
        put(w, ref(2), n=2)  # too short for k=3: never sampled
        w.commit("first")
    store = FeatureStore.open(uri)
    # k = 0.6 s = 3 frames at 5 fps; a chunk of 12 steps at the episode's 20 Hz spans the gap
    reader = PairReader(store, PairQuery(k_seconds=0.6, horizon=12, action_rate=None, split="all"))
    (_, eps, t), = reader.batch_indices(200)
    batch = reader.read(eps, t)
    assert len(t) == (9 - 3) + (12 - 3)  # every pair once; ep2 is too short for the gap
    assert set(batch["episode"]) == {"src/ep0", "src/ep1"}  # episodes named by key, not by row
    # the features say which episode and frame they are
    np.testing.assert_array_equal(batch["f_t"][:, 0, 1], batch["t"])
    np.testing.assert_array_equal(batch["f_tk"][:, 0, 1], batch["t"] + 3)
    np.testing.assert_allclose(batch["dt"], 3 / 5.0)
    for e, t, acts, mask in zip(batch["episode"], batch["t"], batch["actions"], batch["action_mask"], strict=True):
        if e == "src/ep1":
            assert not mask.any()  # human video: no actions
        else:  # 4 control steps per kept frame: the 12 actions in [t/5, (t+3)/5)
            assert mask.all()
            np.testing.assert_allclose(acts[:, 0], np.arange(4 * t, 4 * t + 12) / 20.0)


def test_long_episode_spills_to_its_own_shard(tmp_path):
    uri = str(tmp_path / "s")
    with StoreWriter.open(uri, encoder=ENC, chunk_frames=4, spill_frames=8) as w:
        put(w, ref(0), n=30, blocks=6)
        put(w, ref(1), n=5)
        w.commit("first")
    store = FeatureStore.open(uri)
    shards = store.episodes()["shard"].to_pylist()
    assert shards[0] != shards[1]
    np.testing.assert_array_equal(store.episode("src/ep0").features, feats(0, 30))
    np.testing.assert_array_equal(store.episode("src/ep1").features, feats(1, 5))


def test_catalog_parquet_is_written_beside_the_store(tmp_path):
    uri = str(tmp_path / "s")
    with open_writer(uri) as w:
        put(w, ref(0), n=3)
        w.quarantine(ref(1), "CorruptVideoError: zero bytes", PARAMS)
        w.commit("first")
    table = pq.read_table(tmp_path / "s" / "catalog.parquet")
    rows = {r["episode_id"]: r for r in table.to_pylist()}
    assert rows["ep0"]["status"] == "ok" and rows["ep0"]["frames"] == 3
    assert rows["ep1"]["status"] == "quarantined" and "zero bytes" in rows["ep1"]["reason"]


def test_the_typed_index_row_is_the_index_schema_column_for_column():
    """The writer builds `IndexRow`s: a column added to INDEX_SCHEMA without it (or the reverse)
    would be written as null or refused, so the two must name the same columns."""
    from dataclasses import fields

    from schemas import INDEX_SCHEMA
    from schemas.records import IndexRow

    assert [f.name for f in fields(IndexRow)] == INDEX_SCHEMA.names
    row = IndexRow(source="s", episode_id="e", kind="human", uri="/v.mp4", content_hash="h", status="ok")
    assert pa.Table.from_pylist([row.as_dict()], schema=INDEX_SCHEMA).num_rows == 1


@pytest.mark.parametrize("flush_between", [False, True])
def test_episodes_with_and_without_state_share_a_shard_row_for_row(tmp_path, flush_between):
    """A source whose episodes only sometimes carry proprioception: each episode reads back
    its own state (or none), whichever came first in the shard and whether or not the shard
    was written between them; `verify` finds nothing wrong."""
    from pipeline.store.verify import verify_store

    def track(n: int, i: int, state: bool) -> ActionTrack:
        at = np.arange(n * 4) / 20.0
        st = np.stack([np.full_like(at, i), at, at * 2], 1).astype(np.float32) if state else None
        return ActionTrack(at, np.stack([at, -at], 1).astype(np.float32), st)

    has_state = {0: False, 1: True, 2: False, 3: True}
    uri = str(tmp_path / "s")
    with open_writer(uri) as w:
        for i, st in has_state.items():
            r = ref(i)
            w.start_episode(r, PARAMS)
            w.append_frames(r, feats(i, 4 + i), np.arange(4 + i) / 5.0)
            w.finish_episode(r, track(4 + i, i, st), fps=5.0)
            if flush_between:
                w.flush(force=True)
        w.commit("mixed")
    store = FeatureStore.open(uri)
    assert len(set(store.episodes()["shard"].to_pylist())) == 1  # one shard holds all four
    for i, st in has_state.items():
        got = store.episode(f"src/ep{i}").actions
        want = track(4 + i, i, st)
        np.testing.assert_array_equal(got.actions, want.actions)
        if st:
            np.testing.assert_array_equal(got.state, want.state)
        else:
            assert got.state is None
    assert verify_store(uri, progress=False).ok
