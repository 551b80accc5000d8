"""A GGUF's metadata and tensor table, read fast, and numpy views of its tensors.

The gguf package's `GGUFReader` builds a numpy view for every part of every field: on SmolLM2's
49k-token vocabulary (tokens, merges, types) that is ~2 s per open, and one GPTQ export opened
the text model seven times. This reads the header with `struct` on a memory map, decodes only the
metadata keys asked for, and is checked field for field against `GGUFReader` in
tests/test_gguf_header.py.

    header = read_gguf_header("model-q4_k_m.gguf", keys="tokenizer.")
    header.fields["tokenizer.ggml.model"]            # "gpt2"
    info = header.tensor("blk.0.attn_q.weight")      # type Q5_0, shape (576, 576) numpy order
    data = tensor_data(header, info)                 # uint8 [576, 396] (blocks), read-only
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import mmap
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
VERSIONS = (2, 3)
# GGUF value type -> struct format of the fixed-size ones (8: string, 9: array)
SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
    12: "<d",
}  # fmt: skip
STRING, ARRAY = 8, 9
# ggml types whose data is plain numbers (the rest are blocks, viewed as uint8 rows)
PLAIN = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8, "I16": np.int16,
         "I32": np.int32, "I64": np.int64}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # ggml order: dims[0] is the row length
    kind: Any  # gguf.GGMLQuantizationType
    offset: int  # absolute byte offset of the data in the file
    n_bytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order (rows last-to-first), as the tensor's data view has it for plain types."""
        return tuple(reversed(self.dims))

    @property
    def n_elements(self) -> int:
        return math.prod(self.dims)


@dataclasses.dataclass
class GgufHeader:
    path: Path
    version: int
    fields: dict[str, Any]  # only the keys asked for; arrays as (nested) lists
    tensors: list[TensorInfo]

    def tensor(self, name: str) -> TensorInfo:
        for info in self.tensors:
            if info.name == name:
                return info
        raise KeyError(f"{self.path}: no tensor {name!r}")


class _Cursor:
    """Reads a mapped GGUF from the top; starts past the magic, version and counts."""

    def __init__(self, buf: Any) -> None:
        self.buf, self.pos = buf, 4
        self.version = self.scalar("<I")
        if self.version not in VERSIONS:  # a big-endian file reads as 0x03000000 here
            raise ValueError(f"GGUF version {self.version} (little-endian 2 and 3 are read)")
        self.n_tensors, self.n_kv = self.scalar("<Q"), self.scalar("<Q")

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError("a header field runs past the end of the file")
        start, self.pos = self.pos, self.pos + n
        return start

    def scalar(self, fmt: str) -> Any:
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        start = self.take(n)
        return bytes(self.buf[start : start + n]).decode("utf-8")

    def value(self, kind: int, keep: bool) -> Any:
        """The value of GGUF type `kind` (None when not `keep`: skipped without decoding)."""
        if kind in SCALARS:
            if not keep:
                self.take(struct.calcsize(SCALARS[kind]))
                return None
            return self.scalar(SCALARS[kind])
        if kind == STRING:
            if not keep:
                self.take(self.scalar("<Q"))
                return None
            return self.string()
        if kind != ARRAY:
            raise ValueError(f"unknown value type {kind}")
        item, count = self.scalar("<I"), self.scalar("<Q")
        if item in SCALARS:
            size = struct.calcsize(SCALARS[item])
            start = self.take(size * count)
            if not keep:
                return None
            dtype = np.dtype(SCALARS[item].replace("?", "b1"))
            return np.frombuffer(self.buf, dtype, count, start).tolist()
        values = [self.value(item, keep) for _ in range(count)]
        return values if keep else None


Keys = str | tuple[str, ...] | Callable[[str], bool]


def _wanted(keys: Keys) -> Callable[[str], bool]:
    if callable(keys):
        return keys
    return (lambda key: key.startswith(keys)) if keys != () else (lambda key: False)


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[_Cursor]:
    with path.open("rb") as f:
        if path.stat().st_size < 24:
            raise ValueError("shorter than a GGUF header")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if bytes(buf[:4]) != MAGIC:
            raise ValueError("no GGUF magic")
        yield _Cursor(buf)
    except (struct.error, UnicodeDecodeError, OverflowError, KeyError, RecursionError) as exc:
        raise ValueError(f"{exc.__class__.__name__}: {exc}") from None
    finally:
        buf.close()


def _fields(cursor: _Cursor, wanted: Callable[[str], bool]) -> Iterator[tuple[str, Any]]:
    """(key, value) of every metadata field in file order; value None for keys not `wanted`."""
    for _ in range(cursor.n_kv):
        key, kind = cursor.string(), cursor.scalar("<I")
        yield key, cursor.value(kind, wanted(key) or key == "general.alignment")


def scan_gguf_fields(path: str | Path, keys: Keys) -> Iterator[tuple[str, Any]]:
    """The metadata fields of a GGUF in file order, decoded where `keys` wants them (None
    otherwise); stop iterating to stop reading (`llama.context_length` is near the top)."""
    with _mapped(Path(path)) as cursor:
        wanted = _wanted(keys)
        for key, value in _fields(cursor, wanted):
            yield key, value if wanted(key) else None  # general.alignment is always decoded


def read_gguf_header(path: str | Path, keys: Keys = "") -> GgufHeader:
    """The header of a GGUF: its metadata values whose key starts with `keys` (or for which
    `keys(key)` is true; every key: "", none: `()`), and every tensor's name, dims, type and byte
    range. Raises ValueError on a file that is not a GGUF or whose header is cut off."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path, wanted = Path(path), _wanted(keys)
    with _mapped(path) as cursor:
        fields: dict[str, Any] = {}
        seen: set[str] = set()
        alignment = DEFAULT_ALIGNMENT
        for key, value in _fields(cursor, wanted):
            if key in seen:  # GGUFReader keeps a repeated key's first value
                continue
            seen.add(key)
            if key == "general.alignment":
                if type(value) is not int or value <= 0:
                    raise ValueError(f"general.alignment {value!r} is not a positive integer")
                alignment = value
            if wanted(key):
                fields[key] = value
        raw = []
        for _ in range(cursor.n_tensors):
            name = cursor.string()
            dims = tuple(cursor.scalar("<Q") for _ in range(cursor.scalar("<I")))
            raw.append((name, dims, cursor.scalar("<I"), cursor.scalar("<Q")))
        start = -(-cursor.pos // alignment) * alignment
        tensors = []
        for name, dims, type_id, offset in raw:
            kind = GGMLQuantizationType(type_id)
            block, size = GGML_QUANT_SIZES[kind]
            n_bytes = math.prod(dims) // block * size  # Python ints: no wrap-around
            if start + offset + n_bytes > len(cursor.buf):
                raise ValueError(f"tensor {name} runs past the end of the file")
            tensors.append(TensorInfo(name, dims, kind, start + offset, n_bytes))
        if len({t.name for t in tensors}) != len(tensors):
            raise ValueError("two tensors share a name")
        return GgufHeader(path, cursor.version, fields, tensors)


def tensor_data(header: GgufHeader, info: TensorInfo, writable: bool = False) -> np.ndarray:
    """A memory-mapped view of one tensor's data, shaped as `GGUFReader` shapes it: plain types
    in numpy order, block types as uint8 [rows..., bytes per row]. `writable`: changes go to the
    file (flush the view's `.base` or drop it)."""
    from gguf import GGML_QUANT_SIZES

    name = info.kind.name
    if name in PLAIN:
        dtype, shape = np.dtype(PLAIN[name]), info.shape
    else:
        block, size = GGML_QUANT_SIZES[info.kind]
        dtype, shape = np.dtype(np.uint8), (*info.shape[:-1], info.dims[0] // block * size)
    mode = "r+" if writable else "r"
    return np.memmap(header.path, dtype, mode, offset=info.offset, shape=shape)
