"""TFRecord framing and ``tf.train.Example`` parsing without TensorFlow.

A TFRecord file is a sequence of records ``uint64 length | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)`` (little endian); both CRCs are checked. ``data`` here is a serialized
``tf.train.Example``, decoded by a small hand-written protobuf wire-format parser: PNG byte strings come
back as zero-copy ``memoryview`` slices and packed numeric lists as numpy arrays, which is several times
faster than building protobuf message objects for records holding thousands of images. Problems are
``SourceError``s naming the file and the record.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import google_crc32c
import numpy as np

from jowa_core.data.dopamine import SourceError

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
MAX_RECORD_BYTES = 1 << 31  # a sanity bound: one Atari episode is at most a few hundred MB

# Example field kinds returned by parse_example
BYTES, FLOAT, INT64 = "bytes", "float", "int64"


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC32C of ``data``."""
    crc = google_crc32c.value(bytes(data) if isinstance(data, memoryview) else data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _read_exact(f: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def iter_records(f: BinaryIO, path: str) -> Iterator[bytes]:
    """Yield the payload of every record in an (already decompressed) TFRecord stream, checking both CRCs."""
    index = 0
    while True:
        header = _read_exact(f, _HEADER.size)
        if not header:
            return
        if len(header) < _HEADER.size:
            raise SourceError(f"{path}: truncated in the header of record {index}")
        length, length_crc = _HEADER.unpack(header)
        if masked_crc32c(header[:8]) != length_crc:
            raise SourceError(f"{path}: CRC mismatch in the length of record {index} (corrupt file)")
        if length > MAX_RECORD_BYTES:
            raise SourceError(f"{path}: record {index} claims {length} bytes (corrupt file)")
        data = _read_exact(f, length)
        footer = _read_exact(f, _FOOTER.size)
        if len(data) < length or len(footer) < _FOOTER.size:
            raise SourceError(f"{path}: truncated in record {index} ({len(data)} of {length} bytes)")
        if masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
            raise SourceError(f"{path}: CRC mismatch in the data of record {index} (corrupt file)")
        yield data
        index += 1


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end or varint value) of a message in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise ValueError("length-delimited field runs past the message")
            yield num, wt, pos, pos + n
            pos += n
        elif wt == 0:
            v, pos = _varint(buf, pos)
            yield num, wt, v, v
        elif wt == 5:
            yield num, wt, pos, pos + 4
            pos += 4
        elif wt == 1:
            yield num, wt, pos, pos + 8
            pos += 8
        else:
            raise ValueError(f"unsupported wire type {wt}")
    if pos != end:
        raise ValueError("message ends inside a field")


def _int64_list(buf: bytes, start: int, end: int) -> np.ndarray:
    out: list[int] = []
    for num, wt, a, b in _fields(buf, start, end):
        if num != 1:
            continue
        if wt == 0:
            out.append(a)
        elif wt == 2:
            chunk = np.frombuffer(buf, np.uint8, b - a, a)
            if not (chunk & 0x80).any():  # every varint is one byte (small non-negative values)
                out.extend(chunk.tolist())
                continue
            pos = a
            while pos < b:
                v, pos = _varint(buf, pos)
                out.append(v)
    arr = np.array(out, dtype=np.uint64)
    return arr.view(np.int64)  # two's complement, as protobuf encodes negative int64


def _float_list(buf: bytes, start: int, end: int) -> np.ndarray:
    parts: list[np.ndarray] = []
    for num, wt, a, b in _fields(buf, start, end):
        if num != 1:
            continue
        if wt not in (2, 5) or (b - a) % 4:
            raise ValueError("malformed float list")
        parts.append(np.frombuffer(buf, "<f4", (b - a) // 4, a))
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def _bytes_list(buf: bytes, start: int, end: int) -> list[memoryview]:
    view = memoryview(buf)
    out = []
    for num, wt, a, b in _fields(buf, start, end):
        if num == 1:
            if wt != 2:
                raise ValueError("malformed bytes list")
            out.append(view[a:b])
    return out


def parse_example(buf: bytes, path: str = "", record: int = 0) -> dict[str, tuple[str, object]]:
    """Decode a serialized ``tf.train.Example`` into {feature name: (kind, values)}.

    kind is BYTES (list of memoryview), FLOAT (float32 array) or INT64 (int64 array).
    """
    out: dict[str, tuple[str, object]] = {}
    try:
        for num, wt, a, b in _fields(buf, 0, len(buf)):
            if num != 1 or wt != 2:  # Example.features
                continue
            for fnum, fwt, fa, fb in _fields(buf, a, b):
                if fnum != 1 or fwt != 2:  # Features.feature (map entry)
                    continue
                key, value = None, (fb, fb)
                for enum, ewt, ea, eb in _fields(buf, fa, fb):
                    if enum == 1 and ewt == 2:
                        key = bytes(buf[ea:eb]).decode()
                    elif enum == 2 and ewt == 2:
                        value = (ea, eb)
                if key is None:
                    raise ValueError("feature map entry without a key")
                kind, values = BYTES, []
                for vnum, vwt, va, vb in _fields(buf, *value):  # Feature oneof
                    if vwt != 2:
                        continue
                    if vnum == 1:
                        kind, values = BYTES, _bytes_list(buf, va, vb)
                    elif vnum == 2:
                        kind, values = FLOAT, _float_list(buf, va, vb)
                    elif vnum == 3:
                        kind, values = INT64, _int64_list(buf, va, vb)
                out[key] = (kind, values)
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: record {record} is not a valid tf.train.Example ({e})") from e
    return out
