"""Manifests as collections publish them, read untouched through `columns`: EPIC-KITCHENS-100's
CSV (`tests/fixtures_manifests/EPIC_100_train.csv`: its real header, clock timestamps, quoted
list columns) and Something-Something v2's JSON array (`something-something-v2-train.json`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.sources import SourceError, check_source, iter_episodes
from schemas import ConfigError, load_source
from schemas.config import SourceSpec
from tests.datasets import make_video

MANIFESTS = Path(__file__).parent / "fixtures_manifests"
EPIC_COLUMNS = {"file": "{participant_id}/videos/{video_id}.MP4", "start": "start_timestamp",
                "end": "stop_timestamp", "id": "narration_id"}


@pytest.fixture(scope="session")
def epic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EPIC-KITCHENS' layout: `<participant>/videos/<video_id>.MP4`, 4 s at 10 fps each."""
    root = tmp_path_factory.mktemp("EPIC-KITCHENS")
    for participant, video in (("P01", "P01_01"), ("P02", "P02_03")):
        make_video(root / participant / "videos" / f"{video}.MP4", n_frames=40, fps=10, seed=len(video))
    return root


@pytest.fixture(scope="session")
def ssv2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("20bn-something-something-v2")
    for i, vid in enumerate(("78687", "42326")):
        make_video(root / f"{vid}.webm", n_frames=6, fps=12, codec="libvpx-vp9", seed=i)
    return root


def epic_spec(root: Path, **kw) -> SourceSpec:
    return SourceSpec(id="epic", kind="human", format="video_dir", uri=str(root),
                      manifest=kw.pop("manifest", str(MANIFESTS / "EPIC_100_train.csv")), instruction_field="narration",
                      columns=kw.pop("columns", EPIC_COLUMNS), **kw)


def test_epic_kitchens_csv_is_read_as_published(epic: Path) -> None:
    refs = list(iter_episodes(epic_spec(epic)))
    assert [(r.episode_id, r.start_s, r.end_s, r.instruction) for r in refs] == [
        ("P01_01_0", 0.14, 1.37, "open door"),
        ("P01_01_1", 2.0, 3.5, "take milk from fridge"),
        ("P02_03_0", 0.5, 2.25, "wash plate")]
    assert refs[1].uri == str(epic / "P01" / "videos" / "P01_01.MP4") and all(r.refused is None for r in refs)


def test_something_something_v2_json_is_read_as_published(ssv2: Path) -> None:
    spec = SourceSpec(id="ssv2", kind="human", format="video_dir", uri=str(ssv2),
                      manifest=str(MANIFESTS / "something-something-v2-train.json"), instruction_field="label",
                      columns={"file": "{id}.webm", "id": "id"})
    refs = list(iter_episodes(spec))
    assert [(r.episode_id, r.instruction) for r in refs] == [
        ("78687", "holding potato next to vicks vaporub bottle"), ("42326", "spreading margarine onto bread")]
    assert refs[0].uri == str(ssv2 / "78687.webm")


def test_the_example_configs_are_these_mappings(epic: Path, ssv2: Path) -> None:
    configs = Path(__file__).parents[1] / "configs" / "sources"
    spec = load_source(configs / "epic_kitchens.yaml")
    assert (spec.columns, spec.instruction_field) == (EPIC_COLUMNS, "narration")
    spec = load_source(configs / "something_something_v2.yaml")
    spec = spec.model_copy(update={"uri": str(ssv2), "manifest": str(MANIFESTS / "something-something-v2-train.json")})
    assert [r.episode_id for r in iter_episodes(spec)] == ["78687", "42326"]


def test_a_mapped_column_the_manifest_lacks_is_a_source_error_listing_its_columns(epic: Path) -> None:
    with pytest.raises(SourceError, match=r"columns.file names \['participant'\], not columns of the manifest; "
                                          r"it has \['all_noun_classes', 'all_nouns', "):
        check_source(epic_spec(epic, columns={**EPIC_COLUMNS, "file": "{participant}/videos/{video_id}.MP4"}))


def test_a_row_leaving_the_folder_through_a_template_is_still_refused(epic: Path, tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    shutil.copy(MANIFESTS / "EPIC_100_train.csv", csv)
    csv.write_text(csv.read_text().replace("P02,P02_03", "..,P02_03"))
    refs = list(iter_episodes(epic_spec(epic, manifest=str(csv))))
    assert refs[2].refused == "m.csv row 3: path '../videos/P02_03.MP4' leaves the source folder"
    assert refs[2].episode_id.startswith("refused-")


@pytest.mark.parametrize(("columns", "match"), [
    ({"narration": "narration"}, r"unknown field\(s\) \['narration'\]"),
    ({"start": "{start_timestamp}"}, "only `file` and `id` take one"),
])
def test_a_bad_column_mapping_is_a_config_error_naming_the_field(tmp_path: Path, columns: dict, match: str) -> None:
    (tmp_path / "s.yaml").write_text(f"id: e\nkind: human\nformat: video_dir\nuri: x\nmanifest: m.csv\n"
                                     f"columns: {json.dumps(columns)}\n")
    with pytest.raises(ConfigError, match=f"s.yaml: columns: .*{match}"):
        load_source(tmp_path / "s.yaml")
