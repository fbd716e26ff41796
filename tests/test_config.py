"""Config files fail fast, naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import ConfigError, load_corpus, load_source

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str, name: str = "src.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_example_configs_load():
    cfg = load_corpus(CONFIGS / "corpus.yaml")
    assert [s.id for s in cfg.sources] == ["metaworld", "human-standin"]
    assert Path(cfg.sources[0].uri).is_absolute() and cfg.sources[0].uri.endswith("data/demo/samples/robot")
    assert cfg.store.uri.endswith("data/demo/store")
    assert cfg.encoder.tokens == "grid:4x4"


def test_every_example_source_config_loads():
    formats = {load_source(p).format for p in (CONFIGS / "sources").glob("*.yaml")}
    assert formats == {"video_dir", "lerobot", "rlds", "webdataset"}
    brace = load_source(CONFIGS / "sources" / "video2dataset.yaml").uri
    assert brace.endswith("data/video2dataset/{00000..00099}.tar") and Path(brace).is_absolute()


def test_a_list_of_shards_resolves_each_against_the_yaml_file_and_only_webdataset_takes_one(tmp_path):
    spec = load_source(write(tmp_path, "id: a\nkind: human\nformat: webdataset\nuri: [s/0.tar, s3://b/1.tar]\n"))
    assert spec.uri == [str((tmp_path / "s/0.tar").resolve()), "s3://b/1.tar"]
    with pytest.raises(ConfigError, match="a list of files is for format webdataset"):
        load_source(write(tmp_path, "id: a\nkind: human\nformat: video_dir\nuri: [a, b]\n"))


def test_relative_uri_resolves_against_the_yaml_file(tmp_path):
    spec = load_source(write(tmp_path, "id: a\nkind: human\nformat: video_dir\nuri: vids\n"))
    assert spec.uri == str((tmp_path / "vids").resolve())
    assert load_source(write(tmp_path, "id: a\nkind: human\nformat: video_dir\nuri: s3://b/x\n")).uri == "s3://b/x"


def test_bad_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, "id: a\nkind: [robot\n")
    with pytest.raises(ConfigError, match=r"src\.yaml: not valid YAML at line \d"):
        load_source(p)


def test_unknown_field_is_named(tmp_path):
    p = write(tmp_path, "id: a\nkind: human\nformat: video_dir\nuri: x\nfpss: 5\n")
    with pytest.raises(ConfigError, match=r"src\.yaml: fpss: unknown field"):
        load_source(p)


def test_wrong_type_names_field_and_value(tmp_path):
    p = write(tmp_path, "id: a\nkind: human\nformat: video_dir\nuri: x\nfps: fast\n")
    with pytest.raises(ConfigError, match=r"src\.yaml: fps: .*'fast'"):
        load_source(p)


def test_bad_choice_and_missing_field(tmp_path):
    with pytest.raises(ConfigError, match=r"format: .*'mp4'"):
        load_source(write(tmp_path, "id: a\nkind: human\nformat: mp4\nuri: x\n"))
    with pytest.raises(ConfigError, match=r"uri: Field required"):
        load_source(write(tmp_path, "id: a\nkind: human\nformat: video_dir\n"))


def test_human_source_with_actions_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="a human source has no actions"):
        load_source(write(tmp_path, "id: a\nkind: human\nformat: video_dir\nuri: x\naction_fields: [action]\n"))


def test_corpus_errors_name_the_nested_field(tmp_path):
    p = write(tmp_path, "sources:\n  - {id: a, kind: human, format: video_dir, uri: x}\n"
                        "encoder: {tokens: 'grid:4'}\n", "corpus.yaml")
    with pytest.raises(ConfigError, match=r"corpus\.yaml: encoder\.tokens: .*grid:HxW"):
        load_corpus(p)
    p = write(tmp_path, "sources:\n  - {id: a, kind: human, format: video_dir, uri: x}\n"
                        "  - {id: a, kind: human, format: video_dir, uri: y}\n", "corpus.yaml")
    with pytest.raises(ConfigError, match="source ids must be unique"):
        load_corpus(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_source(tmp_path / "nope.yaml")
