"""Pydantic models of the YAML files users write: a source spec and a corpus config.

Every model forbids unknown fields, so a typo (`fpss: 5`) fails at load time with the
field named, instead of being silently ignored and discovered hours into an ingest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from schemas.curation import CurationConfig, load_curation_config
from schemas.errors import ConfigError
from schemas.strict import Strict as _Strict
from schemas.strict import read_yaml, validate_file

_SOURCE_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
# Fields a video_dir manifest provides, by our name; `SourceSpec.columns` maps them onto a
# collection's own column names (the instruction column is `instruction_field`).
MANIFEST_FIELDS = ("file", "start", "end", "split", "id")
_TOKENS = re.compile(r"^(cls|mean|patches|grid:(\d+)x(\d+))$")


def _no_nul(v: str | None) -> str | None:
    """No path can hold a NUL byte; caught here, it is a config error naming the field
    instead of a ValueError from the OS later."""
    if v is not None and "\x00" in v:
        raise ValueError("must not contain a NUL byte")
    return v


class SourceSpec(_Strict):
    """One video source: where its episodes live and how to read them."""

    id: str  # short unique name, used in episode keys and the catalog: lowercase, digits, . _ -
    kind: Literal["robot", "human"]  # robot episodes carry actions; human video does not
    format: Literal["video_dir", "lerobot", "hdf5", "rlds", "webdataset"]
    # local path (relative to the YAML file) or an fsspec URL such as s3://bucket/x; webdataset also
    # takes a brace pattern (shards/{00000..00099}.tar) or a list of shard files
    uri: str | list[str]
    cameras: list[str] = Field(default_factory=list)  # camera keys; empty = the first; several = a stream each
    instruction: str | None = None  # constant instruction for every episode of the source
    instruction_field: str | None = None  # manifest column / dataset field / webdataset .json key of the instruction
    manifest: str | None = None  # video_dir: CSV, JSON or JSONL next to the videos (file, instruction, ...)
    # video_dir manifest as a collection publishes it: our field -> its column, or a {column} template
    # for `file` and `id` (EPIC-KITCHENS-100: {file: "{participant_id}/videos/{video_id}.MP4",
    # start: start_timestamp, end: stop_timestamp, id: narration_id}); fields: file, start, end, split, id
    columns: dict[str, str] = Field(default_factory=dict)
    action_fields: list[str] = Field(default_factory=list)  # robot: columns holding the action
    state_fields: list[str] = Field(default_factory=list)  # robot: proprioceptive state columns
    action_rate: float | None = Field(default=None, gt=0)  # Hz, when the dataset does not say (rlds: required)
    fps: float | None = Field(default=None, gt=0)  # overrides the corpus sampling fps for this source
    license: str | None = None
    notes: str | None = None

    @field_validator("id")
    @classmethod
    def _id_is_slug(cls, v: str) -> str:
        if not _SOURCE_ID.match(v):
            raise ValueError(f"{v!r} must be lowercase letters, digits, '.', '_' or '-'")
        return v

    @field_validator("uri")
    @classmethod
    def _uri_paths(cls, v: str | list[str]) -> str | list[str]:
        for u in [v] if isinstance(v, str) else v:
            _no_nul(u)
        if isinstance(v, list) and not v:
            raise ValueError("an empty list names no shard; give at least one file")
        return v

    _manifest_has_no_nul = field_validator("manifest")(lambda v: _no_nul(v))

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(MANIFEST_FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown!r}; map any of {list(MANIFEST_FIELDS)!r} "
                             "(the instruction column is `instruction_field`)")
        for k, col in v.items():
            if "{" in col and k not in ("file", "id"):
                raise ValueError(f"{k}: {col!r} is a template; only `file` and `id` take one, {k} names a column")
        return v

    @model_validator(mode="after")
    def _format_rules(self) -> SourceSpec:
        if self.kind == "human" and self.action_fields:
            raise ValueError("a human source has no actions: remove action_fields or use kind: robot")
        if isinstance(self.uri, list) and self.format != "webdataset":
            raise ValueError(f"uri: a list of files is for format webdataset; format {self.format} takes one uri")
        if self.format == "rlds" and self.action_rate is None:
            raise ValueError("action_rate: format rlds needs it: RLDS steps carry no timestamps; add "
                             "`action_rate: <Hz>`, the rate the dataset was recorded at (BridgeData 5, DROID 15)")
        if self.columns and self.format != "video_dir":
            raise ValueError(f"columns: maps manifest columns of format video_dir; format {self.format} has none")
        if self.columns and self.manifest is None:
            raise ValueError("columns: maps the columns of a manifest; name the file in `manifest`")
        return self


def _check_tokens(v: str) -> str:
    m = _TOKENS.match(v)
    if not m:
        raise ValueError(f"{v!r} is not one of cls, mean, patches, grid:HxW (e.g. grid:4x4)")
    if m.group(2) and (int(m.group(2)) == 0 or int(m.group(3)) == 0):
        raise ValueError(f"{v!r}: grid sides must be >= 1")
    return v


class EncoderConfig(_Strict):
    """The frozen vision encoder. Its identity (all fields but batch_size and device, plus a
    hash of the weights) versions the feature store: features of two encoders never mix."""

    # vit_small DINOv2 at 112 px with a 4x4 pooled grid kept most control signal in our
    # probe (R^2 0.84 on Meta-World hand motion) at ~4x the speed of 224 px on a CPU.
    model: str = "vit_small_patch14_dinov2"  # any timm model name
    checkpoint: Path | None = None  # local safetensors/.pth; None = random init (seeded)
    image_size: Annotated[int, Field(ge=14, le=1024)] = 112  # square input side, pixels
    tokens: Annotated[str, Field(description="cls | mean | patches | grid:HxW")] = "grid:4x4"
    layer: int = -1  # transformer block whose output is stored; -1 = last (after final norm)
    seed: int = 0  # seeds random init when no checkpoint is given
    batch_size: Annotated[int, Field(ge=1)] = 32  # frames per forward pass
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = CUDA when present
    # What computes the features (part of the identity: a store holds one numerics). auto =
    # the store's own when it exists, else the fastest measured: OpenVINO on a CPU, torch on
    # CUDA. `torch` + `fp32` is the reference, bit-compatible with stores written before
    # runtimes were named (benchmarks/bench_encoder.py measures them all).
    runtime: Literal["auto", "torch", "openvino", "onnxruntime"] = "auto"
    # auto = bf16 where the hardware computes it natively (CUDA; a CPU with AVX-512 BF16 or AMX
    # under OpenVINO or torch), else fp32; onnxruntime computes fp32 only.
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @field_validator("tokens")
    @classmethod
    def _tokens_mode(cls, v: str) -> str:
        return _check_tokens(v)

    @model_validator(mode="after")
    def _runtime_fits(self) -> EncoderConfig:
        if self.runtime in ("openvino", "onnxruntime") and self.device == "cuda":
            raise ValueError(f"runtime {self.runtime!r} runs on the CPU here: use runtime 'torch' (or 'auto') "
                             "with device 'cuda'")
        if self.runtime == "onnxruntime" and self.precision == "bf16":
            raise ValueError("runtime 'onnxruntime' computes fp32 only: use precision 'fp32' (or 'auto'), "
                             "or runtime 'openvino' / 'torch' for bf16")
        return self


class SamplingConfig(_Strict):
    """Which frames are kept: picked by timestamp at `fps`, then resized for the encoder."""

    fps: Annotated[float, Field(gt=0, le=240)] = 5.0  # target frame rate of the corpus
    resize: Literal["center_crop", "squash"] = "center_crop"  # how non-square frames fit
    max_seconds: Annotated[float | None, Field(gt=0)] = None  # cap per episode; None = whole video
    # auto = PyAV (measured faster here than decord 0.6, which also mis-decodes HEVC and cannot
    # open AV1); decord = try decord first, falling back to PyAV on any failure.
    decoder: Literal["auto", "pyav", "decord"] = "auto"


class StoreConfig(_Strict):
    """Where the feature store lives."""

    uri: str = "data/store"  # local path (relative to the YAML file) or fsspec URL (s3://...)
    branch: str = "main"
    chunk_frames: Annotated[int, Field(ge=1)] = 64  # frames per Zarr chunk along time

    _uri_has_no_nul = field_validator("uri")(lambda v: _no_nul(v))


class LabelsConfig(_Strict):
    """The current LaWM of a corpus: `refresh_corpus` labels new and redone episodes with it."""

    lam: str  # a `lawam train-lam` output folder (relative to the YAML file)

    _lam_has_no_nul = field_validator("lam")(lambda v: _no_nul(v))


class CorpusConfig(_Strict):
    """A corpus: the sources that feed one feature store, and how they are encoded."""

    name: str = "corpus"
    sources: list[SourceSpec]
    encoder: EncoderConfig = EncoderConfig()
    sampling: SamplingConfig = SamplingConfig()
    store: StoreConfig = StoreConfig()
    labels: LabelsConfig | None = None  # None: a refresh ingests only
    # Curate after every refresh (`lawam curate` with this config): a path of a curate.yaml
    # (relative to the corpus file) or the config inline. None: a refresh does not curate.
    curation: CurationConfig | None = None

    @model_validator(mode="after")
    def _unique_ids(self) -> CorpusConfig:
        ids = [s.id for s in self.sources]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"source ids must be unique, repeated: {dup!r}")
        return self


def _resolve(uri: str | list[str], base: Path) -> str | list[str]:
    """Relative local paths are taken relative to the YAML file that names them (each one of a
    list; a brace pattern's braces are kept as they are)."""
    if isinstance(uri, list):
        return [str(_resolve(u, base)) for u in uri]
    if "://" in uri or Path(uri).is_absolute():
        return uri
    return str((base / uri).resolve())


def load_source(path: str | Path) -> SourceSpec:
    """Load and validate a source YAML file; relative `uri`/`manifest` resolve against it."""
    path = Path(path)
    data = read_yaml(path)
    spec = validate_file(SourceSpec, data, path)
    return spec.model_copy(update={"uri": _resolve(spec.uri, path.parent)})


def load_corpus(path: str | Path) -> CorpusConfig:
    """Load a corpus YAML file. `sources` entries are inline mappings or paths of source
    YAML files (relative to the corpus file)."""
    path = Path(path)
    data = read_yaml(path)
    sources = data.get("sources")
    if isinstance(sources, list):
        resolved: list[object] = []
        for i, s in enumerate(sources):
            if isinstance(s, str):
                if not s.strip() or not s.isprintable():  # also keeps the error one line
                    raise ConfigError(f"{path}: sources.{i}: {s!r} is not a source file path")
                resolved.append(load_source(path.parent / s))
            elif isinstance(s, dict):
                spec = validate_file(SourceSpec, s, Path(f"{path} sources.{i}"))
                resolved.append(spec.model_copy(update={"uri": _resolve(spec.uri, path.parent)}))
            else:
                raise ConfigError(f"{path}: sources.{i}: expected a mapping or a file path, got {s!r}")
        data = {**data, "sources": resolved}
    curation = data.get("curation")
    if isinstance(curation, str):
        if not curation.strip() or not curation.isprintable():
            raise ConfigError(f"{path}: curation: {curation!r} is not a curation config path")
        data = {**data, "curation": load_curation_config(path.parent / curation)}
    cfg = validate_file(CorpusConfig, data, path)
    store = cfg.store.model_copy(update={"uri": _resolve(cfg.store.uri, path.parent)})
    update: dict = {"store": store}
    if cfg.labels is not None:
        update["labels"] = cfg.labels.model_copy(update={"lam": _resolve(cfg.labels.lam, path.parent)})
    return cfg.model_copy(update=update)
