"""pipeline.decode: which source frames come out, upright, square, bounded, and what bad files do.

Every generated frame carries its own index in its pixels (tests/media.py), so each test checks
the picked *source frames*, not just counts. The expected picks come from `expected_indices`, a
brute-force statement of the rule (the frame displayed at each target time), independent of the
streaming `FramePicker` under test.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest

from pipeline.decode import (
    CorruptVideoError,
    FrameBlock,
    decode_frames,
    pick_frame_indices,
    probe_video,
)
from schemas.identity import SamplingParams
from tests.media import CODECS, Clip, NotUprightError, grid_region, make_media, read_index


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Clip]:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def media_dir(media: dict[str, Clip]) -> Path:
    return media["h264"].path.parent


def decode_all(path: Path | str, **kwargs) -> tuple[np.ndarray, np.ndarray, list[FrameBlock]]:
    kwargs.setdefault("size", 32)
    blocks = list(decode_frames(str(path), **kwargs))
    frames = np.concatenate([b.frames for b in blocks]) if blocks else np.zeros((0, 32, 32, 3), np.uint8)
    stamps = np.concatenate([b.timestamps for b in blocks]) if blocks else np.zeros(0)
    return frames, stamps, blocks


def indices(frames: np.ndarray, region: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)) -> list[int]:
    return [read_index(f, region) for f in frames]


def expected_indices(clip: Clip, fps: float, start: float = 0.0, end: float = math.inf) -> list[int]:
    """The rule, by brute force: for each target the last frame shown at or before it, among the
    frames of [start, end); the span's first frame for targets before it; each frame once."""
    pts = np.asarray(clip.pts)
    end = min(end, clip.duration)
    candidates = [i for i, p in enumerate(pts) if start - 1e-6 <= p < end - 1e-6]
    out: list[int] = []
    j = 0
    while (t := start + j / fps) < end - 1e-9:
        shown = [i for i in candidates if pts[i] <= t + 1e-6]
        pick = shown[-1] if shown else candidates[0]
        if pick not in out:
            out.append(pick)
        j += 1
    return out


# -- every codec/container ----------------------------------------------------------------------


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_picks_source_frames_by_timestamp(media: dict[str, Clip], codec: str) -> None:
    clip = media[codec]
    frames, stamps, _ = decode_all(clip.path, fps=10, size=32)
    assert frames.shape == (30, 32, 32, 3) and frames.dtype == np.uint8
    assert indices(frames) == expected_indices(clip, 10) == list(range(0, 90, 3))
    np.testing.assert_allclose(stamps, [clip.pts[i] for i in range(0, 90, 3)], atol=1e-3)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_sparse_rate_skips_ahead_to_the_right_frames(media: dict[str, Clip], codec: str) -> None:
    # 1.5 fps from 30 fps with a keyframe every 15 frames (AV1: every 2): the decoder jumps over
    # whole GOPs between picks, and must still land on frames 20, 40, 60, 80.
    clip = media[codec]
    frames, _, _ = decode_all(clip.path, fps=1.5)
    assert indices(frames) == expected_indices(clip, 1.5) == [0, 20, 40, 60, 80]


def test_sparse_rate_does_not_decode_every_frame(media: dict[str, Clip], caplog: pytest.LogCaptureFixture) -> None:
    # LeRobot's AV1 (a keyframe every 2 frames) at 1.5 fps: most GOPs hold no pick and are skipped.
    with caplog.at_level(logging.DEBUG, logger="pipeline.decode.pyav"):
        decode_all(media["av1"].path, fps=1.5)
    decoded = int(caplog.text.split("decoded ")[1].split()[0])
    assert decoded < 90 // 2


# -- timing rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [4, 10, 30])
def test_variable_frame_rate_picks_the_frame_displayed_at_each_target(media: dict[str, Clip], fps: float) -> None:
    clip = media["vfr"]
    frames, stamps, _ = decode_all(clip.path, fps=fps)
    picked = indices(frames)
    assert picked == expected_indices(clip, fps)
    np.testing.assert_allclose(stamps, [clip.pts[i] for i in picked], atol=1e-4)


def test_target_rate_above_source_keeps_each_frame_once(media: dict[str, Clip]) -> None:
    frames, stamps, _ = decode_all(media["h264"].path, fps=75)
    assert indices(frames) == list(range(90))
    assert np.all(np.diff(stamps) > 0)


@pytest.mark.parametrize("codec", ["h264", "av1"])
@pytest.mark.parametrize("jitter", [0.0, 3e-5, -3e-5])
def test_episode_span_holds_only_that_episodes_frames(media: dict[str, Clip], codec: str, jitter: float) -> None:
    # LeRobot v3.0 packs episodes back to back in one file; from/to timestamps computed from
    # float sums can be a hair off the true frame times, and must not pull in a neighbour's frame.
    clip = media[f"episodes_{codec}"]
    for first, stop in clip.episodes:
        start_s, end_s = first / 30 + jitter, stop / 30 + jitter
        frames, stamps, _ = decode_all(clip.path, fps=10, start_s=start_s, end_s=end_s)
        picked = indices(frames)
        assert picked == expected_indices(clip, 10, first / 30, stop / 30)
        assert picked[0] == first and all(first <= i < stop for i in picked)
        np.testing.assert_allclose(stamps, [clip.pts[i] - start_s for i in picked], atol=1e-4)


def test_max_seconds_caps_the_span(media: dict[str, Clip]) -> None:
    frames, stamps, _ = decode_all(media["h264"].path, fps=10, start_s=0.5, max_seconds=1.0)
    assert indices(frames) == list(range(15, 45, 3))
    assert stamps.max() < 1.0


def test_span_outside_the_video_is_an_error(media: dict[str, Clip]) -> None:
    with pytest.raises(CorruptVideoError, match="no frame in the span"):
        decode_all(media["h264"].path, fps=10, start_s=10.0, end_s=12.0)


def test_targets_before_the_first_frame_get_the_first_frame() -> None:
    pts = 0.5 + np.arange(10) / 10  # a stream whose first frame is shown at 0.5 s
    assert pick_frame_indices(pts, fps=10).tolist() == list(range(10))
    assert pick_frame_indices(pts, fps=2).tolist() == [0, 5]


def test_millisecond_rounded_timestamps_still_give_every_frame() -> None:
    # Matroska stores 30 fps frame times in whole ms (0.067 for 0.0667): a strict comparison
    # would see frame 2 as "not yet shown" at 2/30 s and drop it.
    pts = np.round(np.arange(30) / 30, 3)
    assert pick_frame_indices(pts, fps=30, tol=0.0005 + 1e-6).tolist() == list(range(30))


# -- pictures -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_video_comes_out_upright(media: dict[str, Clip], rotation: int) -> None:
    clip = media[f"rot{rotation}"]
    with av.open(str(clip.path)) as c, pytest.raises(NotUprightError):  # stored pictures are sideways
        read_index(next(c.decode(video=0)).to_ndarray(format="rgb24"))
    frames, _, _ = decode_all(clip.path, fps=10, size=48)
    assert indices(frames) == list(range(0, 30, 3))


def test_odd_size_center_crop(media: dict[str, Clip]) -> None:
    frames, _, _ = decode_all(media["odd"].path, fps=10, size=57, resize="center_crop")
    assert frames.shape == (10, 57, 57, 3)
    assert indices(frames) == list(range(0, 30, 3))


def test_odd_size_squash(media: dict[str, Clip]) -> None:
    clip = media["odd"]
    frames, _, _ = decode_all(clip.path, fps=10, size=64, resize="squash")
    assert frames.shape == (10, 64, 64, 3)
    assert indices(frames, grid_region(clip.width, clip.height)) == list(range(0, 30, 3))


def test_blocks_never_exceed_block_frames(media: dict[str, Clip]) -> None:
    _, _, blocks = decode_all(media["h264"].path, fps=30, block_frames=7)
    sizes = [len(b.frames) for b in blocks]
    assert sum(sizes) == 90 and max(sizes) == 7 and all(s == 7 for s in sizes[:-1])
    assert all(len(b.frames) == len(b.timestamps) for b in blocks)


# -- backends -------------------------------------------------------------------------------------


def test_decord_and_pyav_pick_the_same_frames(media: dict[str, Clip], caplog: pytest.LogCaptureFixture) -> None:
    clip = media["episodes_h264"]
    first, stop = clip.episodes[1]
    span = {"fps": 10, "size": 64, "start_s": first / 30, "end_s": stop / 30}
    with caplog.at_level(logging.WARNING, logger="pipeline.decode"):
        d_frames, d_stamps, _ = decode_all(clip.path, backend="decord", **span)
    assert "decord failed" not in caplog.text  # decord really decoded it
    p_frames, p_stamps, _ = decode_all(clip.path, backend="pyav", **span)
    assert indices(d_frames) == indices(p_frames) == expected_indices(clip, 10, first / 30, stop / 30)
    np.testing.assert_allclose(d_stamps, p_stamps, atol=1e-6)


def test_av1_requested_from_decord_falls_back_to_pyav(media: dict[str, Clip], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.decode"):
        frames, _, _ = decode_all(media["av1"].path, fps=10, size=64, backend="decord")
    assert "decord failed" in caplog.text
    assert indices(frames) == list(range(0, 90, 3))


def test_decord_failure_mid_file_resumes_with_pyav_without_repeats(
    media: dict[str, Clip], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.decode.decord as dd

    real = dd.decode_decord

    def first_block_then_fail(request, info):
        yield next(real(request, info))
        raise dd.DecordFailure("simulated decoder error")

    monkeypatch.setattr(dd, "decode_decord", first_block_then_fail)
    frames, stamps, blocks = decode_all(media["h264"].path, fps=10, size=64, backend="decord", block_frames=8)
    assert indices(frames) == list(range(0, 90, 3))
    assert len(blocks[0]) == 8 and np.all(np.diff(stamps) > 0)


def test_fsspec_url_decodes_like_a_local_path(media: dict[str, Clip]) -> None:
    clip = media["vp9"]
    fs = fsspec.filesystem("memory")
    fs.pipe("/decode_test/clip.webm", clip.path.read_bytes())
    frames, stamps, _ = decode_all("memory://decode_test/clip.webm", fps=10)
    assert indices(frames) == list(range(0, 90, 3))
    np.testing.assert_allclose(stamps, decode_all(clip.path, fps=10)[1])


def test_probe_reads_header_and_rotation(media: dict[str, Clip]) -> None:
    info = probe_video(str(media["h264"].path))
    assert (info.codec, info.width, info.height, info.rotation, info.n_frames) == ("h264", 96, 64, 0, 90)
    assert info.fps == pytest.approx(30) and info.duration_s == pytest.approx(3.0, abs=0.05)
    rotated = probe_video(str(media["rot90"].path))
    assert rotated.rotation == 90 and rotated.display_size == (64, 96)
    assert probe_video(str(media["av1"].path)).codec == "av1"


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, reason",
    [
        ("zero.mp4", "cannot open"),
        ("text.mp4", "cannot open"),
        ("truncated.mp4", "cannot open"),  # moov atom lost with the second half
        ("truncated.webm", "truncated"),  # opens and decodes its first half, then stops short
        ("audio_only.mkv", "no video stream"),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "decord"])
def test_bad_files_raise_corrupt_video_error(media_dir: Path, name: str, reason: str, backend: str) -> None:
    path = media_dir / name
    with pytest.raises(CorruptVideoError, match=reason) as err:
        decode_all(path, fps=10, backend=backend)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert isinstance(err.value, ValueError)


def test_truncated_file_still_serves_its_intact_start(media_dir: Path) -> None:
    # Only a span that runs into the missing part is an error; the first second is all there.
    frames, _, _ = decode_all(media_dir / "truncated.webm", fps=10, end_s=1.0)
    assert indices(frames) == list(range(0, 30, 3))


def test_missing_file_raises_file_not_found(media_dir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        decode_all(media_dir / "missing.mp4", fps=10)


@pytest.mark.parametrize(
    "kwargs",
    [{"fps": 0}, {"fps": 10, "size": 0}, {"fps": 10, "resize": "stretch"}, {"fps": 10, "backend": "opencv"}],
)
def test_bad_arguments_raise_at_the_call(media: dict[str, Clip], kwargs: dict) -> None:
    with pytest.raises(ValueError, match="must be"):
        decode_frames(str(media["h264"].path), **{"size": 32, **kwargs})  # before any iteration


def test_array_frames_are_resized_like_video_frames(tmp_path: Path) -> None:
    """HDF5 image arrays and video frames share one resize (DESIGN: one encoder identity, one
    preprocessing): an HDF5 episode's frames are the swscale path's output of its images."""
    import h5py

    from pipeline.decode import resize_like_decode
    from pipeline.ingest.frames import decode_episode_blocks
    from pipeline.sources import iter_episodes, read_image_frames
    from schemas import SourceSpec
    from tests.datasets import make_hdf5

    path = make_hdf5(tmp_path / "d.hdf5", demos=(6,), size=(40, 30))
    with h5py.File(path, "a") as f:  # textured images: a flat grey would hide the filter
        f["data/demo_0/obs/agentview_image"][...] = np.random.default_rng(0).integers(0, 256, (6, 30, 40, 3))
    ref = next(iter(iter_episodes(SourceSpec(id="h5", kind="robot", format="hdf5", uri=str(path)))))
    images, _ = read_image_frames(ref)
    got = np.concatenate([b["frames"] for b in decode_episode_blocks(ref, SamplingParams(fps=20.0, size=16))])
    np.testing.assert_array_equal(got, resize_like_decode(images, 16, "center_crop"))


_PEAK_RSS = """
import sys
from pipeline.decode import decode_frames

def kib(field):
    line = next(ln for ln in open("/proc/self/status") if ln.startswith(field + ":"))
    return int(line.split()[1])

open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = kib("VmRSS")  # after the imports
n = 0
for block in decode_frames(sys.argv[1], fps=10, size=224, block_frames=8, backend=sys.argv[2]):
    n += len(block.frames)
print(n, base, kib("VmHWM"))
"""


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_a_4k_video_decodes_in_bounded_memory(tmp_path, backend):
    """A 3840x2160 clip of 48 frames (1.2 GB as RGB) decodes in a fresh process whose peak
    memory grows by a few 4K frames, not by the clip: frames are resized as they are decoded
    and only blocks of `block_frames` small frames are held."""
    path = tmp_path / "uhd.mp4"
    width, height, n = 3840, 2160, 48
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        ramp = np.linspace(0, 255, width, dtype=np.uint8)
        for i in range(n):
            img = np.empty((height, width, 3), np.uint8)
            img[...] = np.roll(ramp, 40 * i)[None, :, None]  # a moving gradient: real motion for the codec
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    run = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(path), backend], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr
    frames, base_kib, peak_kib = map(int, run.stdout.split())
    assert frames == n
    grew_mb = (peak_kib - base_kib) / 1024
    print(f"{backend}: 4K decode peak grew {grew_mb:.0f} MB over {base_kib / 1024:.0f} MB after imports")
    assert grew_mb < 200, f"peak memory grew {grew_mb:.0f} MB decoding a 4K clip (all of it is 1.2 GB)"
