"""Arrow schemas of the tables the pipeline writes, and the store layout version."""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa

# Bumped whenever the on-disk layout of the feature store changes incompatibly. Layout 2: the
# index, files and label-set tables are append-only (docs/store-format.md, "Tables"); a writer
# migrates a layout-1 store in its first commit, readers read both.
STORE_LAYOUT_VERSION = 2


class EpisodeStatus(StrEnum):
    OK = "ok"
    QUARANTINED = "quarantined"


# One row per episode the store knows of, ingested or quarantined. Written as Parquet
# (`catalog.parquet/` beside the store, one part per ingest commit) so users can query it with pyarrow or DuckDB.
CATALOG_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),  # SourceSpec.id
        pa.field("episode_id", pa.string(), nullable=False),  # unique within the source
        pa.field("kind", pa.string(), nullable=False),  # robot | human
        pa.field("uri", pa.string(), nullable=False),  # video file (or dataset) it came from
        pa.field("content_hash", pa.string(), nullable=False),  # of the bytes it was read from
        pa.field("status", pa.string(), nullable=False),  # EpisodeStatus
        pa.field("reason", pa.string()),  # one line, set when quarantined
        # While quarantined: when it first failed, and how many ingest attempts failed since (one per
        # run that tried it: a run retries it only when its input changed, or with --retry-quarantined).
        pa.field("failed_since", pa.timestamp("s", tz="UTC")),
        pa.field("failures", pa.int64()),  # 0 once ok
        pa.field("instruction", pa.string()),
        pa.field("frames", pa.int64(), nullable=False),  # frames kept at the corpus fps
        pa.field("duration_s", pa.float64(), nullable=False),  # span of the kept frames
        pa.field("actions", pa.int64(), nullable=False),  # control-rate action rows (0 for human)
        # Where the episode lives and how it was sampled (docs/store-format.md): rows
        # [frame_start, frame_start + frames) of /shards/<shard>/features and /timestamps, rows
        # [action_start, action_start + actions) of its actions, action_timestamps and state.
        pa.field("fps", pa.float64()),  # frames per second it was sampled at (frames / duration_s); null if none
        pa.field("shard", pa.string()),  # group under /shards holding the episode's arrays; null if quarantined
        pa.field("frame_start", pa.int64(), nullable=False),  # first row in the shard's features
        pa.field("action_start", pa.int64(), nullable=False),  # first row in the shard's actions
        pa.field("store_version", pa.string()),  # commit id that made this row visible
        pa.field("ingested_at", pa.timestamp("s", tz="UTC")),
        pa.field("split", pa.string()),  # the source's own split ("train", "val", ...), if it names one
    ]
)

# The store's own episode index (/index): the catalog's columns but the derived ones — `fps`
# (frames / duration_s) and `store_version` (the commit that appended the row, from
# /index/commits) — plus `key_hash`. Stored inside every store commit, so a version id pins both
# data and index (docs/store-format.md).
CATALOG_DERIVED = ("fps", "store_version")
INDEX_SCHEMA = pa.schema(
    [f for f in CATALOG_SCHEMA if f.name not in CATALOG_DERIVED]
    # The first 8 bytes of sha256(key), big-endian: the held-out split and lookups by key use it.
    + [pa.field("key_hash", pa.uint64(), nullable=False)]
)

# The store's memory of its source files (`/files` in the store, committed with the index): each
# file's stat identity beside its content digest, so a refresh in a fresh process re-reads only
# files whose identity changed (pipeline.sources.hashing). Entries hashed within the racy window
# of the file's last modification are kept but not trusted.
FILES_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),  # absolute local path, or the object's URL
        pa.field("size", pa.int64(), nullable=False),
        pa.field("mtime_ns", pa.int64()),  # local files
        pa.field("ctime_ns", pa.int64()),
        pa.field("inode", pa.int64()),
        pa.field("etag", pa.string()),  # object stores: the store's checksum ("ETag:...") or "mtime:<stamp>"
        pa.field("digest", pa.string(), nullable=False),  # what pipeline.sources.hashing.file_digest returns
        # when it was stat'ed for hashing (ns since the epoch); 0 when the object store's checksum was used
        pa.field("hashed_at_ns", pa.int64(), nullable=False),
        # Files that hold many episodes (RLDS TFRecord shards, webdataset tars): where each episode is
        # inside the file (byte offsets, ids, step counts), as JSON, valid for exactly this `digest`;
        # null for other files. A refresh over an unchanged shard reads this instead of the shard.
        pa.field("records", pa.string()),
    ]
)

# One row per labelled episode of a label set (`/labels/<set>/index` in the store). A row is
# current while the features it came from are the episode's (its index_row is live, or its
# content_hash is the episode's); a redone episode gets a new row and hash, so its old labels
# stop being served and the next `lawam label` redoes them.
LABEL_INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # episode key 'source/episode_id'
        pa.field("content_hash", pa.string(), nullable=False),  # of the features the labels came from
        pa.field("shard", pa.string(), nullable=False),  # group under /labels/<set>/shards
        pa.field("row_start", pa.int64(), nullable=False),  # first row in the shard's arrays
        pa.field("rows", pa.int64(), nullable=False),  # labels: one per pair (t, t+k_frames)
        pa.field("k_frames", pa.int64(), nullable=False),  # the gap, in this episode's frames
        pa.field("key_hash", pa.uint64(), nullable=False),  # the index's key_hash of `key`: joins without strings
        # The stored /index row of the episode version the labels were computed from (-1: not known):
        # while that row is live the labels are current, found without comparing a string.
        pa.field("index_row", pa.int64(), nullable=False),
    ]
)

# One row per curated episode of a curation set (`/curation/<set>/index`). Current like a label
# set's rows (pipeline.store.derived).
CURATION_INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # episode key 'source/episode_id'
        pa.field("content_hash", pa.string(), nullable=False),  # of the features it was scored from
        pa.field("shard", pa.string(), nullable=False),  # group under /curation/<set>/shards
        pa.field("row_start", pa.int64(), nullable=False),  # first row of the episode's motion in the shard
        pa.field("rows", pa.int64(), nullable=False),  # frames scored (one motion value each)
        pa.field("emb_row", pa.int64(), nullable=False),  # its row of the shard's embedding array
        # Order in which episodes were curated: a duplicate group keeps its earliest member, so a
        # later copy never displaces what training already saw.
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("group", pa.string()),  # key of the kept episode of its duplicate group; null: in none
        pa.field("similarity", pa.float32()),  # cosine to its nearest group member; null: in no group
        pa.field("static_frames", pa.int64(), nullable=False),  # frames in dropped spans, by reason
        pa.field("idle_frames", pa.int64(), nullable=False),
        pa.field("key_hash", pa.uint64(), nullable=False),  # as a label set's rows
        pa.field("index_row", pa.int64(), nullable=False),
    ]
)

# The still spans of a curation set (`/curation/<set>/spans`): frames [start, end) of an episode,
# dropped from training with the reason. Belong to the index row of the same key.
CURATION_SPANS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("start", pa.int64(), nullable=False),  # first frame of the span
        pa.field("end", pa.int64(), nullable=False),  # frame after its last
        pa.field("reason", pa.string(), nullable=False),  # static (a picture held) | idle (nothing moves)
    ]
)

# `lawam catalog --export`: what a curation set decides for each episode, for pyarrow / DuckDB.
CURATION_DECISIONS_SCHEMA = pa.schema(
    [
        pa.field("episode", pa.string(), nullable=False),  # key
        pa.field("source", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),  # keep | trim (spans dropped) | drop | uncurated
        pa.field("reason", pa.string()),  # duplicate | static | idle | static+idle; null when kept whole
        pa.field("kept_s", pa.float64(), nullable=False),  # seconds training sees
        pa.field("static_s", pa.float64(), nullable=False),  # seconds dropped, by reason
        pa.field("idle_s", pa.float64(), nullable=False),
        pa.field("duplicate_s", pa.float64(), nullable=False),
        pa.field("duplicate_of", pa.string()),  # the kept episode of its group, when it is not
        pa.field("similarity", pa.float32()),
        pa.field("spans", pa.list_(pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()),
                                              ("reason", pa.string())]))),
    ]
)
