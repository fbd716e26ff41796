"""Property-based tests of the parsers that read what users write: any source / corpus YAML
is a valid config or a one-line ConfigError, and any manifest is rows or a one-line
SourceError — never another exception, and never a path outside the source folder.

Kept fast (tens of examples, no deadline): they run in the default suite.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.sources import SourceError, iter_episodes, video_dir
from schemas import ConfigError, CorpusConfig, SourceSpec, load_corpus, load_source
from tests.datasets import make_video

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- config YAML ------------------------------------------------------------------------------

SOURCE_FIELDS = list(SourceSpec.model_fields) + ["camera", "fpss"]  # and two typos
CORPUS_FIELDS = list(CorpusConfig.model_fields) + ["source"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["robot", "human", "video_dir", "lerobot", "hdf5",
                                                           "grid:4x4", "cpu", "x\x00y", "s3://b/k", "../up"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
source_dicts = st.dictionaries(st.sampled_from(SOURCE_FIELDS), values, max_size=8)
valid_source = st.fixed_dictionaries({"id": st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,8}", fullmatch=True),
                                      "kind": st.sampled_from(["robot", "human"]),
                                      "format": st.sampled_from(["video_dir", "lerobot", "hdf5"]),
                                      "uri": st.text(max_size=20)})
corpus_dicts = st.dictionaries(
    st.sampled_from(CORPUS_FIELDS),
    st.one_of(values, st.lists(st.one_of(source_dicts, valid_source, st.text(max_size=12)), max_size=3),
              st.dictionaries(st.sampled_from(["model", "image_size", "tokens", "fps", "uri", "chunk_frames",
                                               "decoder", "batch_size"]), values, max_size=4)),
    max_size=5)


def _yaml_text(data: object) -> str:
    return yaml.safe_dump(data, allow_unicode=True)


config_texts = st.one_of(st.text(max_size=200), source_dicts.map(_yaml_text), valid_source.map(_yaml_text),
                         corpus_dicts.map(_yaml_text))


def _load_or_config_error(loader, text: str) -> object:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cfg.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            return loader(path)
        except ConfigError as e:  # one line, naming this file or a source file it names
            assert "\n" not in str(e) and str(e).startswith(d), str(e)
            return e


@SETTINGS
@given(config_texts)
def test_any_source_yaml_is_a_spec_or_a_config_error(text: str) -> None:
    out = _load_or_config_error(load_source, text)
    assert isinstance(out, SourceSpec | ConfigError)


@SETTINGS
@given(config_texts)
def test_any_corpus_yaml_is_a_config_or_a_config_error(text: str) -> None:
    out = _load_or_config_error(load_corpus, text)
    assert isinstance(out, CorpusConfig | ConfigError)


# --- manifests --------------------------------------------------------------------------------

HOSTILE = ["../x.mp4", "../../../../etc/passwd", "/etc/passwd", "C:\\clips\\x.mp4", "s3://bucket/x.mp4",
           "out.mp4", "outdir/b.mp4", "a.mp4", "./a.mp4", "sub/../a.mp4", "sub/..", ".", "..", "sub", "sub/",
           "sub/c.mp4", "a.mp4\x00", "gone.mp4", "sub\\..\\..\\x.mp4", " ../a.mp4 ", "a.mp4/..", "~/x.mp4"]
paths = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=30),
                  st.lists(st.sampled_from(["..", ".", "sub", "a.mp4", "", "outdir", "out.mp4"]), min_size=1,
                           max_size=6).map("/".join))
cells = st.one_of(st.none(), st.text(max_size=10), st.sampled_from(["0", "1.5", "-1", "nan", "inf", "2", "1e400"]))
rows = st.lists(st.fixed_dictionaries({"file": paths}, optional={"start_s": cells, "end_s": cells,
                                                                  "instruction": cells, "split": cells}),
                max_size=8)


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["file", "start_s", "end_s", "instruction", "split"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


manifest_texts = st.one_of(rows.map(_csv), st.text(max_size=300), st.text(max_size=200).map(lambda t: "file\n" + t))


def _folder(base: Path) -> Path:
    """base/clips: a.mp4, sub/c.mp4, a symlink out.mp4 and a linked folder outdir/ pointing
    outside, at base/outside/ (real videos that would ingest fine)."""
    clip = make_video(base / "outside" / "b.mp4", n_frames=2)
    make_video(base / "clips" / "a.mp4", n_frames=2)
    make_video(base / "clips" / "sub" / "c.mp4", n_frames=2)
    (base / "clips" / "out.mp4").symlink_to(clip)
    (base / "clips" / "outdir").symlink_to(base / "outside", target_is_directory=True)
    return base / "clips"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("manifest"))


def _inside(root: Path, path: str) -> bool:
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


json_rows = st.lists(st.dictionaries(st.sampled_from(["file", "start", "end", "instruction", "split"]),
                                     st.one_of(paths, values, st.just("\ud800")), max_size=5), max_size=6)
jsonl_texts = st.one_of(json_rows.map(lambda rs: "\n".join(json.dumps(r) for r in rs)), st.text(max_size=200))


@SETTINGS
@given(manifest_texts)
def test_any_csv_manifest_is_rows_inside_the_folder_or_a_one_line_error(folder: Path, text: str) -> None:
    _check_manifest(folder, "m.csv", text)


@SETTINGS
@given(jsonl_texts)
def test_any_jsonl_manifest_is_rows_inside_the_folder_or_a_one_line_error(folder: Path, text: str) -> None:
    _check_manifest(folder, "m.jsonl", text)


def _check_manifest(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")
    spec = SourceSpec(id="m", kind="human", format="video_dir", uri=str(folder), manifest=name)
    read: list[str] = []
    real = video_dir.file_digest
    with mock.patch.object(video_dir, "file_digest", lambda uri, info=None: read.append(uri) or real(uri, info)):
        try:
            refs = list(iter_episodes(spec))
        except SourceError as e:
            assert "\n" not in str(e), str(e)
            refs = []
    assert all(_inside(folder, p) for p in read), read  # nothing outside was even hashed
    for ref in refs:
        assert ".." not in ref.episode_id.split("/") and ".." not in ref.uri.replace("\\", "/").split("/")
        if ref.refused is None:
            assert _inside(folder, ref.uri) and os.path.isfile(ref.uri), ref
        else:
            assert "\n" not in ref.refused and ref.refused.startswith(f"{name} row "), ref.refused
