"""TFRecord files read without TensorFlow: checked framing, and `tf.train.Example` records.

Promise: no byte reaches a caller unless both of its record's CRCs matched. A record is

    uint64 length (LE) | uint32 masked crc32c(length) | data[length] | uint32 masked crc32c(data)

and a file is records back to back. `iter_records` walks a file record by record (memory: one
record), `read_record` reads one at a known offset (how an RLDS episode is read for decoding),
`parse_example` turns a record's bytes into its features.

What goes wrong, and what each means (`Record.fault`, or `RecordError` from `read_record`):

- the data CRC fails: "checksum mismatch"; the record is bad, the framing is intact, the walk
  goes on with the next record;
- the length CRC fails: the length cannot be trusted, so nothing after it can be framed: the
  walk stops there (on the very first record: the file is not a TFRecord file);
- the file ends inside a record: "truncated"; the walk stops (records before it are whole).

Why not the `tfrecord` package's reader, which the tests and the benchmark use as the
independent writer: its iterator skips both CRCs, reads only local paths and gives no offsets;
and importing it imports torch (measured 5.5 s and 708 MB RSS here), which a no-op refresh and
every decode worker would pay. The framing is 20 lines of `struct`; the CRC is Google's
`google_crc32c` (hardware CRC32C, already a zarr dependency); the message is protobuf's own
parser over the `tf.train.Example` schema declared below (tensorflow/core/example/*.proto).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import google_crc32c
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from pipeline.sources.base import EpisodeError

_HEADER = 12  # uint64 length + uint32 crc
_FOOTER = 4
_MASK_DELTA = 0xA282EAD8


class RecordError(EpisodeError):
    """One record is bad input (checksum mismatch, truncated, not an Example): its episode is
    quarantined with this one-line reason."""


def masked_crc(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC32C of `data` (rotated right by 15 bits plus a constant)."""
    crc = google_crc32c.value(bytes(data) if isinstance(data, memoryview) else data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


@dataclass(frozen=True)
class Record:
    """One record of a walk: where it is, and its data, or why it is bad (`fault`)."""

    index: int  # 0-based position in the file
    offset: int  # byte offset of its length header
    length: int  # bytes of data (0 when the header itself was cut)
    data: bytes | None  # None when `fault` is set
    fault: str | None = None
    whole_file: bool = False  # the fault means the file is not a TFRecord file at all


def iter_records(f: IO[bytes]) -> Iterator[Record]:
    """Every record of the file `f` (read from its current position, sequentially), one at a
    time. A record whose data CRC fails is yielded with `fault` and the walk goes on; a bad
    length CRC or a cut record is yielded with `fault` and ends the walk (see the module doc)."""
    index, offset = 0, f.tell()
    while True:
        header = f.read(_HEADER)
        if not header:
            return
        if len(header) < _HEADER:
            if index == 0:
                yield Record(0, offset, 0, None, f"not a TFRecord file ({len(header)} bytes)", whole_file=True)
            else:
                yield Record(index, offset, 0, None, f"truncated: the file ends inside the header of record {index}")
            return
        (length,) = struct.unpack("<Q", header[:8])
        if struct.unpack("<I", header[8:])[0] != masked_crc(header[:8]):
            if index == 0:
                yield Record(0, offset, 0, None, "not a TFRecord file (its first record length fails its checksum)",
                             whole_file=True)
            else:
                yield Record(index, offset, 0, None, "checksum mismatch in the record length; the rest of the "
                                                     "file cannot be framed")
            return
        data = f.read(length)
        footer = f.read(_FOOTER)
        if len(data) < length or len(footer) < _FOOTER:
            yield Record(index, offset, length, None, f"truncated: the file ends inside record {index} "
                                                      f"({len(data)} of {length} bytes)")
            return
        ok = struct.unpack("<I", footer)[0] == masked_crc(data)
        yield Record(index, offset, length, data if ok else None, None if ok else "checksum mismatch")
        index, offset = index + 1, offset + _HEADER + length + _FOOTER


def read_record(f: IO[bytes], offset: int, length: int, where: str) -> bytes:
    """The data of the record whose header is at `offset` and whose data is `length` bytes,
    both CRCs checked; RecordError (bad input) naming `where` otherwise."""
    f.seek(offset)
    blob = f.read(_HEADER + length + _FOOTER)
    if len(blob) < _HEADER + length + _FOOTER:
        raise RecordError(f"{where}: truncated: the file ends inside the record ({len(blob)} of "
                          f"{_HEADER + length + _FOOTER} bytes); re-download the shard")
    (stored_length,) = struct.unpack("<Q", blob[:8])
    if stored_length != length or struct.unpack("<I", blob[8:12])[0] != masked_crc(blob[:8]):
        raise RecordError(f"{where}: checksum mismatch in the record length; the shard changed or is damaged")
    data = memoryview(blob)[_HEADER : _HEADER + length]
    if struct.unpack("<I", blob[-_FOOTER:])[0] != masked_crc(data):
        raise RecordError(f"{where}: checksum mismatch; the record is damaged, re-download the shard")
    return bytes(data)


def _example_class() -> type:
    """`tensorflow.Example` built from its schema (example.proto + feature.proto) in a private
    descriptor pool, so it never clashes with another copy of the schema in the process."""
    f = descriptor_pb2.FileDescriptorProto(name="lawam_tf_example.proto", package="tensorflow", syntax="proto3")
    rep, opt = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED, descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    T = descriptor_pb2.FieldDescriptorProto

    def message(name: str, *fields: tuple[str, int, int, int, str | None], oneof: str | None = None):
        m = f.message_type.add(name=name)
        if oneof:
            m.oneof_decl.add(name=oneof)
        for fname, number, label, ftype, type_name in fields:
            fd = m.field.add(name=fname, number=number, label=label, type=ftype)
            if type_name:
                fd.type_name = type_name
            if oneof:
                fd.oneof_index = 0
            if ftype in (T.TYPE_FLOAT, T.TYPE_INT64):
                fd.options.packed = True
        return m

    def map_of(owner, field: str, value_type: str) -> None:
        entry = owner.nested_type.add(name=field.capitalize() + "Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, label=opt, type=T.TYPE_STRING)
        entry.field.add(name="value", number=2, label=opt, type=T.TYPE_MESSAGE, type_name=value_type)
        owner.field.add(name=field, number=1, label=rep, type=T.TYPE_MESSAGE,
                        type_name=f".tensorflow.{owner.name}.{entry.name}")

    message("BytesList", ("value", 1, rep, T.TYPE_BYTES, None))
    message("FloatList", ("value", 1, rep, T.TYPE_FLOAT, None))
    message("Int64List", ("value", 1, rep, T.TYPE_INT64, None))
    message("Feature", ("bytes_list", 1, opt, T.TYPE_MESSAGE, ".tensorflow.BytesList"),
            ("float_list", 2, opt, T.TYPE_MESSAGE, ".tensorflow.FloatList"),
            ("int64_list", 3, opt, T.TYPE_MESSAGE, ".tensorflow.Int64List"), oneof="kind")
    map_of(message("Features"), "feature", ".tensorflow.Feature")
    message("Example", ("features", 1, opt, T.TYPE_MESSAGE, ".tensorflow.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _example_class()


def parse_example(data: bytes, where: str) -> dict[str, Any]:
    """Feature name -> its values: a list of bytes (bytes_list), or a float32 / int64 sequence
    (protobuf's repeated container; `np.asarray` makes it an array). RecordError when the bytes
    are not a `tf.train.Example`."""
    ex = Example()
    try:
        ex.ParseFromString(data)
    except DecodeError as e:
        raise RecordError(f"{where}: not a tf.train.Example ({e}); the shard is damaged") from None
    out: dict[str, Any] = {}
    for key, feature in ex.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[key] = getattr(feature, kind).value if kind else []
    return out
