"""Curation from stored features: still spans, duplicates, a versioned curation set, and the
dataset layer skipping what it drops.

The incident guarded against: a corpus of scraped and merged collections trains on the same
clip five times (re-encoded, rescaled, remuxed) and on seconds of a robot standing still, and
nobody can say how many hours of it were worth anything — and finding out meant decoding every
video again.
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipeline.catalog import summarize
from pipeline.curation import curate_store
from pipeline.evaluation.report import write_report
from pipeline.samples.polluted import make_polluted, score_curation
from pipeline.store import FeatureStore, StoreWriter
from pipeline.store.curation import CurationSet, list_curation_sets
from pipeline.store.pairs import PairQuery, PairReader
from pipeline.store.verify import verify_store
from schemas import ConfigError, CorpusConfig, SamplingConfig, StoreConfig, load_corpus
from schemas.curation import CurationConfig, load_curation_config
from schemas.identity import SamplingParams, curation_set_id
from schemas.records import EpisodeRef
from tests.encoders import TINY
from tests.stores import DIM, ENCODER, TOKENS

FPS = 10.0


@pytest.fixture(scope="module")
def polluted(sample_corpora, tmp_path_factory):
    """The sample corpora polluted (idle heads and tails, a static clip, exact and near copies,
    unrelated clips) and ingested with a tiny encoder; the store is copied per test."""
    from pipeline.ingest import ingest_corpus

    root = tmp_path_factory.mktemp("polluted")
    corpus = make_polluted(sample_corpora, root / "corpus")
    cfg = CorpusConfig(sources=corpus.sources, encoder=TINY, sampling=SamplingConfig(fps=FPS),
                       store=StoreConfig(uri=str(root / "store")))
    assert ingest_corpus(cfg, progress=False, executor="local").added == len(corpus.truth)
    return corpus, root / "store"


@pytest.fixture
def polluted_store(polluted, tmp_path):
    corpus, store = polluted
    shutil.copytree(store, tmp_path / "store")
    return corpus, str(tmp_path / "store")


def test_curate_finds_what_was_injected_from_the_features_alone(polluted_store, tmp_path):
    corpus, uri = polluted_store
    away = corpus.root.with_name(corpus.root.name + ".away")
    corpus.root.rename(away)  # no video can be opened while curating
    try:
        result = CliRunner().invoke(app, ["curate", "--store", uri, "--no-progress"])
    finally:
        away.rename(corpus.root)
    assert result.exit_code == 0, result.output
    assert "curation set cur-" in result.output

    store = FeatureStore.open(uri)
    (cset,) = list_curation_sets(store)
    rows = {r["pathology"]: r for r in score_curation(store, cset, corpus.truth)}
    for p in ("idle_head", "idle_tail", "static", "exact", "container", "crf", "rescale"):
        assert rows[p]["truth"] > 0, p
        assert rows[p]["recall"] >= 0.95 and rows[p]["precision"] >= 0.95, rows[p]
    assert rows["unrelated"]["recall"] == 1.0 and rows["clean"]["recall"] == 1.0  # kept whole, in no group
    static = corpus.keys("static")[0]
    assert [r for *_, r in cset.spans(static)] == ["static"]
    head = corpus.keys("idle_head")[0]
    assert cset.spans(head)[0][:1] == (0,) and cset.spans(head)[0][2] == "idle"
    # the set names what made it and what it read
    assert cset.attrs["config"] == CurationConfig().model_dump(mode="json")
    assert cset.attrs["scored_version"] == store.versions()[1].id
    assert cset.id == curation_set_id(CurationConfig().model_dump(mode="json"), store.encoder)
    assert verify_store(uri, progress=False).ok


def test_the_catalog_shows_hours_kept_and_dropped_and_exports_decisions(polluted_store, tmp_path):
    corpus, uri = polluted_store
    curate_store(uri, progress=False)
    out = tmp_path / "decisions.parquet"
    result = CliRunner().invoke(app, ["catalog", uri, "--export", str(out)])
    assert result.exit_code == 0, result.output
    assert "curation set cur-" in result.output and "duplicate" in result.output and "idle" in result.output
    table = pq.read_table(out).to_pylist()
    by_key = {r["episode"]: r for r in table}
    assert set(by_key) == set(corpus.truth)
    static = by_key[corpus.keys("static")[0]]
    assert (static["decision"], static["reason"], static["kept_s"]) == ("drop", "static", 0.0)
    for key in corpus.keys("exact") + corpus.keys("container"):
        assert by_key[key]["decision"] == "drop" and by_key[key]["duplicate_of"] == corpus.truth[key].group
    both = by_key[corpus.keys("idle_tail")[0]]
    assert both["decision"] == "trim" and both["idle_s"] == pytest.approx(4.2, abs=0.25)
    assert by_key[corpus.keys("unrelated")[0]]["decision"] == "keep"
    assert sum(r["kept_s"] for r in table) < 0.6 * sum(r["duration_s"] for r in table)
    page = write_report(tmp_path / "report.html", summarize(uri), []).read_text()  # the chain's report
    assert "Curation set" in page and corpus.keys("static")[0] in page and "duplicate" in page


# -- the set itself, and the dataset layer, on hand-made features --------------------------------

def _features(n: int, still: tuple[int, int] | None = None, seed: int = 0) -> np.ndarray:
    """(n, T, D) float16 features of a random walk, held still over frames [a, b)."""
    rng = np.random.default_rng(seed)
    f = np.cumsum(rng.normal(size=(n, TOKENS, DIM)), axis=0)
    if still is not None:
        a, b = still
        f[a:b] = f[a]
    return f.astype(np.float16)


def _write(uri: str, episodes: dict[str, np.ndarray], content: str = "v1") -> str:
    with StoreWriter.open(uri, encoder=ENCODER, chunk_frames=16) as w:
        for key, f in episodes.items():
            source, episode_id = key.split("/")
            ref = EpisodeRef(source=source, episode_id=episode_id, kind="human", uri=f"/synth/{key}",
                             content_hash=f"{content}-{key}")
            w.start_episode(ref, SamplingParams(fps=FPS, size=32))
            w.append_frames(ref, f, np.arange(len(f)) / FPS)
            w.finish_episode(ref, None, fps=FPS)
        return w.commit("synthetic")


@pytest.fixture
def synthetic(tmp_path) -> tuple[str, dict[str, np.ndarray]]:
    eps = {f"cam/ep{i}": _features(40, seed=i) for i in range(6)}
    eps["cam/ep0"] = _features(40, still=(0, 15), seed=0)  # 1.5 s still head
    eps["cam/ep1"] = _features(40, still=(28, 40), seed=1)  # 1.2 s still tail
    eps["web/copy-of-ep2"] = eps["cam/ep2"].copy()  # the same clip in another collection
    uri = str(tmp_path / "store")
    _write(uri, eps)
    return uri, eps


def test_pairs_skip_still_spans_and_read_one_episode_per_duplicate_group(synthetic):
    uri, _ = synthetic
    report = curate_store(uri, progress=False)
    store = FeatureStore.open(uri)
    cset = CurationSet.open(store, report.set_id)
    assert cset.spans("cam/ep0") == [(0, 15, "static")] and cset.spans("cam/ep1") == [(28, 40, "static")]
    assert cset.group_of("web/copy-of-ep2") == "cam/ep2" and cset.duplicate_of("cam/ep2") is None
    k = 2  # 0.2 s at 10 fps
    plain = PairReader(store, PairQuery(k_seconds=0.2, split="all"))
    cur = PairReader(store, PairQuery(k_seconds=0.2, split="all", curation=report.set_id))
    assert "web/copy-of-ep2" in plain.keys.tolist() and "web/copy-of-ep2" not in cur.keys.tolist()
    served: dict[str, list[int]] = {}
    for _, eps, t in cur.batch_indices(64):
        for e, tt in zip(eps.tolist(), t.tolist(), strict=True):
            served.setdefault(cur.keys[e], []).append(tt)
    # every pair whose frames t .. t+k are all kept, once; none touching or straddling a span
    assert sorted(served["cam/ep0"]) == list(range(15, 40 - k))
    assert sorted(served["cam/ep1"]) == list(range(0, 28 - k))
    assert sorted(served["cam/ep3"]) == list(range(0, 40 - k))
    assert len(cur) == sum(len(v) for v in served.values())
    batch = cur.read(np.array([cur.index("cam/ep0")]), np.array([15]))
    np.testing.assert_array_equal(batch["f_t"][0], store.features("cam/ep0")[15])
    # every frame a t (a policy's pairs): t is served while t .. min(t + k, last) are kept
    frames = PairReader(store, PairQuery(k_seconds=0.2, split="all", all_frames=True, curation=report.set_id))
    e = frames.index("cam/ep1")
    assert frames.pair_t(e, np.arange(frames.n_pairs[e])).tolist() == list(range(0, 28 - k))
    assert frames.pair_t(frames.index("cam/ep0"), np.arange(3)).tolist() == [15, 16, 17]
    # the set's decisions can be switched off one by one
    keep_all = PairReader(store, PairQuery(k_seconds=0.2, split="all", curation=report.set_id, drop_idle=False,
                                           dedup=False))
    assert len(keep_all) == len(plain)


def test_a_rerun_scores_only_new_and_redone_episodes_and_finds_their_duplicates(synthetic):
    """A refresh must not rescore a million old episodes for one new clip, and a new copy of
    an old episode must still be found."""
    uri, eps = synthetic
    first = curate_store(uri, progress=False)
    assert first.episodes == 7 and first.duplicates == 1
    again = curate_store(uri, progress=False)
    assert again.episodes == 0 and again.version_after is None and again.skipped == 7
    before = CurationSet.open(FeatureStore.open(uri), first.set_id)
    motion = before.motion("cam/ep3")

    _write(uri, {"late/copy-of-ep4": eps["cam/ep4"].copy()})  # new: a copy of an old episode
    _write(uri, {"cam/ep5": _features(40, still=(20, 40), seed=5)}, content="v2")  # redone: new content
    stale = CurationSet.open(FeatureStore.open(uri), first.set_id)
    assert "cam/ep5" not in stale and stale.stale == 1 and "late/copy-of-ep4" not in stale
    third = curate_store(uri, progress=False)
    assert third.episodes == 2 and third.skipped == 6 and third.duplicates == 1 and third.regrouped == 1
    cset = CurationSet.open(FeatureStore.open(uri), first.set_id)
    assert cset.group_of("late/copy-of-ep4") == "cam/ep4" and cset.group_of("cam/ep4") == "cam/ep4"
    assert cset.spans("cam/ep5") == [(20, 40, "static")]
    np.testing.assert_array_equal(cset.motion("cam/ep3"), motion)  # old rows untouched
    assert len(cset.keys) == 8 and cset.group_of("web/copy-of-ep2") == "cam/ep2"


def test_a_config_names_its_set_and_a_bad_one_fails_in_one_line(tmp_path, synthetic):
    uri, _ = synthetic
    (tmp_path / "curate.yaml").write_text("motion: {min_seconds: 3.0}\n")
    cfg = load_curation_config(tmp_path / "curate.yaml")
    report = curate_store(uri, cfg, progress=False)
    assert CurationSet.open(FeatureStore.open(uri), report.set_id).spans("cam/ep0") == []  # 1.5 s < 3 s
    assert report.set_id != curate_store(uri, progress=False).set_id  # the defaults: another set beside it
    assert len(list_curation_sets(FeatureStore.open(uri))) == 2
    (tmp_path / "bad.yaml").write_text("motion: {min_second: 3.0}\n")
    result = CliRunner().invoke(app, ["curate", "--store", uri, "--config", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2 and "motion.min_second: unknown field" in result.output
    (tmp_path / "corpus.yaml").write_text(f"sources: []\nstore: {{uri: {uri}}}\ncuration: curate.yaml\n")
    assert load_corpus(tmp_path / "corpus.yaml").curation == cfg
    with pytest.raises(ConfigError, match="curation set"):
        PairReader(FeatureStore.open(uri), PairQuery(curation="cur-000000000000"))
