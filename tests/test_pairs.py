"""Training pairs from a pinned store version: what a trainer relies on the dataset layer for."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
from collections import Counter

import numpy as np
import pytest

from model.data import PairDataset, collect, pair_loader
from pipeline.store import FeatureStore
from pipeline.store.pairs import PairQuery, PairReader, is_heldout
from pipeline.store.table import Table
from tests.stores import CONTROL_HZ, SynthSource, episode_data, write_store

BOT = SynthSource("bot", fps=5.0, episodes=6, seconds=4.0)
CAM = SynthSource("cam", kind="human", fps=10.0, episodes=4, seconds=3.0)


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("pairs") / "store")
    write_store(uri, [BOT, CAM])
    return uri


def all_pairs(uri: str, **q) -> set[tuple[str, int]]:
    reader = PairReader(FeatureStore.open(uri), PairQuery(**q))
    return {(reader.keys[e], int(t)) for e in range(len(reader.rows)) for t in range(reader.n_pairs[e])}


def test_k_is_in_seconds_across_sources_of_different_fps(store_uri):
    """A 0.4 s gap is 2 frames at 5 fps and 4 frames at 10 fps: the same motion span."""
    batch = collect(FeatureStore.open(store_uri), PairQuery(k_seconds=0.4, split="all"))
    np.testing.assert_allclose(batch["dt"], 0.4, atol=1e-6)
    bot = batch["source"] == "bot"
    # token 0 holds (episode, frame): f_tk is exactly k frames after f_t in the same episode
    np.testing.assert_array_equal(batch["f_tk"][bot, 0, 1] - batch["f_t"][bot, 0, 1], 2)
    np.testing.assert_array_equal(batch["f_tk"][~bot, 0, 1] - batch["f_t"][~bot, 0, 1], 4)
    np.testing.assert_array_equal(batch["f_t"][:, 0, 1], batch["t"])


def test_action_chunk_state_and_mask_follow_the_control_track(store_uri):
    """The chunk holds the control-rate actions at t, t + 1/rate, ...; past the episode's last
    action it is zero-padded and masked. State is read at both frames."""
    q = PairQuery(k_seconds=0.4, horizon=10, action_rate=10.0, sources=("bot",), split="all")
    batch = collect(FeatureStore.open(store_uri), q)
    for i in range(len(batch["t"])):
        e = int(batch["episode"][i].split("ep")[1])
        _, ts, track = episode_data(BOT, e)
        t = int(batch["t"][i])
        steps = np.rint((ts[t] + np.arange(10) / 10.0) * CONTROL_HZ).astype(int)
        valid = steps < len(track.actions)
        np.testing.assert_array_equal(batch["action_mask"][i], valid)
        np.testing.assert_allclose(batch["actions"][i][valid], track.actions[steps[valid]])
        assert not batch["actions"][i][~valid].any()
        np.testing.assert_allclose(batch["state_t"][i], track.state[int(round(ts[t] * CONTROL_HZ))])
        np.testing.assert_allclose(batch["state_tk"][i], track.state[int(round(ts[t + 2] * CONTROL_HZ))])
    assert batch["state_mask"].all() and batch["robot"].all()
    assert (~batch["action_mask"]).any(), "the last pairs run past the end of the episode"


def test_human_pairs_carry_no_actions_or_state(store_uri):
    batch = collect(FeatureStore.open(store_uri), PairQuery(kinds=("human",), split="all"))
    assert len(batch["t"]) and not batch["robot"].any()
    assert not batch["action_mask"].any() and not batch["state_mask"].any()
    assert set(batch["instruction"]) == {"task 0", "task 1"}


def test_split_is_by_episode_and_stable_across_versions(tmp_path):
    """Held-out episodes are chosen by key, so adding episodes in a new version never moves
    an old episode across the split, and no episode gives pairs to both sides."""
    uri = str(tmp_path / "store")
    small = SynthSource("bot", episodes=20, seconds=2.0)
    write_store(uri, [small])
    v1 = FeatureStore.open(uri)
    write_store(uri, [SynthSource("bot", episodes=40, seconds=2.0)])
    v2 = FeatureStore.open(uri)
    assert v2.version != v1.version and len(v2) == 40
    held1 = set(PairReader(v1, PairQuery(split="heldout", heldout_fraction=0.3)).keys)
    held2 = set(PairReader(v2, PairQuery(split="heldout", heldout_fraction=0.3)).keys)
    train2 = set(PairReader(v2, PairQuery(split="train", heldout_fraction=0.3)).keys)
    assert held1 and held1 == held2 & set(v1.keys)
    assert not held2 & train2 and held2 | train2 == set(v2.keys)


def test_a_sources_own_split_decides_when_it_holds_episodes_out(tmp_path):
    """A source with a "val" split is split its way; a source whose every episode says "train"
    (LeRobot's default `splits`) is split by key, or nothing of it would ever be held out."""
    assert is_heldout("x/ep1", "val", 0.0) and is_heldout("x/ep1", "test", 0.0)
    assert not is_heldout("x/ep1", "train", 0.99)
    uri = str(tmp_path / "store")
    write_store(uri, [SynthSource("lerobot", episodes=20, split="train"), SynthSource("own", episodes=3, split="val")])
    held = set(PairReader(FeatureStore.open(uri), PairQuery(split="heldout", heldout_fraction=0.3)).keys)
    assert {k for k in held if k.startswith("own/")} == {"own/ep000", "own/ep001", "own/ep002"}
    assert 0 < len({k for k in held if k.startswith("lerobot/")}) < 20


def test_dataloader_with_two_workers_yields_every_pair_once_per_epoch(store_uri):
    store = FeatureStore.open(store_uri)
    ds = PairDataset(store, PairQuery(split="all"), batch_size=7, epochs=1)
    seen = Counter()
    for batch in pair_loader(ds, workers=2):
        seen.update(zip(batch["episode"], batch["t"].tolist(), strict=True))
    assert max(seen.values()) == 1
    assert set(seen) == all_pairs(store_uri, split="all")


def test_loader_workers_map_one_shared_episode_table_instead_of_reading_the_index(store_uri, monkeypatch):
    """What `pair_loader` hands each DataLoader worker: the store pickled after `share()`. The
    copy maps the version's episode table from the shared file: it reads no index column, its
    arrays are the file's pages (one copy for every worker), it serves the same pairs, and the
    file goes when the store that wrote it does."""
    q = PairQuery(split="all", k_seconds=0.4)
    expected = collect(FeatureStore.open(store_uri), q)
    store = FeatureStore.open(store_uri)
    path = store.share()
    copy = pickle.loads(pickle.dumps(store))

    def read_index(*args, **kwargs):
        raise AssertionError("a copy of a shared store read an index column")

    monkeypatch.setattr(Table, "column", read_index)
    batch = collect(copy, q)
    assert batch.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(batch[name], value, err_msg=name)
    with open("/proc/self/maps") as f:
        mapped = [tuple(int(a, 16) for a in line.split()[0].split("-")) for line in f if path in line]
    assert any(lo <= copy.frames.ctypes.data < hi for lo, hi in mapped), "the copy's index is not the file's pages"
    del store
    gc.collect()
    assert not os.path.exists(path)
    assert len(collect(copy, q)["t"]) == len(expected["t"])  # a copy keeps its mapping


def test_a_reader_over_some_episodes_serves_exactly_their_pairs(store_uri):
    """What labelling reads: a reader over the rows of the episodes to label gives those
    episodes' pairs, the same as the whole store's reader gives them, and nothing else."""
    store = FeatureStore.open(store_uri)
    rows = np.array([7, 1, 4])  # any order: served in store order
    part = PairReader(store, PairQuery(split="all"), rows=rows)
    assert part.keys.tolist() == [store.keys[r] for r in (1, 4, 7)]
    whole = all_pairs(store_uri, split="all")
    mine = {(part.keys[e], int(t)) for e in range(len(part.rows)) for t in range(part.n_pairs[e])}
    assert mine == {p for p in whole if p[0] in set(part.keys)}
    batch = collect(store, PairQuery(split="all"))
    sub: dict = {}
    for _, e, t in part.batch_indices(64, epochs=1):
        got = part.read(e, t)
        for key, ti, f in zip(got["episode"], got["t"].tolist(), got["f_t"], strict=True):
            sub[(key, ti)] = f
    for key, ti, f in zip(batch["episode"], batch["t"].tolist(), batch["f_t"], strict=True):
        if key in set(part.keys):
            np.testing.assert_array_equal(sub[(key, ti)], f)
    with pytest.raises(ValueError, match="split 'all'"):
        PairReader(store, PairQuery(split="train"), rows=rows)


def test_ranks_and_workers_partition_each_epoch(store_uri):
    """2 Ray Train ranks x 2 DataLoader workers: the four shards together read each pair once,
    in every epoch, and the order changes between epochs."""
    store = FeatureStore.open(store_uri)
    expected = all_pairs(store_uri, split="all")
    reader = PairReader(store, PairQuery(split="all"))
    for epoch in (0, 1):
        seen = Counter()
        for shard in range(4):
            for _, e, t in reader.batch_indices(5, epoch=epoch, epochs=1, shard=shard, num_shards=4, window_pairs=64):
                seen.update(zip(reader.keys[e].tolist(), t.tolist(), strict=True))
        assert max(seen.values()) == 1 and set(seen) == expected
    def order(epoch: int) -> list:
        return [(reader.keys[e], t) for _, es, ts in reader.batch_indices(64, epoch=epoch, epochs=1)
                for e, t in zip(es.tolist(), ts.tolist(), strict=True)]

    assert order(0) != order(1)


def test_mixing_weights_set_each_sources_share(store_uri):
    reader = PairReader(FeatureStore.open(store_uri), PairQuery(split="all", weights={"bot": 1.0, "cam": 3.0}))
    counts = Counter()
    for _, e, _t in reader.batch_indices(64, epochs=4):
        counts.update(reader.sources[e].tolist())
    share = counts["cam"] / (counts["cam"] + counts["bot"])
    assert 0.65 < share < 0.85  # 3:1 by pairs, at whole-episode granularity


def test_resume_skips_exactly_the_batches_already_seen(store_uri):
    store = FeatureStore.open(store_uri)
    q = PairQuery(split="all")
    full = [b["episode"] for b, _ in zip(pair_loader(PairDataset(store, q, 8)), range(12), strict=False)]
    resumed = [b["episode"] for b, _ in zip(pair_loader(PairDataset(store, q, 8, start_batch=5)), range(7),
                                              strict=False)]
    assert resumed == full[5:]


def _read_in_child(store: FeatureStore, key: str, conn) -> None:
    conn.send((store.version, store.features(key)))


def test_the_store_handle_reopens_its_version_in_a_subprocess(tmp_path):
    """Pickled into a spawned process (as for DataLoader workers or Ray), the handle reopens
    the same (uri, version), even after the store moved on."""
    uri = str(tmp_path / "store")
    write_store(uri, [SynthSource("bot", episodes=2)])
    pinned = FeatureStore.open(uri)
    write_store(uri, [SynthSource("bot", episodes=2)], content="v2")  # both episodes redone
    assert FeatureStore.open(uri).version != pinned.version
    assert len(pickle.dumps(pinned)) < 1000  # the handle, not the data or a session
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_read_in_child, args=(pinned, "bot/ep001", child))
    proc.start()
    version, feats = parent.recv()
    proc.join(60)
    assert version == pinned.version
    np.testing.assert_array_equal(feats, pinned.features("bot/ep001"))


def test_unknown_source_is_one_clear_error(store_uri):
    with pytest.raises(ValueError, match="no source \\['nope'\\]"):
        PairReader(FeatureStore.open(store_uri), PairQuery(sources=("nope",)))
