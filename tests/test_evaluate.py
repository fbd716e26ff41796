"""Closed-loop evaluation: real Meta-World, real Ray, a real (tiny, random-init) encoder, a fake policy.

The fake policy is the part that is not real: `CountingRunner` returns a fixed chunk whose
actions carry their index in the chunk, so an episode's length and number of policy calls
say exactly how much of each chunk was executed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.decode import decode_frames, resize_like_decode
from pipeline.encode import EncoderError, FrozenEncoder, encoder_config_from_identity, encoder_identity
from pipeline.evaluation.evaluate import (
    EvalError,
    LayoutOverlapError,
    evaluate,
    measure_latency,
    training_samples,
    training_view,
)
from pipeline.evaluation.results import wilson_interval
from pipeline.samples.lerobot_v3 import VideoEncoding, encode_video_frames
from pipeline.samples.metaworld_env import Layout
from schemas import EncoderConfig
from schemas.cards import PolicyCard, StoreRef
from schemas.identity import SamplingParams

pytestmark = pytest.mark.slow

TINY = EncoderConfig(model="vit_tiny_patch16_224", image_size=32, tokens="grid:2x2", device="cpu")
HORIZON = 4


class CountingRunner:
    """A policy stand-in: a (HORIZON, 4) chunk whose actions differ by their index in the chunk
    and follow the features (so episodes depend on every rendered frame); counts its calls."""

    def __init__(self, device: str = "cpu") -> None:
        self.card = PolicyCard(lawam_version="0", created_at="now", store=StoreRef(uri="data/store", version="v0"),
                               encoder=encoder_identity(TINY), token_shape=(4, 192), config={}, steps=1,
                               wall_time_s=0.0, metrics={}, weights_sha256="fake", action_dim=4, horizon=HORIZON,
                               vocab=[], control_hz=20.0)
        self.horizon, self.action_dim, self.control_hz = HORIZON, 4, 20.0
        self.device = device
        self.calls = 0

    def act(self, features: np.ndarray, instruction: str, proprio: np.ndarray) -> np.ndarray:
        assert features.shape == (4, 192) and proprio.shape == (4,) and instruction
        self.calls += 1
        chunk = np.zeros((self.horizon, self.action_dim), np.float32)
        chunk[:, 0] = 0.05 * np.arange(self.horizon)  # action i of a chunk differs from action j
        chunk[:, 1:3] = np.tanh(features.astype(np.float32).mean(1)[:2])  # the view steers the hand
        return chunk


@pytest.fixture(scope="module")
def eval_run(ray_local, tmp_path_factory) -> Path:
    """One short evaluation: 1 task, 2 episodes on 2 workers, 8 steps, 3 actions per chunk."""
    out = tmp_path_factory.mktemp("eval")
    evaluate(CountingRunner, tasks=["reach-v3"], episodes=2, seed=7, out_dir=out, camera="corner", image_size=64,
             training_layouts=[], execute_steps=3, max_steps=8, workers=2, progress=False, latency_calls=5,
             policy="runs/fake")
    return out


def test_eval_writes_results_plot_and_rollout_video(eval_run: Path):
    results = json.loads((eval_run / "results.json").read_text())
    task = results["tasks"]["reach-v3"]
    assert task["episodes"] == 2 and 0.0 <= task["ci95"][0] <= task["success_rate"] <= task["ci95"][1] <= 1.0
    assert [(e["task"], e["index"]) for e in results["episodes"]] == [("reach-v3", 0), ("reach-v3", 1)]
    for e in results["episodes"]:
        assert {"task", "mt1_seed", "slot", "seed", "steps", "success"} <= set(e)
    assert results["settings"]["execute_steps"] == 3 and results["settings"]["overlap_checked"] is False
    assert results["policy"]["path"] == "runs/fake" and results["policy"]["encoder"] == encoder_identity(TINY).to_dict()
    assert results["latency"]["cpu"]["policy_ms"]["median"] > 0
    assert (eval_run / "success.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with av.open(str(eval_run / task["video"])) as c:
        stream = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
        assert stream.codec_context.name == "h264" and stream.average_rate == 20
    first = results["episodes"][0]
    assert len(frames) == first["steps"] + 1 and frames[0].shape == (64, 64, 3)  # every state, first to last


def test_receding_horizon_executes_execute_steps_actions_per_call(eval_run: Path):
    for e in json.loads((eval_run / "results.json").read_text())["episodes"]:
        if not e["success"]:
            assert e["steps"] == 8
        assert e["act_calls"] == math.ceil(e["steps"] / 3)  # 3 + 3 + 2 (cut by the step limit)


def test_results_do_not_depend_on_the_number_of_workers(eval_run: Path, tmp_path: Path):
    again = evaluate(CountingRunner, tasks=["reach-v3"], episodes=2, seed=7, out_dir=tmp_path, camera="corner",
                     image_size=64, training_layouts=[], execute_steps=3, max_steps=8, workers=1, video=False,
                     progress=False, latency_calls=0)

    def episodes(results: dict) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "seconds"} for e in results["episodes"]]

    assert episodes(again.results) == episodes(json.loads((eval_run / "results.json").read_text()))
    assert len({e["final_reward"] for e in again.results["episodes"]}) == 2  # two scenes, two outcomes


def test_results_under_another_name_keep_their_plot_and_videos_apart(eval_run: Path, tmp_path: Path):
    """Incident: `lawam eval --out other.json` was refused (only results.json was allowed). A
    second evaluation under another name, in a folder holding a first one (`eval_run`'s)."""
    from pipeline.evaluation.results import read_results

    for p in eval_run.iterdir():
        shutil.copy(p, tmp_path / p.name)
    report = evaluate(CountingRunner, tasks=["reach-v3"], episodes=1, seed=7, out_dir=tmp_path, camera="corner",
                      image_size=64, training_layouts=[], max_steps=3, workers=1, progress=False, latency_calls=0,
                      results_name="seed7.json")
    assert report.path == tmp_path / "seed7.json"
    doc = read_results(tmp_path / "seed7.json")
    assert doc["plot"] == "seed7-success.png" and doc["tasks"]["reach-v3"]["video"] == "seed7-rollout-reach-v3.mp4"
    assert read_results(tmp_path / "results.json")["plot"] == "success.png"
    assert {p.name for p in tmp_path.iterdir()} == {"results.json", "success.png", "rollout-reach-v3.mp4",
                                                    "seed7.json", "seed7-success.png", "seed7-rollout-reach-v3.mp4"}


def test_eval_refuses_the_training_layouts_and_writes_nothing(sample_corpora: Path, tmp_path: Path):
    from pipeline.samples.metaworld_robot import read_sample_layouts

    trained = read_sample_layouts(sample_corpora / "robot")
    assert trained
    out = tmp_path / "eval"
    with pytest.raises(LayoutOverlapError, match="trained on"):
        evaluate(CountingRunner, tasks=["reach-v3"], episodes=2, seed=0, stream="robot", out_dir=out,
                 camera="corner", image_size=64, training_layouts=trained, progress=False)
    same_scene = [Layout("reach-v3", 1, 2, trained[0].rand_vec)]  # another seed, the same scene
    with pytest.raises(LayoutOverlapError):
        evaluate(CountingRunner, tasks=["reach-v3"], episodes=1, seed=0, stream="robot", out_dir=out,
                 camera="corner", image_size=64, training_layouts=same_scene, progress=False)
    assert not out.exists()


def test_training_samples_reads_layouts_and_camera_of_the_stores_robot_episodes(sample_corpora, tmp_path):
    from pipeline.samples.metaworld_robot import read_sample_layouts
    from pipeline.store import StoreWriter
    from schemas.records import EpisodeRef

    video = sample_corpora / "robot/videos/observation.images.corner2/chunk-000/file-000.mp4"
    ref = EpisodeRef(source="robot", episode_id="0", kind="robot", uri=str(video), content_hash="x")
    with StoreWriter.open(str(tmp_path / "store"), encoder=encoder_identity(TINY)) as w:
        w.start_episode(ref, SamplingParams(fps=20.0, size=32))
        w.append_frames(ref, np.zeros((2, 4, 192), np.float16), np.array([0.0, 0.05]))
        w.finish_episode(ref, None, fps=20)
        version = w.commit("one episode")
    layouts, record = training_samples(str(tmp_path / "store"), version)
    assert layouts == read_sample_layouts(sample_corpora / "robot")
    assert record.camera == "corner2" and record.image_size == 64 and record.control_hz == 20
    view = training_view(str(tmp_path / "store"), version)
    assert (view.camera, view.image_size, view.checked) == ("corner2", 64, True)
    with pytest.raises(EvalError, match="trained on camera"):
        training_view(str(tmp_path / "store"), version, camera="corner")


def test_latency_reports_policy_alone_and_with_the_encoder(one_thread):
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    runner = CountingRunner()
    lat = measure_latency(runner, FrozenEncoder(TINY), frame, calls=200, warmup=20, instruction="reach")
    assert lat["torch_threads"] == 1
    assert runner.calls == 2 * 220 and lat["calls"] == 200 and lat["encoder_device"] == "cpu"
    for key in ("policy_ms", "encoder_policy_ms"):
        assert 0 < lat[key]["median"] <= lat[key]["p95"]
    assert lat["encoder_policy_ms"]["median"] > lat["policy_ms"]["median"]


def _smooth_frames(n: int, h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([np.stack([(2 * x + 5 * i) % 256, (2 * y + 3 * i) % 256, (x + y + 7 * i) % 256], -1)
                     for i in range(n)]).astype(np.uint8)


@pytest.mark.parametrize("resize", ["center_crop", "squash"])
def test_resize_like_decode_matches_decoding_the_video(tmp_path: Path, resize: str):
    """Eval frames must reach the encoder as ingest's frames did: the same yuv420p and swscale path."""
    frames = _smooth_frames(6, 48, 64)
    lossless = tmp_path / "lossless.mp4"  # vp9 lossless keeps yuv420p exactly: only the path can differ
    with av.open(str(lossless), "w") as c:
        s = c.add_stream("libvpx-vp9", rate=20, options={"lossless": "1"})
        s.pix_fmt, s.height, s.width = "yuv420p", 48, 64
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    ours = resize_like_decode(frames, 32, resize)
    decoded = np.concatenate([b.frames for b in decode_frames(str(lossless), fps=20, size=32, resize=resize)])
    np.testing.assert_array_equal(decoded, ours)
    lerobot = tmp_path / "av1.mp4"  # the corpus's own codec (LeRobot's defaults): compression error only
    encode_video_frames(lerobot, frames, 20, VideoEncoding(crf=10))
    decoded = np.concatenate([b.frames for b in decode_frames(str(lerobot), fps=20, size=32, resize=resize)])
    assert np.abs(decoded.astype(np.int16) - ours).mean() < 1.5


def test_encoder_config_from_identity_rebuilds_the_encoder_or_refuses(tmp_path: Path):
    identity = encoder_identity(TINY.model_copy(update={"seed": 3}))
    assert encoder_identity(encoder_config_from_identity(identity)) == identity
    hashed = dataclasses.replace(identity, weights="sha256:" + "0" * 64)
    with pytest.raises(EncoderError, match="checkpoint"):
        encoder_config_from_identity(hashed)
    other = tmp_path / "w.safetensors"
    other.write_bytes(b"not these weights")
    with pytest.raises(EncoderError, match="digest"):
        encoder_config_from_identity(hashed, other)


def test_wilson_interval_is_not_degenerate_at_zero_and_one():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0.2 < hi < 0.35
    lo, hi = wilson_interval(10, 10)
    assert 0.65 < lo < 0.8 and hi == 1.0

