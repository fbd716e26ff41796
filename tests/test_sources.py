"""Source adapters: what each format enumerates, and the actions and frames it hands on.

Datasets are tiny real files made by `tests/datasets.py` (and two written by the real
`lerobot` library, `tests/fixtures_lerobot/real_v*`)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest

from pipeline.samples.lerobot_v3 import LeRobotEpisode, write_lerobot_v3
from pipeline.sources import (
    EpisodeError,
    SourceError,
    hashing,
    iter_episodes,
    load_actions,
    read_image_frames,
    read_image_timestamps,
)
from schemas.config import SourceSpec
from tests.datasets import CAM, make_hdf5, make_lerobot_v21, make_lerobot_v30, make_video

REAL = Path(__file__).parent / "fixtures_lerobot"


def spec(uri: Path | str, fmt: str, kind: str = "robot", **kw: object) -> SourceSpec:
    return SourceSpec(id="src", kind=kind, format=fmt, uri=str(uri), **kw)


@pytest.fixture(scope="session")
def v30(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 80 Hz rows under 20 fps video: a robot that logs control faster than its camera.
    return make_lerobot_v30(
        tmp_path_factory.mktemp("v30"), episodes=(6, 4, 5), fps=80, video_fps=20, tasks=["reach", "push", "reach"]
    )


@pytest.fixture(scope="session")
def v21(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lerobot_v21(tmp_path_factory.mktemp("v21"), episodes=(6, 4, 5), fps=10)


@pytest.fixture()
def clips(tmp_path: Path) -> Path:
    make_video(tmp_path / "a.mp4", 4)
    make_video(tmp_path / "sub" / "B.MKV", 4)
    (tmp_path / "empty.webm").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a video")
    return tmp_path


# --- video_dir ----------------------------------------------------------------------------


def test_video_dir_lists_videos_recursively_by_extension_including_empty_files(clips: Path) -> None:
    refs = list(iter_episodes(spec(clips, "video_dir", "human", instruction="cook")))
    assert [r.episode_id for r in refs] == ["a.mp4", "empty.webm", "sub/B.MKV"]
    assert all(r.instruction == "cook" and r.kind == "human" and r.start_s == 0 and r.end_s is None for r in refs)
    assert refs[2].uri == str(clips / "sub" / "B.MKV")


def test_video_dir_csv_manifest_gives_segments_instructions_and_splits_and_only_listed_files(clips: Path) -> None:
    (clips / "m.csv").write_text(
        "file,instruction,split,start_s,end_s\na.mp4,open jar,train,0.5,1.5\nsub/B.MKV,,val,,\n"
    )
    refs = list(iter_episodes(spec(clips, "video_dir", "human", manifest="m.csv", instruction="default")))
    assert [r.episode_id for r in refs] == ["a.mp4@0.5-1.5", "sub/B.MKV"]
    assert (refs[0].start_s, refs[0].end_s, refs[0].instruction, refs[0].split) == (0.5, 1.5, "open jar", "train")
    assert (refs[1].instruction, refs[1].split, refs[1].end_s) == ("default", "val", None)


def test_video_dir_jsonl_manifest_accepts_start_end_and_a_custom_instruction_field(clips: Path) -> None:
    rows = [{"file": "a.mp4", "narration": "stir", "start": 0, "end": 2}, {"file": "a.mp4", "start": 2}]
    (clips / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    refs = list(iter_episodes(spec(clips, "video_dir", "human", manifest="m.jsonl", instruction_field="narration")))
    assert [(r.episode_id, r.start_s, r.end_s, r.instruction) for r in refs] == [
        ("a.mp4@0-2", 0.0, 2.0, "stir"),
        ("a.mp4@2-", 2.0, None, None),
    ]


def test_manifest_row_for_a_missing_file_still_yields_an_episode(clips: Path) -> None:
    (clips / "m.csv").write_text("file\na.mp4\ngone.mp4\n")
    refs = list(iter_episodes(spec(clips, "video_dir", "human", manifest="m.csv")))
    assert [r.episode_id for r in refs] == ["a.mp4", "gone.mp4"]
    assert not os.path.exists(refs[1].uri)
    assert refs[0].refused is None
    assert refs[1].refused == "m.csv row 2: path 'gone.mp4' does not exist in the source folder"


def test_manifest_without_file_column_is_a_source_error_naming_it(clips: Path) -> None:
    (clips / "m.csv").write_text("path,instruction\na.mp4,x\n")
    with pytest.raises(SourceError, match=r"m\.csv.*`file` column"):
        list(iter_episodes(spec(clips, "video_dir", "human", manifest="m.csv")))


def test_video_dir_missing_folder_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such folder"):
        list(iter_episodes(spec(tmp_path / "nope", "video_dir", "human")))


def test_enumeration_never_opens_a_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = make_video(tmp_path / "clip_00.mp4", 2)
    for i in range(1, 50):
        shutil.copy(one, tmp_path / f"clip_{i:02d}.mp4")

    def no_decode(*a: object, **k: object) -> None:
        raise AssertionError("enumeration must not open videos")

    monkeypatch.setattr(av, "open", no_decode)
    t0 = time.perf_counter()
    refs = list(iter_episodes(spec(tmp_path, "video_dir", "human")))
    assert len(refs) == 50 and time.perf_counter() - t0 < 2.0


def test_video_dir_over_an_fsspec_url(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/clips/x/a.mp4", make_video(tmp_path / "a.mp4", 2).read_bytes())
    refs = list(iter_episodes(spec("memory://bucket/clips", "video_dir", "human")))
    assert [(r.episode_id, r.uri) for r in refs] == [("x/a.mp4", "memory://bucket/clips/x/a.mp4")]
    fs.pipe("/bucket/clips/x/a.mp4", b"\0" * fs.size("/bucket/clips/x/a.mp4"))
    assert next(iter_episodes(spec("memory://bucket/clips", "video_dir", "human"))).content_hash != refs[0].content_hash


# --- content hashes -----------------------------------------------------------------------


def test_content_hash_is_stable_while_nothing_changes(clips: Path) -> None:
    first = [r.content_hash for r in iter_episodes(spec(clips, "video_dir", "human"))]
    assert [r.content_hash for r in iter_episodes(spec(clips, "video_dir", "human"))] == first
    assert len(set(first)) == len(first)


def test_content_hash_changes_when_a_video_is_rewritten_with_same_size_and_mtime(clips: Path) -> None:
    path = clips / "a.mp4"
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # old: past the racy window, so memoised
    before = next(r for r in iter_episodes(spec(clips, "video_dir", "human")) if r.episode_id == "a.mp4")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # even a restored mtime must not hide the edit
    after = next(r for r in iter_episodes(spec(clips, "video_dir", "human")) if r.episode_id == "a.mp4")
    assert after.content_hash != before.content_hash


def test_unchanged_old_file_is_hashed_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_video(tmp_path / "a.mp4", 2)
    monkeypatch.setattr(hashing, "RACY_WINDOW_S", -1.0)  # the file was just written: pretend it is old
    hashing.clear_cache()
    reads = []
    real = hashing._sha256_stream
    monkeypatch.setattr(hashing, "_sha256_stream", lambda f: reads.append(1) or real(f))
    assert hashing.file_digest(str(path)) == hashing.file_digest(str(path))
    assert len(reads) == 1


# --- lerobot ------------------------------------------------------------------------------


def test_lerobot_v30_enumerates_episodes_with_their_span_of_the_shared_video(v30: Path) -> None:
    refs = list(iter_episodes(spec(v30, "lerobot")))
    assert [r.episode_id for r in refs] == ["episode_000000", "episode_000001", "episode_000002"]
    assert len({r.uri for r in refs}) == 1 and refs[0].uri.endswith(f"videos/{CAM}/chunk-000/file-000.mp4")
    assert [(r.start_s, r.end_s) for r in refs] == [(0.0, 0.3), (0.3, 0.5), (0.5, 0.75)]
    assert [r.instruction for r in refs] == ["reach", "push", "reach"]
    assert {(r.camera, r.fps, r.action_rate, r.split) for r in refs} == {(CAM, 20.0, 80.0, "train")}


def test_lerobot_v30_actions_are_the_episodes_own_rows_at_the_control_rate(v30: Path) -> None:
    ref = list(iter_episodes(spec(v30, "lerobot")))[1]
    track = load_actions(ref)
    assert track is not None and track.actions.shape == (16, 4)  # 4 frames at 20 fps = 16 rows at 80 Hz
    np.testing.assert_array_equal(track.actions[:, 0], 1000 + np.arange(16))
    np.testing.assert_allclose(track.timestamps, np.arange(16) / 80)
    assert track.state is not None and track.state.shape == (16, 3) and (track.state == 1).all()


def test_lerobot_rows_faster_than_the_video_are_timed_by_their_timestamps(tmp_path: Path) -> None:
    """Our writer, told `fps=80, video_fps=20`, makes the case lerobot's own loader refuses (rows
    are no longer frames); the adapter still hands on each episode's rows at the control rate."""
    def actions(ep: int, rows: int) -> np.ndarray:
        return np.column_stack([1000 * ep + np.arange(rows), np.zeros((rows, 3))]).astype(np.float32)

    episodes = [LeRobotEpisode(task="reach", data={"action": actions(ep, 4 * n)},
                               videos={CAM: np.full((n, 24, 32, 3), 40 * ep, np.uint8)})
                for ep, n in enumerate((3, 5))]
    write_lerobot_v3(tmp_path / "ds", episodes, fps=80, video_fps=20)
    refs = list(iter_episodes(spec(tmp_path / "ds", "lerobot")))
    assert [(r.start_s, r.end_s, r.fps, r.action_rate) for r in refs] == [(0.0, 0.15, 20.0, 80.0),
                                                                           (0.15, 0.4, 20.0, 80.0)]
    track = load_actions(refs[1])
    assert track is not None and track.actions.shape == (20, 4)  # 5 frames at 20 fps = 20 rows at 80 Hz
    np.testing.assert_array_equal(track.actions[:, 0], 1000 + np.arange(20))
    np.testing.assert_allclose(track.timestamps, np.arange(20) / 80)


def test_lerobot_v30_episode_in_a_later_file_spans_from_that_files_start(tmp_path: Path) -> None:
    root = make_lerobot_v30(tmp_path / "ds", episodes=(6, 4, 5), episodes_per_file=2)
    ref = list(iter_episodes(spec(root, "lerobot")))[2]
    assert ref.uri.endswith("chunk-000/file-001.mp4") and (ref.start_s, ref.end_s) == (0.0, 0.5)
    assert ref.actions_uri is not None and ref.actions_uri.endswith("data/chunk-000/file-001.parquet")


def test_lerobot_over_an_fsspec_url_reads_meta_and_actions(v30: Path) -> None:
    fs = fsspec.filesystem("memory")
    for p in v30.rglob("*"):
        if p.is_file():
            fs.pipe(f"/lerobot/ds/{p.relative_to(v30).as_posix()}", p.read_bytes())
    refs = list(iter_episodes(spec("memory://lerobot/ds", "lerobot")))
    assert refs[2].uri == f"memory://lerobot/ds/videos/{CAM}/chunk-000/file-000.mp4"
    track = load_actions(refs[2])
    assert track is not None
    np.testing.assert_array_equal(track.actions[:, 0], 2000 + np.arange(20))


def test_lerobot_v21_has_one_video_and_one_parquet_per_episode(v21: Path) -> None:
    refs = list(iter_episodes(spec(v21, "lerobot")))
    assert [r.uri for r in refs] == [str(v21 / f"videos/chunk-000/{CAM}/episode_{i:06d}.mp4") for i in range(3)]
    assert {(r.start_s, r.end_s) for r in refs} == {(0.0, None)}
    assert [r.instruction for r in refs] == ["task 0", "task 1", "task 0"]
    track = load_actions(refs[2])
    assert track is not None
    np.testing.assert_array_equal(track.actions[:, 0], 2000 + np.arange(5))
    np.testing.assert_allclose(track.timestamps, np.arange(5) / 10)


def test_lerobot_content_hash_follows_the_episodes_data_rows(tmp_path: Path) -> None:
    root = make_lerobot_v21(tmp_path / "ds", episodes=(3, 3))
    before = [r.content_hash for r in iter_episodes(spec(root, "lerobot"))]
    import pyarrow.parquet as pq

    data = root / "data/chunk-000/episode_000001.parquet"
    table = pq.read_table(data)
    pq.write_table(table.set_column(0, "observation.state", table.column(0).take([2, 1, 0])), data)
    after = [r.content_hash for r in iter_episodes(spec(root, "lerobot"))]
    assert after[0] == before[0] and after[1] != before[1]


def test_lerobot_human_source_has_no_actions(v30: Path) -> None:
    ref = next(iter_episodes(spec(v30, "lerobot", kind="human")))
    assert load_actions(ref) is None


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "info.json: not found"),
        ("{not json", "info.json: unreadable"),
        ('{"codebase_version": "v1.6", "features": {}}', "codebase_version 'v1.6' is not supported"),
    ],
)
def test_bad_info_json_is_a_source_error_naming_the_file(tmp_path: Path, content: str | None, match: str) -> None:
    (tmp_path / "meta").mkdir()
    if content is not None:
        (tmp_path / "meta" / "info.json").write_text(content)
    with pytest.raises(SourceError, match=match):
        list(iter_episodes(spec(tmp_path, "lerobot")))


def test_lerobot_images_in_parquet_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    root = make_lerobot_v21(tmp_path / "ds", episodes=(2,))
    info = json.loads((root / "meta/info.json").read_text())
    info["features"][CAM]["dtype"] = "image"
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(SourceError, match="image features stored in parquet are not supported yet"):
        list(iter_episodes(spec(root, "lerobot")))


def test_lerobot_unknown_action_field_fails_at_enumeration(v21: Path) -> None:
    with pytest.raises(SourceError, match=r"action field\(s\) \['act'\]"):
        list(iter_episodes(spec(v21, "lerobot", action_fields=["act"])))


@pytest.mark.parametrize(
    ("version", "spans", "frames_in_first_file"),
    [("real_v30", [(0.0, 1.2), (1.2, 2.1), (2.1, 3.6)], 36), ("real_v21", [(0.0, None)] * 3, 12)],
)
def test_reads_datasets_written_by_the_real_lerobot_library(
    version: str, spans: list[tuple[float, float | None]], frames_in_first_file: int
) -> None:
    root = REAL / version  # lerobot 0.4.4 (v3.0) and 0.3.3 (v2.1), default codec (AV1)
    refs = list(iter_episodes(spec(root, "lerobot")))
    assert [(r.start_s, r.end_s) for r in refs] == spans
    assert [r.instruction for r in refs] == ["pick up the red cube", "open the drawer", "pick up the red cube"]
    assert {(r.camera, r.fps) for r in refs} == {("observation.images.front", 10.0)}
    track = load_actions(refs[1])
    assert track is not None and track.state is not None
    np.testing.assert_array_equal(track.actions[:, 0], 1000 + np.arange(9))
    np.testing.assert_allclose(track.timestamps, np.arange(9) / 10)
    with av.open(refs[0].uri) as c:  # AV1 decodes with our PyAV
        assert sum(1 for _ in c.decode(video=0)) == frames_in_first_file


# --- hdf5 ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def h5file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hdf5(tmp_path_factory.mktemp("h5") / "lift.hdf5", demos={"demo_10": 3, "demo_2": 5, "demo_1": 4})


def test_hdf5_demos_are_ordered_numerically_with_camera_and_rate(h5file: Path) -> None:
    refs = list(iter_episodes(spec(h5file, "hdf5", instruction="lift")))
    assert [r.episode_id for r in refs] == ["demo_1", "demo_2", "demo_10"]
    assert refs[2].image_key == "data/demo_10/obs/agentview_image" and refs[2].uri == str(h5file)
    assert {(r.camera, r.fps, r.action_rate, r.instruction) for r in refs} == {("agentview_image", 20.0, 20.0, "lift")}


def test_hdf5_frames_are_read_whole_or_by_index_with_control_rate_timestamps(h5file: Path) -> None:
    ref = list(iter_episodes(spec(h5file, "hdf5")))[1]  # demo_2, 5 frames
    frames, ts = read_image_frames(ref)
    assert frames.shape == (5, 12, 16, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(ts, np.arange(5) / 20)
    np.testing.assert_allclose(read_image_timestamps(ref), ts)
    picked, pts = read_image_frames(ref, [4, 0, 4])
    np.testing.assert_array_equal(picked, frames[[4, 0, 4]])
    np.testing.assert_allclose(pts, [0.2, 0.0, 0.2])


def test_hdf5_actions_belong_to_their_demo(h5file: Path) -> None:
    ref = list(iter_episodes(spec(h5file, "hdf5", state_fields=["robot0_eef_pos"])))[2]  # demo_10
    track = load_actions(ref)
    assert track is not None and track.actions.dtype == np.float32
    np.testing.assert_array_equal(track.actions[:, 0], 10_000 + np.arange(3))
    np.testing.assert_allclose(track.timestamps, np.arange(3) / 20)
    assert track.state is not None and track.state.shape == (3, 3)


def test_hdf5_without_a_rate_asks_for_action_rate(tmp_path: Path) -> None:
    path = make_hdf5(tmp_path / "x.hdf5", control_freq=None)
    with pytest.raises(SourceError, match="action_rate"):
        list(iter_episodes(spec(path, "hdf5")))
    ref = next(iter_episodes(spec(path, "hdf5", action_rate=15)))
    assert ref.action_rate == 15.0


def test_hdf5_folder_of_libero_files_reads_each_files_instruction(tmp_path: Path) -> None:
    make_hdf5(tmp_path / "libero" / "b_task.hdf5", demos=(2,), camera="agentview_rgb", instruction="open it")
    make_hdf5(tmp_path / "libero" / "a_task.hdf5", demos=(2,), camera="agentview_rgb", instruction="close it")
    refs = list(iter_episodes(spec(tmp_path / "libero", "hdf5")))
    assert [(r.episode_id, r.instruction, r.camera) for r in refs] == [
        ("a_task.hdf5/demo_0", "close it", "agentview_rgb"),
        ("b_task.hdf5/demo_0", "open it", "agentview_rgb"),
    ]


def test_hdf5_unreadable_file_in_a_folder_is_yielded_for_quarantine(tmp_path: Path) -> None:
    make_hdf5(tmp_path / "a.hdf5", demos=(2,))
    (tmp_path / "b.hdf5").write_bytes(b"not hdf5 at all")
    refs = list(iter_episodes(spec(tmp_path, "hdf5")))
    assert [r.episode_id for r in refs] == ["a.hdf5/demo_0", "b.hdf5"]
    with pytest.raises(EpisodeError, match=r"b\.hdf5: not a readable HDF5 file"):  # bad input: quarantined
        read_image_frames(refs[1])


def test_several_cameras_are_one_stream_each(sample_corpora: Path) -> None:
    spec = SourceSpec(id="mw", kind="robot", format="lerobot", uri=str(sample_corpora / "robot"),
                      cameras=["observation.images.corner", "observation.images.corner2"])
    refs = list(iter_episodes(spec))
    single = list(iter_episodes(spec.model_copy(update={"cameras": ["observation.images.corner2"]})))
    assert len(refs) == 2 * len(single)
    by_cam = {}
    for r in refs:
        base, cam = r.episode_id.rsplit("@", 1)
        assert cam == r.camera
        by_cam.setdefault(cam, []).append((base, r.start_s, r.end_s))
    assert by_cam["observation.images.corner"] == by_cam["observation.images.corner2"] == [
        (r.episode_id, r.start_s, r.end_s) for r in single]
    assert len({r.key for r in refs}) == len(refs)
