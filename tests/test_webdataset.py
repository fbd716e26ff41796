"""`webdataset` sources: tar shards written by the `webdataset` library itself, as video2dataset
lays them out (`{key}.mp4` + `.json` + `.txt`, a parquet and `_stats.json` beside each shard).
Samples group by key, videos decode straight from the tar, ids are shard + key, and a broken
or hostile shard costs only its own bad samples.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.ingest.frames import decode_episode_blocks
from pipeline.sources import SourceError, check_source, iter_episodes
from schemas.config import SourceSpec
from schemas.identity import SamplingParams
from tests.datasets import make_hostile_tar, make_video, make_webdataset


def wds(uri, **kw) -> SourceSpec:
    return SourceSpec(id="web", kind="human", format="webdataset", uri=uri if isinstance(uri, list) else str(uri),
                      **kw)


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_webdataset(tmp_path_factory.mktemp("wds") / "shards", (3, 2))


def test_samples_group_by_key_with_the_shard_in_the_id_and_the_text_as_instruction(shards: Path) -> None:
    refs = list(iter_episodes(wds(shards)))
    assert [r.episode_id for r in refs] == ["00000/000000000", "00000/000000001", "00000/000000002",
                                            "00001/000010000", "00001/000010001"]
    assert [r.instruction for r in refs[:2]] == ["text 000000000", "text 000000001"]
    assert all(r.refused is None and r.camera == "mp4" and r.uri.endswith(".tar") for r in refs)


def test_a_folder_a_brace_pattern_and_a_list_name_the_same_episodes(shards: Path) -> None:
    folder = [r.key for r in iter_episodes(wds(shards))]
    assert [r.key for r in iter_episodes(wds(f"{shards}/{{00000..00001}}.tar"))] == folder
    assert [r.key for r in iter_episodes(wds([str(shards / "00001.tar"), str(shards / "00000.tar")]))] == folder


def test_only_a_folder_of_shards_is_a_root_whose_gone_files_are_forgotten(shards: Path) -> None:
    from pipeline.ingest import source_roots

    specs = [wds(shards), wds(f"{shards}/{{00000..00001}}.tar"), wds([str(shards / "00000.tar")])]
    assert source_roots(specs) == [str(shards)]


def test_the_instruction_can_come_from_a_json_field(shards: Path) -> None:
    refs = list(iter_episodes(wds(shards, instruction_field="clips.0.caption")))
    assert refs[1].instruction == "clip 000000001"
    refs = list(iter_episodes(wds(shards, instruction_field="no_such_field", instruction="fallback")))
    assert refs[0].instruction == "fallback"


def test_the_video2dataset_example_config_reads_the_shards(shards: Path) -> None:
    from schemas import load_source

    spec = load_source(Path(__file__).parents[1] / "configs" / "sources" / "video2dataset.yaml")
    refs = list(iter_episodes(spec.model_copy(update={"uri": f"{shards}/{{00000..00001}}.tar"})))
    assert [r.instruction for r in refs[:2]] == ["caption 000000000", "caption 000000001"] and len(refs) == 5


def test_the_video_is_decoded_straight_from_the_tar(shards: Path) -> None:
    ref = list(iter_episodes(wds(shards)))[4]  # shard 1, sample 1: seed 11
    blocks = list(decode_episode_blocks(ref, SamplingParams(fps=5, size=16)))
    levels = (np.arange(10) * 7 + 11 * 31) % 200 + 20  # tests.datasets.frames_pattern, every other frame at 5 fps
    np.testing.assert_allclose(blocks[0]["frames"][:, 8, 8, 0], levels[::2], atol=3)
    np.testing.assert_allclose(blocks[0]["timestamps"], np.arange(5) / 5)
    offset, size = ref.byte_range
    with open(ref.uri, "rb") as f:  # the member's bytes, exactly: nothing before or after it
        f.seek(offset)
        assert f.read(8)[4:8] == b"ftyp" and size < (shards / "00001.tar").stat().st_size


def test_shards_on_an_fsspec_url_decode_from_the_remote_tar(shards: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    for name in ("00000.tar", "00001.tar"):
        fs.pipe(f"/wds/{name}", (shards / name).read_bytes())
    remote = list(iter_episodes(wds("memory://wds/{00000..00001}.tar")))
    local = list(iter_episodes(wds(shards)))
    assert [(r.episode_id, r.byte_range) for r in remote] == [(r.episode_id, r.byte_range) for r in local]
    params = SamplingParams(fps=5, size=16)
    a, b = (next(iter(decode_episode_blocks(r[2], params)))["frames"] for r in (remote, local))
    np.testing.assert_array_equal(a, b)


def test_webm_and_mkv_members_decode_too(tmp_path: Path) -> None:
    make_webdataset(tmp_path / "webm", (1,), ext="webm", codec="libvpx-vp9", n_frames=4)
    make_webdataset(tmp_path / "mkv", (1,), ext="mkv", n_frames=4, start=7)
    for folder in ("webm", "mkv"):
        [ref] = iter_episodes(wds(tmp_path / folder))
        blocks = decode_episode_blocks(ref, SamplingParams(fps=10, size=16))
        assert ref.camera == folder and sum(len(b["frames"]) for b in blocks) == 4


def test_an_unknown_camera_member_is_a_source_error_listing_the_members(shards: Path) -> None:
    with pytest.raises(SourceError, match=r"no sample has a member \.wrist\.mp4 \(camera 'wrist.mp4'\); media "
                                          r"members: \['mp4'\]"):
        check_source(wds(shards, cameras=["wrist.mp4"]))


# --- broken and hostile shards -----------------------------------------------------------------


def _cut(path: Path, at: int) -> None:
    path.write_bytes(path.read_bytes()[:at])


def _member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data + m.size) for m in tar}


def test_a_shard_cut_inside_a_member_keeps_the_samples_before_and_refuses_that_one(tmp_path: Path) -> None:
    folder = make_webdataset(tmp_path / "s", (3,))
    shard = folder / "00000.tar"
    start, end = _member_offsets(shard)["000000001.mp4"]
    _cut(shard, end - 100)
    refs = list(iter_episodes(wds(folder)))
    assert [(r.episode_id, r.refused) for r in refs] == [
        ("00000/000000000", None),
        ("00000/000000001", "00000.tar sample 000000001: truncated: the shard ends inside member 000000001.mp4")]
    assert sum(len(b["frames"]) for b in decode_episode_blocks(refs[0], SamplingParams(fps=10, size=16))) == 10


def test_a_shard_cut_between_members_refuses_its_last_sample_as_possibly_incomplete(tmp_path: Path) -> None:
    folder = make_webdataset(tmp_path / "s", (3,))
    shard = folder / "00000.tar"
    _, end = _member_offsets(shard)["000000001.mp4"]  # the json and txt of sample 1 are lost
    _cut(shard, (end + 511) // 512 * 512)
    refs = list(iter_episodes(wds(folder)))
    assert [r.refused is None for r in refs] == [True, False]
    assert "without tar's end-of-archive marker" in refs[1].refused


def test_a_sample_without_a_video_is_refused_naming_its_members(tmp_path: Path) -> None:
    import webdataset

    folder = make_webdataset(tmp_path / "s", (1,))
    with webdataset.TarWriter(str(folder / "00001.tar")) as sink:
        sink.write({"__key__": "x", "json": b"{}", "txt": b"a caption, no video"})
    [ref] = [r for r in iter_episodes(wds(folder)) if r.episode_id == "00001/x"]
    assert ref.refused == "00001.tar sample x: no video member (its members: json, txt)"


def test_a_file_that_is_not_a_tar_is_one_refused_episode_and_the_others_go_on(shards: Path, tmp_path: Path) -> None:
    bad = tmp_path / "00009.tar"
    bad.write_bytes(b"\x89PNG not a tar at all" * 100)
    refs = list(iter_episodes(wds([str(shards / "00000.tar"), str(bad)])))
    assert [r.refused for r in refs[:3]] == [None] * 3
    assert refs[3].episode_id == "00009" and refs[3].refused.startswith("00009.tar: not a tar archive")


def test_member_names_leaving_the_shard_never_touch_the_filesystem(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", n_frames=4).read_bytes()
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    make_hostile_tar(folder / "00000.tar", video)
    refs = list(iter_episodes(wds(folder)))
    assert refs[0].episode_id == "00000/ok" and refs[0].refused is None
    assert all(r.refused and "leaves the shard (absolute or '..'); never extracted" in r.refused for r in refs[1:])
    assert all(r.episode_id.startswith("00000/refused-") and ".." not in r.episode_id for r in refs[1:])
    for ref in refs[:1]:
        list(decode_episode_blocks(ref, SamplingParams(fps=10, size=16)))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["00000.tar", "a", "b", "v.mp4"]
