"""Hostile and broken inputs: each is bad input, refused with a one-line reason, and the
rest of the run completes (DESIGN.md, "Bad input and failures").

Incident guarded against (issue #9): a manifest row `../outside/secret.mp4` and a symlink
to a video outside the folder were ingested as ok; a deep `../../../../etc/passwd` was
opened (then quarantined as corrupt); absolute paths were joined under the folder; and
keys such as `man/../../../../etc/passwd` reached the catalog. Every outside target here
is a real video that *would* ingest fine, so reading it at all would show.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from pipeline.ingest import ingest_corpus
from pipeline.sources import SourceError, iter_episodes, video_dir
from pipeline.store import FeatureStore
from schemas import CorpusConfig, SamplingConfig, SourceSpec, StoreConfig
from tests.datasets import make_hdf5, make_lerobot_v21, make_lerobot_v30, make_video
from tests.encoders import TINY

HOSTILE_ROWS = ["../outside/good.mp4", "../../../../etc/passwd", "{abs}", "link.mp4", "sub/../../outside/good.mp4"]


def human(uri: Path, **kw: object) -> SourceSpec:
    return SourceSpec(id="man", kind="human", format="video_dir", uri=str(uri), **kw)


def make_hostile_folder(base: Path) -> Path:
    """clips/ with one good video and a manifest whose other rows all point outside it, at
    a video (outside/good.mp4) that would ingest fine; plus a row for a missing file."""
    outside = make_video(base / "outside" / "good.mp4", n_frames=10, fps=10, seed=3)
    clips = base / "clips"
    make_video(clips / "a.mp4", n_frames=10, fps=10, seed=1)
    (clips / "link.mp4").symlink_to(outside)
    rows = [r.replace("{abs}", str(outside)) for r in HOSTILE_ROWS]
    (clips / "manifest.csv").write_text("file\na.mp4\n" + "".join(f"{r}\n" for r in rows) + "gone.mp4\n")
    return clips


@pytest.fixture()
def hostile_folder(tmp_path: Path) -> Path:
    return make_hostile_folder(tmp_path)


def test_manifest_rows_leaving_the_folder_are_refused_with_a_path_reason(hostile_folder: Path) -> None:
    refs = list(iter_episodes(human(hostile_folder, manifest="manifest.csv")))
    assert [r.refused for r in refs] == [
        None,
        "manifest.csv row 2: path '../outside/good.mp4' leaves the source folder",
        "manifest.csv row 3: path '../../../../etc/passwd' leaves the source folder",
        f"manifest.csv row 4: path '{hostile_folder.parent / 'outside' / 'good.mp4'}' is absolute; "
        "manifest paths are relative to the source folder",
        "manifest.csv row 5: path 'link.mp4' is a symlink to a file outside the source folder",
        "manifest.csv row 6: path 'sub/../../outside/good.mp4' leaves the source folder",
        "manifest.csv row 7: path 'gone.mp4' does not exist in the source folder",
    ]
    assert not any(".." in r.key.split("/") or ".." in r.uri for r in refs)
    assert refs[0].episode_id == "a.mp4" and refs[-1].episode_id == "gone.mp4"


def test_refused_rows_are_never_read(hostile_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not even hashed: enumeration reads the bytes of the files it accepts, and only those."""
    read: list[str] = []
    real = video_dir.file_digest
    monkeypatch.setattr(video_dir, "file_digest", lambda uri, info=None: read.append(uri) or real(uri, info))
    refs = list(iter_episodes(human(hostile_folder, manifest="manifest.csv")))
    assert read == [str(hostile_folder / "a.mp4")]  # the missing file is refused before any read
    before = [r.content_hash for r in refs]
    make_video(hostile_folder.parent / "outside" / "good.mp4", n_frames=12, fps=10, seed=9)  # other bytes
    assert [r.content_hash for r in iter_episodes(human(hostile_folder, manifest="manifest.csv"))] == before


def test_a_path_that_stays_inside_is_normalised_not_refused(tmp_path: Path) -> None:
    make_video(tmp_path / "sub" / "b.mp4", n_frames=4)
    (tmp_path / "m.csv").write_text("file\n./sub/x/../b.mp4\n")
    (ref,) = iter_episodes(human(tmp_path, manifest="m.csv"))
    assert (ref.episode_id, ref.refused, ref.uri) == ("sub/b.mp4", None, str(tmp_path / "sub" / "b.mp4"))


def test_folder_listing_refuses_a_symlink_pointing_out(tmp_path: Path) -> None:
    outside = make_video(tmp_path / "outside" / "good.mp4", n_frames=4)
    make_video(tmp_path / "clips" / "a.mp4", n_frames=4)
    (tmp_path / "clips" / "in.mp4").symlink_to(tmp_path / "clips" / "a.mp4")  # a link inside: fine
    (tmp_path / "clips" / "out.mp4").symlink_to(outside)
    refs = {r.episode_id: r.refused for r in iter_episodes(human(tmp_path / "clips"))}
    assert refs == {"a.mp4": None, "in.mp4": None,
                    "out.mp4": "'out.mp4' is a symlink to a file outside the source folder"}


def test_hdf5_demo_without_actions_is_refused_and_the_others_are_not(tmp_path: Path) -> None:
    path = make_hdf5(tmp_path / "lift.hdf5", demos=(3, 4, 2))
    with h5py.File(path, "a") as f:
        del f["data/demo_1/actions"]
    refs = list(iter_episodes(SourceSpec(id="h5", kind="robot", format="hdf5", uri=str(path))))
    assert [(r.episode_id, r.refused) for r in refs] == [
        ("demo_0", None),
        ("demo_1", "data/demo_1 has no action field 'actions' (looked in the demo and obs/)"),
        ("demo_2", None),
    ]


def test_hdf5_field_no_demo_has_is_a_source_error(tmp_path: Path) -> None:
    path = make_hdf5(tmp_path / "lift.hdf5", demos=(3, 4))
    with pytest.raises(SourceError, match=r"no demo has field\(s\) \['joint_vel'\]"):
        list(iter_episodes(SourceSpec(id="h5", kind="robot", format="hdf5", uri=str(path),
                                      action_fields=["joint_vel"])))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ({"fps": "fast"}, r"info\.json: fps is 'fast', not a positive number"),
        ({"chunks_size": "x"}, r"info\.json: chunks_size is 'x', not a positive number"),
        ({"splits": ["train"]}, r"info\.json: splits is list, expected a mapping"),
    ],
)
def test_lerobot_info_json_with_wrong_types_is_a_source_error(tmp_path: Path, damage: dict, match: str) -> None:
    root = make_lerobot_v21(tmp_path / "ds", episodes=(3,))
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps({**info, **damage}))
    with pytest.raises(SourceError, match=match):
        list(iter_episodes(SourceSpec(id="ds", kind="robot", format="lerobot", uri=str(root))))


def test_lerobot_episodes_jsonl_with_a_bad_row_is_a_source_error(tmp_path: Path) -> None:
    root = make_lerobot_v21(tmp_path / "ds", episodes=(3,))
    (root / "meta/episodes.jsonl").write_text('{"episode_index": "zero"}\n')
    with pytest.raises(SourceError, match=r"episodes\.jsonl: a row has episode_index 'zero'"):
        list(iter_episodes(SourceSpec(id="ds", kind="robot", format="lerobot", uri=str(root))))


# --- through the CLI: one line, exit 2, no traceback ---------------------------------------


def _cli_ingest_error(tmp_path: Path, root: Path) -> str:
    from flows.cli import app

    src = tmp_path / "src.yaml"
    src.write_text(f"id: ds\nkind: robot\nformat: lerobot\nuri: {root}\n")
    result = CliRunner().invoke(app, ["ingest", str(src), "--store", str(tmp_path / "store"), "--no-flow"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_cli_unreadable_info_json_is_one_line(tmp_path: Path) -> None:
    root = make_lerobot_v21(tmp_path / "ds", episodes=(3,))
    (root / "meta/info.json").write_bytes(os.urandom(64) + b"\xff\xfe")
    assert "meta/info.json: unreadable" in _cli_ingest_error(tmp_path, root)


def test_cli_unreadable_episodes_parquet_is_one_line(tmp_path: Path) -> None:
    root = make_lerobot_v30(tmp_path / "ds", episodes=(3, 2))
    meta = root / "meta/episodes/chunk-000/file-000.parquet"
    meta.write_bytes(meta.read_bytes()[:100])
    assert "file-000.parquet: unreadable" in _cli_ingest_error(tmp_path, root)


# --- end to end: quarantined in the catalog, the rest committed -----------------------------


@pytest.fixture(scope="module")
def hostile_ingest(tmp_path_factory: pytest.TempPathFactory):
    """One ingest of three hostile sources: the manifest above, an HDF5 file with a demo
    without actions, and a LeRobot dataset with one episode's data parquet truncated (on the
    local executor: what is quarantined is the assembler's on either)."""
    tmp_path = tmp_path_factory.mktemp("hostile")
    hostile_folder = make_hostile_folder(tmp_path)
    h5 = make_hdf5(tmp_path / "h5" / "lift.hdf5", demos=(3, 4, 2))
    with h5py.File(h5, "a") as f:
        del f["data/demo_1/actions"]
    ds = make_lerobot_v21(tmp_path / "ds", episodes=(6, 4, 5))
    data = ds / "data/chunk-000/episode_000001.parquet"
    data.write_bytes(data.read_bytes()[:200])
    cfg = CorpusConfig(
        sources=[human(hostile_folder, manifest="manifest.csv"),
                 SourceSpec(id="h5", kind="robot", format="hdf5", uri=str(h5)),
                 SourceSpec(id="ds", kind="robot", format="lerobot", uri=str(ds))],
        encoder=TINY, sampling=SamplingConfig(fps=5), store=StoreConfig(uri=str(tmp_path / "store")))
    report = ingest_corpus(cfg, progress=False, executor="local")
    return report, FeatureStore.open(str(tmp_path / "store"))


def test_hostile_sources_quarantine_only_their_bad_episodes(hostile_ingest) -> None:
    report, store = hostile_ingest
    reasons = dict(report.quarantined)
    assert report.added == 1 + 2 + 2  # a.mp4; demo_0, demo_2; episodes 0 and 2
    assert sorted(store.episodes()["episode_id"].to_pylist()) == [
        "a.mp4", "demo_0", "demo_2", "episode_000000", "episode_000002"]
    assert len(reasons) == len(HOSTILE_ROWS) + 1 + 1 + 1  # + gone.mp4, demo_1, episode 1
    assert all(r and "\n" not in r for r in reasons.values())
    assert reasons["h5/demo_1"] == "data/demo_1 has no action field 'actions' (looked in the demo and obs/)"
    assert "episode_000001.parquet episode 1: unreadable" in reasons["ds/episode_000001"]
    assert reasons["man/gone.mp4"] == "manifest.csv row 7: path 'gone.mp4' does not exist in the source folder"


def test_catalog_keeps_the_path_reasons_and_no_dot_dot(hostile_ingest) -> None:
    _, store = hostile_ingest
    cat = [r for r in store.catalog().to_pylist() if r["source"] == "man"]
    bad = {r["reason"] for r in cat if r["status"] == "quarantined"}
    assert "manifest.csv row 2: path '../outside/good.mp4' leaves the source folder" in bad
    assert "manifest.csv row 5: path 'link.mp4' is a symlink to a file outside the source folder" in bad
    assert not any(".." in part for r in cat for part in r["episode_id"].split("/"))
    # the outside video would have ingested fine: only a.mp4 (1 s at 5 fps) carries frames
    assert [(r["episode_id"], r["frames"]) for r in cat if r["status"] == "ok"] == [("a.mp4", 5)]
