"""The sample corpora: LeRobot v3.0 robot episodes and an action-free human video folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import mujoco
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import pipeline.samples as samples_module
from pipeline.samples import (
    SampleError,
    human,
    make_samples,
    metaworld_robot,
    read_human_truth,
    summarize_samples,
)
from pipeline.samples.lerobot_stats import QUANTILE_KEYS, STAT_KEYS
from pipeline.samples.lerobot_v3 import LeRobotEpisode, LeRobotWriteError, write_lerobot_v3
from pipeline.samples.metaworld_robot import (
    ACTION_REPEAT,
    CONTROL_HZ,
    VIDEO_FPS,
    ScriptedTask,
    TaskEnv,
    TaskEnvError,
    layouts,
    proprio,
    read_sample_layouts,
    upright_turns,
)

pytestmark = pytest.mark.slow

DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"


def _video(root: Path, camera: str) -> Path:
    return root / f"videos/observation.images.{camera}/chunk-000/file-000.mp4"


def _decode(path: Path) -> tuple[list[np.ndarray], list[float], float, str]:
    """All frames (RGB), their times (s), the stream's nominal fps and codec."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time))
        return frames, times, float(stream.base_rate), stream.codec_context.codec.canonical_name


def _tiny(seed: int = 0) -> dict[str, Any]:
    return {"tasks": ("reach-v3",), "episodes_per_task": 1, "human_tasks": ("reach-v3",),
            "human_episodes_per_task": 1, "seed": seed, "image_size": 64, "progress": False}


# --- robot corpus: LeRobot v3.0 layout -------------------------------------------------------------------


def test_robot_corpus_has_the_lerobot_v3_layout(sample_corpora: Path, sample_args: dict) -> None:
    robot = sample_corpora / "robot"
    info = json.loads((robot / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["fps"] == CONTROL_HZ == VIDEO_FPS == 20
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    for key in ("robot_type", "total_tasks", "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb"):
        assert key in info
    for camera in sample_args["cameras"]:
        feature = info["features"][f"observation.images.{camera}"]
        assert feature["dtype"] == "video"
        assert feature["shape"] == [64, 64, 3] and feature["names"] == ["height", "width", "channels"]
        assert feature["info"]["video.fps"] == VIDEO_FPS == 20
        assert feature["info"]["video.codec"] == "av1" and feature["info"]["video.pix_fmt"] == "yuv420p"
        assert _video(robot, camera).is_file()
    assert info["features"]["action"] == {"dtype": "float32", "shape": [4], "names": metaworld_robot.ACTION_NAMES}
    for path in (DATA, EPISODES, "meta/tasks.parquet", "meta/stats.json"):
        assert (robot / path).is_file(), path


def test_info_episodes_and_rows_agree(sample_corpora: Path, sample_args: dict) -> None:
    robot = sample_corpora / "robot"
    info = json.loads((robot / "meta/info.json").read_text())
    episodes = pd.read_parquet(robot / EPISODES)
    data = pd.read_parquet(robot / DATA)
    tasks = pd.read_parquet(robot / "meta/tasks.parquet")

    assert info["total_episodes"] == len(episodes) == len(sample_args["tasks"]) * sample_args["episodes_per_task"]
    assert info["total_frames"] == len(data) == episodes["length"].sum()
    assert info["total_tasks"] == len(tasks)
    assert list(episodes["episode_index"]) == list(range(len(episodes)))
    assert list(episodes["dataset_from_index"]) == [0, *episodes["dataset_to_index"][:-1]]
    assert list(data["index"]) == list(range(len(data)))
    for ep in episodes.itertuples():
        rows = data.iloc[ep.dataset_from_index:ep.dataset_to_index]
        assert (rows["episode_index"] == ep.episode_index).all()
        assert list(rows["frame_index"]) == list(range(ep.length))
        assert [tasks.index[i] for i in rows["task_index"].unique()] == list(ep.tasks)


def test_one_row_per_frame_at_the_video_rate(sample_corpora: Path) -> None:
    """Incident guarded: rows at 80 Hz under 20 fps video made lerobot's LeRobotDataset reject the
    corpus (its frame/timestamp check failed on 495 of 660 rows); rows and frames now share one clock."""
    data = pd.read_parquet(sample_corpora / "robot" / DATA)
    episodes = pd.read_parquet(sample_corpora / "robot" / EPISODES)
    expected = (data["frame_index"].to_numpy() / VIDEO_FPS).astype(np.float32)
    assert data["timestamp"].dtype == np.float32
    np.testing.assert_array_equal(data["timestamp"].to_numpy(), expected)
    for ep in episodes.itertuples():
        rows = data.iloc[ep.dataset_from_index:ep.dataset_to_index]
        assert list(rows["next.done"]) == [False] * (ep.length - 1) + [True]
        assert ep.success == rows["next.success"].any()
    assert episodes["success"].all(), "the default scripted experts solve reach-v3"


def test_robot_rows_carry_actions_and_state(sample_corpora: Path) -> None:
    data = pd.read_parquet(sample_corpora / "robot" / DATA)
    actions = np.stack(data["action"].to_numpy())
    state = np.stack(data["observation.state"].to_numpy())
    assert actions.shape == (len(data), 4) and actions.dtype == np.float32
    assert np.abs(actions).max() <= 1.0 and np.abs(actions[:, :3]).max() > 0.1
    assert state.shape == (len(data), 4)
    env_state = np.stack(data["observation.environment_state"].to_numpy())
    np.testing.assert_array_equal(proprio(env_state), state)
    np.testing.assert_array_equal(env_state[:, :4], state)


def test_videos_decode_to_one_frame_per_row(sample_corpora: Path, sample_args: dict) -> None:
    robot = sample_corpora / "robot"
    episodes = pd.read_parquet(robot / EPISODES)
    for camera in sample_args["cameras"]:
        frames, times, fps, codec = _decode(_video(robot, camera))
        key = f"videos/observation.images.{camera}"
        assert codec == "av1" and fps == VIDEO_FPS
        assert len(frames) == episodes["length"].sum()
        assert frames[0].shape == (64, 64, 3)
        first = 0
        for _, row in episodes.iterrows():
            n = row["length"]
            start, end = row[f"{key}/from_timestamp"], row[f"{key}/to_timestamp"]
            assert start == pytest.approx(first / VIDEO_FPS) and end == pytest.approx((first + n) / VIDEO_FPS)
            in_span = [t for t in times if start - 1e-6 <= t < end - 1e-6]
            assert len(in_span) == n
            first += n


def test_stats_carry_lerobots_quantiles_and_shapes(sample_corpora: Path, sample_args: dict) -> None:
    """pi0.5's normaliser reads q01/q99 from meta/stats.json; lerobot 0.4 writes them per episode too."""
    robot = sample_corpora / "robot"
    episodes = pq.read_table(robot / EPISODES).to_pydict()  # nested lists, as written
    stats = json.loads((robot / "meta/stats.json").read_text())
    data = pd.read_parquet(robot / DATA)
    images = [f"observation.images.{camera}" for camera in sample_args["cameras"]]
    for feature in [*data.columns, *images]:
        assert list(stats[feature]) == list(STAT_KEYS), feature
        if feature in images:
            shape: tuple[int, ...] = (3, 1, 1)
        else:
            shape = (1,) if data[feature].dtype != object else (len(data[feature][0]),)
        for key in STAT_KEYS:
            expected = (1,) if key == "count" else shape
            assert np.shape(stats[feature][key]) == expected, (feature, key)
            assert all(np.shape(v) == expected for v in episodes[f"stats/{feature}/{key}"]), (feature, key)
        quantiles = np.array([stats[feature][q] for q in QUANTILE_KEYS], dtype=np.float64)
        assert (np.diff(quantiles, axis=0) >= -1e-9).all(), f"{feature}: quantiles out of order"
    assert stats["action"]["count"] == [len(data)]
    # An episode's q50 is its middle value to within one of lerobot's 5000 histogram bins.
    first = np.stack(data["action"].to_numpy())[: episodes["length"][0]]  # rows of episode 0
    middle = np.sort(first, axis=0)[int(np.ceil(0.5 * len(first))) - 1]
    bin_width = (first.max(axis=0) - first.min(axis=0)) / 5000
    assert (np.abs(episodes["stats/action/q50"][0] - middle) <= bin_width + 1e-9).all()
    for image in images:
        assert np.min(stats[image]["q01"]) >= -1e-9 and np.max(stats[image]["q99"]) <= 1.0


# --- goal layouts and the closed-loop environment --------------------------------------------------------


def test_layouts_are_recorded_and_reproduced(sample_corpora: Path, sample_args: dict) -> None:
    robot = sample_corpora / "robot"
    record = json.loads((robot / "meta/lawam_samples.json").read_text())
    expected = {"seed": 0, "stream": "robot", "cameras": list(sample_args["cameras"]), "image_size": 64,
                "control_hz": 20, "action_repeat": ACTION_REPEAT, "format_version": samples_module.FORMAT_VERSION}
    assert {key: record["generator"][key] for key in expected} == expected
    recorded = read_sample_layouts(robot)
    assert recorded == layouts("reach-v3", seed=0, stream="robot", count=sample_args["episodes_per_task"])
    assert len({layout.rand_vec for layout in recorded}) == len(recorded)
    episodes = pd.read_parquet(robot / EPISODES)
    assert list(episodes["mt1_seed"]) == [layout.mt1_seed for layout in recorded]
    assert list(episodes["layout_slot"]) == [layout.slot for layout in recorded]
    assert read_sample_layouts(sample_corpora / "human") == []


def test_layouts_past_fifty_use_the_next_mt1_seed() -> None:
    many = layouts("reach-v3", seed=0, stream="robot", count=52)
    assert [(layout.slot, layout.mt1_seed == many[0].mt1_seed) for layout in many[49:]] == [
        (49, True), (0, False), (1, False)]
    assert many[:2] == layouts("reach-v3", seed=0, stream="robot", count=2)


def test_task_env_reset_shows_the_corpus_first_frame(sample_corpora: Path, sample_args: dict) -> None:
    """An evaluation resets TaskEnv to a recorded layout and must see what the corpus recorded."""
    robot = sample_corpora / "robot"
    episodes = pd.read_parquet(robot / EPISODES)
    data = pd.read_parquet(robot / DATA)
    recorded = read_sample_layouts(robot)
    for camera in sample_args["cameras"]:
        decoded = _decode(_video(robot, camera))[0]
        with TaskEnv("reach-v3", camera=camera, image_size=64) as env:
            for layout, ep in zip(reversed(recorded), reversed(list(episodes.itertuples())), strict=True):
                obs = env.reset(layout)
                np.testing.assert_array_equal(
                    obs.astype(np.float32), data["observation.environment_state"][ep.dataset_from_index])
                image = env.render()
                assert image.shape == (64, 64, 3) and image.dtype == np.uint8
                first, last = (decoded[i].astype(np.float32) for i in (ep.dataset_from_index, ep.dataset_to_index - 1))
                error = np.abs(image.astype(np.float32) - first).mean()  # rows == frames
                assert error < 8 and error < np.abs(image.astype(np.float32) - last).mean(), "AV1 error only"
    with ScriptedTask("reach-v3", seed=0, stream="robot", cameras=("corner",), height=64, width=64) as task:
        task.rollout(0)  # a used environment resets to the same pixels as a fresh one
        rendered = task.rollout(1, recorded[1]).frames["corner"][0]
    with TaskEnv("reach-v3", camera="corner", image_size=64) as env:
        env.reset(recorded[1])
        np.testing.assert_array_equal(env.render(), rendered)


def test_task_env_holds_each_action_for_four_meta_world_steps() -> None:
    layout = layouts("push-v3", seed=0, stream="robot", count=1)[0]
    with TaskEnv("push-v3", camera="corner", image_size=32) as env:
        with pytest.raises(TaskEnvError, match="before reset"):
            env.step(np.zeros(4))
        obs = env.reset(layout)
        np.testing.assert_array_equal(proprio(obs), obs[:4].astype(np.float32))
        assert env.max_steps == 125
        moved, _ = env.step(np.array([5.0, 0.0, 0.0, 0.0]))  # clipped to 1
        assert env.env.curr_path_length == ACTION_REPEAT
        assert moved[0] > obs[0] + 0.005, "the hand moves along +x"
        for _ in range(env.max_steps - 1):
            env.step(np.zeros(4))
        assert env.env.curr_path_length == 500
        with pytest.raises(TaskEnvError, match="125 control steps"):
            env.step(np.zeros(4))
        env.reset(layout)  # a reset starts the next episode
        env.step(np.zeros(4))


# --- human corpus ----------------------------------------------------------------------------------------


def test_human_corpus_is_action_free_video(sample_corpora: Path, sample_args: dict) -> None:
    human = sample_corpora / "human"
    manifest = pd.read_csv(human / "manifest.csv")
    assert list(manifest.columns) == ["file", "instruction"]
    assert len(manifest) == len(sample_args["human_tasks"]) * sample_args["human_episodes_per_task"]
    assert {p.suffix for p in human.rglob("*") if p.is_file()} == {".csv", ".mp4"}
    for row in manifest.itertuples():
        frames, _, fps, codec = _decode(human / row.file)
        assert codec == "h264" and fps == 20
        assert frames[0].shape == (64, 86, 3) and len(frames) > 5
        assert row.instruction == "push the drawer closed"


def test_human_truth_is_kept_beside_the_source_frame_for_frame(sample_corpora: Path) -> None:
    """What the hand did is kept for evaluation only: beside human/ (a source pointed at it
    never sees it), one action row per decoded frame, keyed by the manifest's file names."""
    truth = read_human_truth(sample_corpora)
    manifest = pd.read_csv(sample_corpora / "human" / "manifest.csv")
    assert set(truth) == set(manifest["file"])
    assert not list((sample_corpora / "human").rglob("*.parquet"))
    for row in manifest.itertuples():
        frames, times, _, _ = _decode(sample_corpora / "human" / row.file)
        t = truth[row.file]
        assert t.actions.shape == (len(frames), 4) and t.state.shape == (len(frames), 4)
        np.testing.assert_allclose(t.timestamps, times, atol=1e-3)
        assert t.speed == 1.0 and np.abs(t.actions[:, :3]).max() > 0.1


def test_min_seconds_slows_the_expert_until_the_clip_lasts(tmp_path: Path) -> None:
    """reach-v3 succeeds in ~0.5 s at full speed; with min_seconds=2 the expert's moves are
    scaled down (the recorded speed) until the episode lasts 2 s, and it still succeeds."""
    out = tmp_path / "slow"
    make_samples(out, **{**_tiny(), "human_tasks": ()}, min_seconds=2.0)
    episode = json.loads((out / "robot" / "meta/lawam_samples.json").read_text())["episodes"][0]
    assert episode["success"] and episode["length"] >= 40 and episode["speed"] < 1.0
    actions = np.stack(pq.read_table(out / "robot" / DATA).column("action").to_numpy(zero_copy_only=False))
    assert np.abs(actions[:, :3]).max() <= episode["speed"] + 1e-6


def test_summary_reads_what_is_on_disk(sample_corpora: Path) -> None:
    summary = summarize_samples(sample_corpora)
    robot, human = summary.sources
    episodes = pd.read_parquet(sample_corpora / "robot" / EPISODES)
    assert (robot.source, robot.format, robot.episodes) == ("robot", "lerobot", len(episodes))
    assert robot.frames == episodes["length"].sum()
    assert robot.hours == pytest.approx(robot.frames / VIDEO_FPS / 3600)
    assert robot.tasks == ("reach to the goal position",)
    assert (human.source, human.format, human.episodes) == ("human", "video_dir", 2)
    assert [set(row) for row in summary.to_rows()] == [set(summary.COLUMNS)] * 2
    assert summary.to_table().row_count == 2


# --- orientation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("camera", ["corner", "corner2", "corner3"])
def test_frames_are_upright_and_not_mirrored(camera: str) -> None:
    """Incident guarded: Meta-World's corner cameras render the table upside down (their image-up
    axis points at the floor), and flipping only the rows fixes "up" but mirrors the scene.

    Every pixel is back-projected to the world with a depth render and the frame orientation
    applied; upright means world height falls going down the image, unmirrored means image
    right x image up points back at the camera (a right-handed view) on every surface.
    """
    size = 64
    with TaskEnv("reach-v3", camera=camera, image_size=size) as env:
        model, data = env.env.model, env.env.data
        env.reset(layouts("reach-v3", seed=0, stream="robot", count=1)[0])
        with mujoco.Renderer(model, size, size) as renderer:
            renderer.enable_depth_rendering()
            renderer.update_scene(data, camera=camera)
            depth = renderer.render()  # (H, W) metres along the optical axis, row 0 = camera +y
        cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        axes = data.cam_xmat[cam].reshape(3, 3)  # columns: camera x, y, z in world
        focal = 0.5 * size / np.tan(np.radians(model.cam_fovy[cam]) / 2)
        rows, cols = np.mgrid[0:size, 0:size] + 0.5
        ray = np.stack([(cols - size / 2) / focal, (size / 2 - rows) / focal, -np.ones_like(rows)], -1)
        world = data.cam_xpos[cam] + (ray * depth[..., None]) @ axes.T  # (H, W, 3)
        world = np.rot90(world, upright_turns(model, data, camera))
        forward = -axes[:, 2]

    down = world[1:-1, 1:-1] - world[:-2, 1:-1]  # one pixel down the image
    right = world[1:-1, 2:] - world[1:-1, 1:-1]  # one pixel right
    same_surface = (np.linalg.norm(down, axis=-1) < 0.05) & (np.linalg.norm(right, axis=-1) < 0.05)
    fall = -down[..., 2][same_surface]
    assert (fall > 1e-4).sum() > 3 * (fall < -1e-4).sum(), "world height must fall going down the image"
    handed = np.cross(right, -down) @ forward
    assert (handed[same_surface] < 0).mean() > 0.9, "image right x up must face the camera (no mirror)"


def test_stored_video_frames_are_the_upright_renders(sample_corpora: Path) -> None:
    """The video holds the oriented render, not a re-flipped or raw one."""
    with ScriptedTask("reach-v3", seed=0, stream="robot", cameras=("corner",), height=64, width=64) as task:
        rendered = task.rollout(0).frames["corner"].astype(np.float32)
    decoded = np.stack(_decode(_video(sample_corpora / "robot", "corner"))[0][: len(rendered)]).astype(np.float32)
    error = np.abs(decoded - rendered).mean()
    error_if_turned = np.abs(decoded - np.rot90(rendered, 2, axes=(1, 2))).mean()
    assert error < 10 and error < error_if_turned / 3


# --- determinism, caching, bad input ---------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_new_arguments_regenerate(tmp_path: Path) -> None:
    first = make_samples(tmp_path / "a", **_tiny(seed=0))
    second = make_samples(tmp_path / "b", **_tiny(seed=0))
    assert not first.cached and not second.cached
    for rel in (f"robot/{DATA}", "robot/videos/observation.images.corner/chunk-000/file-000.mp4",
                "robot/meta/lawam_samples.json", "human/manifest.csv", "human/videos/reach-v3_000.mp4"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel

    reseeded = make_samples(tmp_path / "b", **_tiny(seed=1))
    assert not reseeded.cached
    old, new = pq.read_table(tmp_path / "a" / "robot" / DATA), pq.read_table(tmp_path / "b" / "robot" / DATA)
    assert not old.equals(new)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.is_dir()) == []


def test_second_call_with_same_arguments_renders_nothing(
    sample_corpora: Path, sample_args: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_rendering(*args: object, **kwargs: object) -> None:
        raise AssertionError("make_samples rendered although the corpora on disk match its arguments")

    monkeypatch.setattr(samples_module, "_render_corpora", no_rendering)
    summary = make_samples(sample_corpora, **sample_args)
    assert summary.cached
    assert [s.source for s in summary.sources] == ["robot", "human"]


def test_interrupted_regeneration_keeps_the_previous_corpora(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    make_samples(out, **{**_tiny(), "human_tasks": ()})
    before = (out / "robot" / DATA).read_bytes()

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(human, "make_human_corpus", killed)
    with pytest.raises(KeyboardInterrupt):
        make_samples(out, **_tiny(seed=1))  # robot corpus rendered, then the run dies
    assert (out / "robot" / DATA).read_bytes() == before
    assert summarize_samples(out).sources[0].episodes == 1
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"tasks": ("reach-v3", "pick-nothing-v3")}, "pick-nothing-v3"),
        ({"human_tasks": ("drawer-clsoe-v3",)}, "drawer-close-v3"),  # suggests the near miss
        ({"episodes_per_task": 0}, "episodes_per_task"),
        ({"cameras": ("selfie",)}, "selfie"),
        ({"image_size": 63}, "image_size"),
        ({"tasks": (), "human_tasks": ()}, "both empty"),
    ],
)
def test_bad_arguments_fail_before_rendering(tmp_path: Path, override: dict, named: str) -> None:
    with pytest.raises(SampleError, match=named):
        make_samples(tmp_path / "out", **{**_tiny(), **override})
    assert not (tmp_path / "out").exists()


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(SampleError, match="did not write"):
        make_samples(tmp_path / "out", **_tiny())
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


# --- the LeRobot writer on its own (no rendering) --------------------------------------------------------


def test_lerobot_writer_makes_standard_datasets_with_one_row_per_frame(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    episodes = [
        LeRobotEpisode(task=task, data={"action": rng.random((n, 2), dtype=np.float32)},
                       videos={"observation.images.top": rng.integers(0, 255, (n, 32, 48, 3), dtype=np.uint8)})
        for task, n in (("a", 5), ("b", 7), ("a", 3))
    ]
    info = write_lerobot_v3(tmp_path / "ds", episodes, fps=10, robot_type="toy")
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 15, 2)
    assert info["features"]["observation.images.top"]["info"]["video.fps"] == 10
    meta = pd.read_parquet(tmp_path / "ds" / EPISODES)
    assert list(meta["videos/observation.images.top/to_timestamp"]) == pytest.approx([0.5, 1.2, 1.5])
    frames, _, _, _ = _decode(tmp_path / "ds" / "videos/observation.images.top/chunk-000/file-000.mp4")
    assert len(frames) == 15 and frames[0].shape == (32, 48, 3)
    with pytest.raises(LeRobotWriteError, match="already holds files"):
        write_lerobot_v3(tmp_path / "ds", episodes, fps=10)


def test_rendering_then_loading_torch_compiler_in_one_process(tmp_path: Path) -> None:
    """Incident: `lawam demo` segfaulted when the ingest imported timm (and so triton) in the
    process that had just rendered with MuJoCo's EGL (Mesa's LLVM): `metaworld_env` loads
    triton's LLVM first."""
    code = (
        "import sys; from pathlib import Path; from pipeline.samples import make_samples\n"
        f"make_samples(Path({str(tmp_path / 'out')!r}), tasks=('reach-v3',), episodes_per_task=1, human_tasks=(),"
        " image_size=64, progress=False)\n"
        "import timm, torch._dynamo; print('ok')\n"
    )
    env = {**os.environ, "MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_encoding_av1_leaves_the_process_scheduling_as_it_was(tmp_path) -> None:
    """Incident: libsvtav1 raised the encoding thread to SCHED_FIFO 99 (as root) and left it so;
    a test worker that rendered the samples then ran Ray and trainers at real-time priority and
    starved the machine. Checked in a fresh process: the policy before and after an AV1 encode."""
    code = (
        "import os\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from pipeline.samples.lerobot_v3 import encode_video_frames\n"
        "before = os.sched_getscheduler(0)\n"
        f"encode_video_frames(Path({str(tmp_path / 'a.mp4')!r}), [np.zeros((32, 32, 3), np.uint8)] * 4, 10)\n"
        "print(before, os.sched_getscheduler(0))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = out.stdout.split()
    assert after == before == str(os.SCHED_OTHER), out.stdout
