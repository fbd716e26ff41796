"""The ingest job end to end: real videos, real Icechunk store on disk, real Ray.

What an ingest stores, skips, quarantines and commits is the assembler's
(`pipeline.ingest.assembler`), the same on either executor: the tests of those semantics run on
the local executor (one process, no actor to start: a tiny ingest takes ~1 s instead of ~7),
and `test_local_executor_stores_what_ray_stores_without_starting_ray` holds the two executors
to the same stored result. Ray's own part — packed decode tasks, a crashing encoder actor, a
killed driver, the CLI — runs on the session's real local Ray (`ray_local`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import icechunk
import numpy as np
import pyarrow.compute as pc
import pytest
import yaml
import zarr

from pipeline.ingest import ingest_corpus, ingest_episodes
from pipeline.sources import iter_episodes
from pipeline.store import FeatureStore, StoreMismatchError, StoreWriter
from pipeline.store.pairs import PairQuery, PairReader
from schemas import CorpusConfig, EncoderConfig, SamplingConfig, SourceSpec, StoreConfig, load_corpus
from schemas.identity import SamplingParams
from tests.datasets import make_hdf5, make_lerobot_v30, make_video
from tests.encoders import TINY
from tests.stores import chunk_files, fake_encoder

REPO = Path(__file__).resolve().parents[1]
SAMPLING = SamplingConfig(fps=5)


def human(uri: Path, **kw) -> SourceSpec:
    return SourceSpec(id="vids", kind="human", format="video_dir", uri=str(uri), **kw)


def run(spec: SourceSpec, store: Path, encoder: EncoderConfig = TINY, executor: str = "local", **kw):
    refs = list(iter_episodes(spec))
    return ingest_episodes(refs, encoder=encoder, sampling=SAMPLING, store=StoreConfig(uri=str(store)),
                           progress=False, executor=executor, **kw)


@pytest.fixture
def videos(tmp_path) -> Path:
    d = tmp_path / "videos"
    for i in range(3):
        make_video(d / f"v{i}.mp4", n_frames=20, fps=10, seed=i)  # 2 s at 10 fps -> 10 frames at 5 fps
    return d


def test_videos_are_ingested_at_the_target_fps(videos, tmp_path):
    report = run(human(videos), tmp_path / "store")
    assert (report.added, report.skipped, report.quarantined) == (3, 0, [])
    store = FeatureStore.open(str(tmp_path / "store"))
    assert store.version == report.version_after
    assert sorted(store.episodes()["episode_id"].to_pylist()) == ["v0.mp4", "v1.mp4", "v2.mp4"]
    ep = store.episode("vids/v1.mp4")
    assert ep.features.shape == (10, 1, 192) and ep.features.dtype == np.float16
    np.testing.assert_allclose(ep.timestamps, np.arange(10) / 5, atol=1e-3)
    assert ep.actions is None
    assert report.frames == 30


def test_rerun_with_nothing_new_decodes_nothing(videos, tmp_path):
    first = run(human(videos), tmp_path / "store")
    again = run(human(videos), tmp_path / "store")
    assert (again.added, again.skipped, again.frames) == (0, 3, 0)
    assert again.version_after is None and FeatureStore.open(str(tmp_path / "store")).version == first.version_after


def test_new_file_is_appended_and_changed_file_redone(videos, tmp_path):
    first = run(human(videos), tmp_path / "store")
    before = FeatureStore.open(str(tmp_path / "store"))
    make_video(videos / "v3.mp4", n_frames=15, fps=10, seed=7)
    make_video(videos / "v0.mp4", n_frames=20, fps=10, seed=42)  # same name and size, other pixels
    report = run(human(videos), tmp_path / "store")
    assert (report.added, report.skipped) == (2, 2)
    after = FeatureStore.open(str(tmp_path / "store"))
    assert len(after) == 4
    assert not np.array_equal(after.episode("vids/v0.mp4").features, before.episode("vids/v0.mp4").features)
    np.testing.assert_array_equal(after.episode("vids/v1.mp4").features, before.episode("vids/v1.mp4").features)
    # the old version is still there, unchanged
    old = FeatureStore.open(str(tmp_path / "store"), version=first.version_after)
    np.testing.assert_array_equal(old.episode("vids/v0.mp4").features, before.episode("vids/v0.mp4").features)


def test_bad_files_are_quarantined_and_the_rest_commits(videos, tmp_path):
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "notes.mp4").write_text("this is not a video\n")
    good = (videos / "v0.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(good[: len(good) // 3])
    report = run(human(videos), tmp_path / "store")
    assert report.added == 3
    reasons = dict(report.quarantined)
    assert set(reasons) >= {"vids/empty.mp4", "vids/notes.mp4"}
    assert all(r and "\n" not in r for r in reasons.values())
    store = FeatureStore.open(str(tmp_path / "store"))
    cat = {r["episode_id"]: r for r in store.catalog().to_pylist()}
    assert cat["empty.mp4"]["status"] == "quarantined" and cat["empty.mp4"]["reason"]
    assert cat["v2.mp4"]["status"] == "ok"
    # a re-run does not retry the unchanged failures (tests/test_refresh.py), changes nothing, commits nothing
    again = run(human(videos), tmp_path / "store")
    assert again.added == 0 and again.quarantined == [] and again.held == len(report.quarantined)
    assert again.version_after is None


def test_missing_manifest_file_is_quarantined(videos, tmp_path):
    (videos / "manifest.csv").write_text("file,instruction\nv0.mp4,wave\ngone.mp4,jump\n")
    report = run(human(videos, manifest="manifest.csv"), tmp_path / "store")
    assert report.added == 1 and [k for k, _ in report.quarantined] == ["vids/gone.mp4"]
    store = FeatureStore.open(str(tmp_path / "store"))
    assert store.episode("vids/v0.mp4").instruction == "wave"
    # an edited instruction updates the catalog without re-encoding anything
    (videos / "manifest.csv").write_text("file,instruction\nv0.mp4,wave hello\ngone.mp4,jump\n")
    again = run(human(videos, manifest="manifest.csv"), tmp_path / "store")
    assert (again.added, again.skipped, again.retitled, again.frames) == (0, 1, 1, 0)
    updated = FeatureStore.open(str(tmp_path / "store"))
    assert updated.version == again.version_after != store.version
    assert updated.episode("vids/v0.mp4").instruction == "wave hello"
    np.testing.assert_array_equal(updated.episode("vids/v0.mp4").features, store.episode("vids/v0.mp4").features)


def test_lerobot_episodes_carry_the_actions_between_frames(tmp_path):
    # rows at an 80 Hz control rate, video at 20 fps, three episodes in one mp4 (like our samples)
    root = make_lerobot_v30(tmp_path / "ds", episodes=(16, 12, 20), fps=80, video_fps=20)
    spec = SourceSpec(id="bot", kind="robot", format="lerobot", uri=str(root))
    report = run(spec, tmp_path / "store")
    assert report.added == 3, report.quarantined
    store = FeatureStore.open(str(tmp_path / "store"))
    for ep_index, n_video in enumerate((16, 12, 20)):
        ep = store.episode(f"bot/episode_{ep_index:06d}")
        assert len(ep.features) == n_video // 4  # 20 fps video sampled at 5 fps
        assert ep.actions.actions.shape == (n_video * 4, 4)
        # the episode's own rows: action[:, 0] = 1000 * episode + row
        np.testing.assert_array_equal(ep.actions.actions[:, 0], 1000 * ep_index + np.arange(n_video * 4))
    # every control step between two kept frames (0.2 s apart), at the episode's own 80 Hz
    reader = PairReader(store, PairQuery(k_seconds=0.2, horizon=16, action_rate=None, split="all"))
    for _, eps, t in reader.batch_indices(64):
        batch = reader.read(eps, t)
        np.testing.assert_allclose(batch["dt"], 0.2, atol=1e-6)
        assert batch["action_mask"].all()
        ep_index = np.array([int(k.rsplit("_", 1)[1]) for k in batch["episode"]])
        rows = 1000 * ep_index[:, None] + 16 * batch["t"][:, None] + np.arange(16)
        np.testing.assert_array_equal(batch["actions"][:, :, 0], rows)


def test_real_lerobot_dataset_written_by_the_library(tmp_path):
    spec = SourceSpec(id="real", kind="robot", format="lerobot", uri=str(REPO / "tests/fixtures_lerobot/real_v30"))
    report = run(spec, tmp_path / "store")
    assert report.added == len(list(iter_episodes(spec))) and not report.quarantined
    store = FeatureStore.open(str(tmp_path / "store"))
    assert all(store.episode(i).actions is not None for i in range(len(store)))
    # the dataset's own column names (info.json) are in the store, on the arrays and per source
    root = zarr.open_group(icechunk.Repository.open(icechunk.local_filesystem_storage(
        str(tmp_path / "store" / "repo"))).readonly_session(branch="main").store, mode="r")
    shard = root[f"shards/{store.episodes()['shard'][0].as_py()}"]
    assert shard["actions"].attrs["names"] == ["dx", "dy", "dz", "grip"]
    assert shard["state"].attrs["names"] == ["x", "y", "z"]
    assert root.attrs["sources"]["real"]["action_names"] == ["dx", "dy", "dz", "grip"]


def test_hdf5_demos(tmp_path):
    make_hdf5(tmp_path / "demos" / "robomimic.hdf5", demos=(20, 10), size=(24, 16), control_freq=20.0)
    spec = SourceSpec(id="h5", kind="robot", format="hdf5", uri=str(tmp_path / "demos"), instruction="lift")
    report = run(spec, tmp_path / "store")
    assert report.added == 2, report.quarantined
    store = FeatureStore.open(str(tmp_path / "store"))
    lengths = sorted(store.episodes()["frames"].to_pylist())
    assert lengths == [3, 5]  # 1 s and 0.5 s at 20 Hz, sampled at 5 fps


def test_another_encoder_is_refused_before_any_work(videos, tmp_path):
    first = run(human(videos), tmp_path / "store")
    with pytest.raises(StoreMismatchError):
        run(human(videos), tmp_path / "store", encoder=TINY.model_copy(update={"tokens": "cls"}))
    assert FeatureStore.open(str(tmp_path / "store")).version == first.version_after


def test_per_source_fps_and_corpus_ingest(videos, tmp_path):
    cfg = CorpusConfig(sources=[human(videos, fps=2.5)], encoder=TINY, sampling=SAMPLING,
                       store=StoreConfig(uri=str(tmp_path / "store")))
    report = ingest_corpus(cfg, progress=False, executor="local")
    assert report.added == 3
    assert FeatureStore.open(str(tmp_path / "store")).episodes()["frames"].to_pylist() == [5, 5, 5]


@pytest.mark.long
def test_sigkill_mid_ingest_keeps_the_last_version_and_a_rerun_completes(ray_local, tmp_path):
    """Incident guarded against: a preempted ingest node. The kill lands after some
    episodes were written but before the commit; readers must see the previous version,
    and the re-run must finish the job without duplicating anything. The killed run is a
    `lawam ingest` process, a driver on this session's Ray (`RAY_ADDRESS`, as on a cluster: the
    kill takes the driver and its writer, Ray reclaims its actor); the runs before and after it
    run here (same library call), the re-run on that Ray once the dead driver's CPUs are back."""
    vids = tmp_path / "videos"
    for i in range(2):
        make_video(vids / f"a{i}.mp4", n_frames=20, fps=10, seed=i)
    corpus = tmp_path / "corpus.yaml"
    corpus.write_text(yaml.safe_dump({
        "sources": [{"id": "vids", "kind": "human", "format": "video_dir", "uri": str(vids)}],
        "encoder": TINY.model_dump(mode="json"), "sampling": {"fps": 5}, "store": {"uri": str(tmp_path / "store")},
    }))
    cmd = [sys.executable, "-m", "flows.cli", "ingest", str(corpus), "--no-flow", "--no-progress"]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    assert ingest_corpus(load_corpus(corpus), progress=False, executor="local").added == 2
    v1 = FeatureStore.open(str(tmp_path / "store")).version

    for i in range(12):  # more work, long enough to be killed in the middle
        make_video(vids / f"b{i:02d}.mp4", n_frames=80, fps=10, seed=10 + i)
    n_chunks = len(chunk_files(tmp_path / "store"))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(chunk_files(tmp_path / "store")) == n_chunks:  # wait for uncommitted episode data on disk
        assert proc.poll() is None, "ingest finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    store = FeatureStore.open(str(tmp_path / "store"))
    assert store.version == v1 and len(store) == 2
    assert store.episode("vids/a1.mp4").features.shape[0] == 10

    again = ingest_corpus(load_corpus(corpus), progress=False)  # the writer lock died with the process
    assert again.added == 12 and again.skipped == 2, again
    store = FeatureStore.open(str(tmp_path / "store"))
    ids = store.episodes()["episode_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 14
    assert set(store.episodes()["frames"].to_pylist()) == {10, 40}



def test_cli_ingest_exits_3_on_quarantine_and_catalog_lists_it(ray_local, videos, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    (videos / "broken.mp4").write_bytes(b"not a video")
    src = tmp_path / "src.yaml"
    src.write_text(yaml.safe_dump({"id": "vids", "kind": "human", "format": "video_dir", "uri": str(videos)}))
    corpus = tmp_path / "corpus.yaml"
    corpus.write_text(yaml.safe_dump({"sources": [], "encoder": TINY.model_dump(mode="json"), "sampling": {"fps": 5}}))
    runner = CliRunner()
    store = str(tmp_path / "store")
    result = runner.invoke(app, ["ingest", str(src), "--store", store, "--corpus", str(corpus), "--no-flow",
                                 "--no-progress"])
    assert result.exit_code == 3, result.output
    assert "added 3" in result.output and "vids/broken.mp4" in result.output
    result = runner.invoke(app, ["catalog", store, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["sources"][0]["episodes"] == 3 and summary["sources"][0]["quarantined"] == 1
    assert summary["quarantined"][0]["episode_id"] == "broken.mp4"
    result = runner.invoke(app, ["versions", store])
    assert result.exit_code == 0 and summary["version"] in result.output and "1 quarantined" in result.output


def test_encoder_crash_fails_the_run_but_keeps_finished_episodes(ray_local, videos, tmp_path):
    """Incident guarded against: a GPU worker dies mid-ingest. That is not the episodes'
    fault: nothing may be quarantined for it, the episodes already complete are committed,
    and the error reaches the caller so the run can be retried."""
    import ray

    from pipeline.encode import encoder_identity
    from pipeline.ingest.assembler import EpisodeAssembler
    from pipeline.ingest.ray_executor import RayExecutor
    from pipeline.progress import Bar

    @ray.remote(num_cpus=0)
    class DiesOnThirdBlock:
        def __init__(self):
            from pipeline.encode import FrozenEncoder

            self.encoder, self.calls = FrozenEncoder(TINY), 0

        def encode(self, block):
            self.calls += 1
            if self.calls == 3:  # one block per episode: the first two episodes are through
                time.sleep(2)  # let the driver finish them before the crash is seen
                os._exit(1)
            return self.encoder.encode(block["frames"]), block["timestamps"]

    refs = sorted(iter_episodes(human(videos)), key=lambda r: r.episode_id)
    params = SamplingParams(fps=5.0, size=32)
    with StoreWriter.open(str(tmp_path / "store"), encoder=encoder_identity(TINY)) as writer:
        executor = RayExecutor([DiesOnThirdBlock.remote()], block_frames=10, decoder="auto")
        with pytest.raises(ray.exceptions.RayActorError):
            executor.run(EpisodeAssembler(writer, lambda r: params, Bar(None, None), commit_every_s=1e9), refs)
    store = FeatureStore.open(str(tmp_path / "store"))
    assert len(store) == 2  # what finished before the crash is kept
    assert store.catalog().filter(pc.equal(store.catalog()["status"], "quarantined")).num_rows == 0
    again = run(human(videos), tmp_path / "store")  # the retry does only the rest
    assert again.added == 3 - len(store) and again.skipped == len(store)
    assert len(FeatureStore.open(str(tmp_path / "store"))) == 3


def test_sample_corpora_ingest_with_control_rate_actions(sample_corpora, tmp_path):
    """The demo's path: our Meta-World LeRobot v3.0 corpus (20 Hz rows, one per 20 fps AV1 frame)
    and the human stand-in, through the example source specs, into one store."""
    from pipeline.samples import sample_sources

    cfg = CorpusConfig(sources=sample_sources(sample_corpora), encoder=TINY, sampling=SAMPLING,
                       store=StoreConfig(uri=str(tmp_path / "store")))
    report = ingest_corpus(cfg, progress=False, executor="local")
    assert not report.quarantined and report.added == len(list(iter_episodes(cfg.sources[0]))) + len(
        list(iter_episodes(cfg.sources[1])))
    store = FeatureStore.open(str(tmp_path / "store"), version=report.version_after)
    kinds = dict(zip(store.episodes()["source"].to_pylist(), store.episodes()["kind"].to_pylist(), strict=True))
    assert kinds == {"metaworld": "robot", "human-standin": "human"}
    robot = [i for i, s in enumerate(store.episodes()["source"].to_pylist()) if s == "metaworld"]
    ep = store.episode(robot[0])
    np.testing.assert_allclose(np.diff(ep.timestamps), 0.1, atol=1e-3)  # the source's own fps: 10
    assert ep.actions.state is not None and ep.instruction
    reader = PairReader(store, PairQuery(k_seconds=0.2, horizon=4, action_rate=None, sources=("metaworld",),
                                         split="all"))
    batch = reader.read(np.array([reader.index(store.keys[robot[0]])]), np.array([0]))
    assert batch["actions"].shape == (1, 4, 4) and batch["action_mask"].all()  # 0.2 s of 20 Hz control
    np.testing.assert_allclose(batch["dt"], 0.2, atol=1e-3)


# -- many short episodes: packed decode tasks, buffered writes -----------------------------------

@pytest.fixture
def short_clips(tmp_path) -> tuple[Path, list[int]]:
    """24 clips of 0.4 to 1.4 s (2 to 7 frames at 5 fps); the 9th is truncated, the 17th is no video."""
    d = tmp_path / "short"
    lengths = [4 + (i * 5) % 11 for i in range(24)]  # source frames at 10 fps
    for i, n in enumerate(lengths):
        make_video(d / f"c{i:02d}.mp4", n_frames=n, fps=10, seed=100 + i)
    make_video(tmp_path / "long.mp4", n_frames=60, fps=10, seed=99)
    whole = (tmp_path / "long.mp4").read_bytes()
    (d / "c08.mp4").write_bytes(whole[: len(whole) * 2 // 3])  # decodes some frames, then fails
    (d / "c16.mp4").write_text("not a video\n")
    return d, lengths


def test_packed_decode_reports_each_episode_alone(short_clips):
    """A batch's blocks pack several episodes; each one's frames are its own decode's, and a
    failure is reported for the failing episode only."""
    from pipeline.ingest.frames import decode_episode_blocks, decode_packed

    d, _ = short_clips
    refs = sorted(iter_episodes(human(d)), key=lambda r: r.episode_id)
    params = SamplingParams(fps=5.0, size=32)
    got: dict[int, list[np.ndarray]] = {}
    ended: dict[int, str] = {}
    for block in decode_packed([(r, params) for r in refs], block_frames=8):
        assert 0 < len(block.frames) <= 8 or block.finished or block.failed
        offset = 0
        for i, k in block.segments:
            assert i not in ended  # an episode's frames all come before its outcome
            got.setdefault(i, []).append(block.frames[offset : offset + k])
            offset += k
        assert offset == len(block.frames) == len(block.timestamps)
        ended.update({i: "ok" for i, _ in block.finished})
        ended.update({i: why for i, why in block.failed})
    assert sorted(ended) == list(range(len(refs)))
    assert {refs[i].episode_id for i, why in ended.items() if why != "ok"} == {"c08.mp4", "c16.mp4"}
    for i, ref in enumerate(refs):
        if ended[i] == "ok":
            alone = np.concatenate([b["frames"] for b in decode_episode_blocks(ref, params, block_frames=8)])
            np.testing.assert_array_equal(np.concatenate(got[i]), alone)


def test_many_short_clips_land_whole_contiguous_and_encoded(ray_local, short_clips, tmp_path, monkeypatch):
    """Issue #8: many short clips share decode tasks and encoder calls. Each lands with its
    own frames, contiguous in its shard, with the features encoding it alone gives; the two
    bad clips among them are quarantined alone."""
    from pipeline.encode import FrozenEncoder
    from pipeline.ingest.frames import decode_episode_blocks
    from pipeline.ingest.ray_executor import RayExecutor

    monkeypatch.setattr(RayExecutor, "batches_per_decoder", 1)  # few, large batches: many episodes per task
    d, lengths = short_clips
    report = run(human(d), tmp_path / "store", executor="ray")
    assert sorted(k for k, _ in report.quarantined) == ["vids/c08.mp4", "vids/c16.mp4"]
    assert report.added == len(lengths) - 2
    store = FeatureStore.open(str(tmp_path / "store"))
    rows = [r for r in store.index.to_pylist() if r["status"] == "ok"]
    by_shard: dict[str, list[dict]] = {}
    for r in rows:
        by_shard.setdefault(r["shard"], []).append(r)
    for shard_rows in by_shard.values():  # episodes tile their shard: no gap, no overlap
        shard_rows.sort(key=lambda r: r["frame_start"])
        assert shard_rows[0]["frame_start"] == 0
        for a, b in zip(shard_rows, shard_rows[1:], strict=False):
            assert b["frame_start"] == a["frame_start"] + a["frames"]
    encoder = FrozenEncoder(TINY)
    params = SamplingParams(fps=5.0, size=32)
    refs = {x.episode_id: x for x in iter_episodes(human(d))}
    for r in rows:
        blocks = list(decode_episode_blocks(refs[r["episode_id"]], params, block_frames=8))
        frames = np.concatenate([b["frames"] for b in blocks])
        ep = store.episode(f"vids/{r['episode_id']}")
        assert r["frames"] == len(frames) == len(ep.features) == int(np.ceil(lengths[int(r["episode_id"][1:3])] / 2))
        np.testing.assert_allclose(ep.timestamps, np.concatenate([b["timestamps"] for b in blocks]))
        np.testing.assert_allclose(ep.features.astype(np.float32), encoder.encode(frames).astype(np.float32),
                                   atol=2e-2, rtol=2e-2)


@pytest.mark.long
def test_local_executor_stores_what_ray_stores_without_starting_ray(ray_local, short_clips, tmp_path):
    """Issue #18: a notebook ingests without Ray (`executor="local"`): the same step, the same
    episodes kept and quarantined, the same features; Ray is never imported."""
    d, _ = short_clips
    on_ray = run(human(d), tmp_path / "ray", executor="ray")
    script = (
        "import sys\n"
        "from pipeline.ingest import ingest_episodes\n"
        "from pipeline.sources import iter_episodes\n"
        "from schemas import EncoderConfig, SamplingConfig, SourceSpec, StoreConfig\n"
        f"spec = SourceSpec(id='vids', kind='human', format='video_dir', uri={str(d)!r})\n"
        f"enc = EncoderConfig.model_validate_json({TINY.model_dump_json()!r})\n"
        "r = ingest_episodes(list(iter_episodes(spec)), encoder=enc, sampling=SamplingConfig(fps=5),\n"
        f"                    store=StoreConfig(uri={str(tmp_path / 'local')!r}), progress=False, executor='local')\n"
        "assert 'ray' not in sys.modules, 'the local executor imported Ray'\n"
        "print(r.added, sorted(k for k, _ in r.quarantined))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split(None, 1) == [str(on_ray.added), str(sorted(k for k, _ in on_ray.quarantined)) + "\n"]
    a, b = FeatureStore.open(str(tmp_path / "ray")), FeatureStore.open(str(tmp_path / "local"))
    assert sorted(a.keys) == sorted(b.keys)
    for key in a.keys:  # torch's thread count may differ: float16 rounding apart, the same numbers
        np.testing.assert_allclose(a.features(key).astype(np.float32), b.features(key).astype(np.float32),
                                   atol=1e-2, rtol=1e-2)
        np.testing.assert_array_equal(a.timestamps(key), b.timestamps(key))


def test_writer_buffers_episodes_and_writes_them_behind_exactly(tmp_path):
    """Finished episodes are queued per shard and appended in few writes (here after every
    chunk of frames, and at commit); a commit between them, an episode still in flight across
    the commit, and an episode whose actions do not fit the shard's all leave every committed
    episode exactly as written, contiguous in its shard."""
    from pipeline.sources.base import ActionTrack, EpisodeRef

    def ref(i: int) -> EpisodeRef:
        return EpisodeRef(source="s", episode_id=f"e{i:02d}", kind="robot", uri=f"/v/{i}.mp4", content_hash=str(i))

    def feats(i: int, n: int) -> np.ndarray:  # [episode, frame, 0] per frame
        f = np.zeros((n, 1, 3), np.float16)
        f[:, 0, 0], f[:, 0, 1] = i, np.arange(n)
        return f

    lengths = [3, 1, 6, 2, 5, 4, 1, 7]
    with StoreWriter.open(str(tmp_path / "store"), encoder=fake_encoder("fake"), chunk_frames=4) as w:
        w.flush_every_s = 0.0
        w.start_episode(ref(99), SamplingParams(fps=5.0, size=32))  # in flight across the first commit
        w.append_frames(ref(99), feats(99, 5)[:2], np.arange(2) / 5)
        for i, n in enumerate(lengths):
            w.start_episode(ref(i), SamplingParams(fps=5.0, size=32))
            w.append_frames(ref(i), feats(i, n), np.arange(n) / 5)
            acts = np.full((2 * n, 2 if i != 5 else 3), i, np.float32)  # episode 5's actions are too wide
            if i == 5:
                with pytest.raises(ValueError, match="do not fit"):
                    w.finish_episode(ref(i), ActionTrack(np.arange(2 * n) / 10, acts), 5.0)
                w.quarantine(ref(i), "bad actions", SamplingParams(fps=5.0, size=32))
            else:
                w.finish_episode(ref(i), ActionTrack(np.arange(2 * n) / 10, acts), 5.0)
            w.flush()
            if i == 3:
                first = w.commit("first four")
        w.append_frames(ref(99), feats(99, 5)[2:], np.arange(2, 5) / 5)
        w.finish_episode(ref(99), None, 5.0)
        w.commit("the rest")
    store = FeatureStore.open(str(tmp_path / "store"))
    assert len(FeatureStore.open(str(tmp_path / "store"), version=first)) == 4
    rows = {r["episode_id"]: r for r in store.index.to_pylist()}
    assert rows["e05"]["status"] == "quarantined"
    for shard in {r["shard"] for r in rows.values() if r["shard"]}:
        tiles = sorted((r["frame_start"], r["frames"], r["action_start"], r["actions"]) for r in rows.values()
                       if r["shard"] == shard)
        assert [t[0] for t in tiles] == list(np.cumsum([0] + [t[1] for t in tiles[:-1]]))
        with_actions = sorted((a, m) for _, _, a, m in tiles if m)
        assert [a for a, _ in with_actions] == list(np.cumsum([0] + [m for _, m in with_actions[:-1]]))
    for i, n in [*enumerate(lengths), (99, 5)]:
        if i == 5:
            continue
        ep = store.episode(f"s/e{i:02d}")
        np.testing.assert_array_equal(ep.features, feats(i, n))
        np.testing.assert_allclose(ep.timestamps, np.arange(n) / 5)
        if i != 99:
            np.testing.assert_array_equal(ep.actions.actions, np.full((2 * n, 2), i, np.float32))


def test_thread_tuner_keeps_the_faster_thread_count():
    """The CPU encoder times both thread counts in turn and keeps the faster per frame; it
    looks again `period` calls later, so a run whose bottleneck moves follows it."""
    from pipeline.ingest.ray_executor import ThreadTuner

    tuner = ThreadTuner(4, trials=2, period=10)
    cost = {4: 0.5, 1: 0.1}  # seconds per frame: one thread wins (decoders busy on every core)
    used = []
    for call in range(20):
        t = tuner.threads()
        used.append(t)
        if call == 10:
            cost = {4: 0.05, 1: 0.1}  # now the encoder is the bottleneck: all cores win
        tuner.record(t, 8, 8 * cost[t])
    assert used[0] == 4 and used[1:3] == [4, 1]  # warm-up, then one call each: 5x apart is plain
    assert set(used[3:13]) == {1}
    assert used[13:15] == [4, 1] and set(used[15:]) == {4}
    assert ThreadTuner(4, tune=False).threads() == 4


def test_thread_tuner_times_close_choices_fully_and_a_steady_answer_costs_few_slow_calls():
    """Choices within `clear` of each other get `trials` calls each before one is kept; an
    answer that stays the same is checked ever more rarely, so an encoder-bound run (all
    cores win) spends few calls at one thread."""
    from pipeline.ingest.ray_executor import ThreadTuner

    close = ThreadTuner(2, trials=3, period=10)
    used = []
    for _ in range(8):
        t = close.threads()
        used.append(t)
        close.record(t, 8, 8 * {2: 0.10, 1: 0.11}[t])
    assert used[1:7] == [2, 1, 2, 1, 2, 1] and used[7] == 2

    steady = ThreadTuner(2, trials=3, period=10, max_period=1600)
    used = []
    for _ in range(1000):
        t = steady.threads()
        used.append(t)
        steady.record(t, 32, 32 * {2: 0.12, 1: 0.25}[t])
    slow = [i for i, t in enumerate(used) if t == 1]
    assert slow == [2, 24, 66, 148, 310, 632]  # windows 20, 40, 80, ... calls apart: 6 slow calls in 1,000
