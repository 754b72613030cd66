"""A GGUF file's header, metadata and tensor table, read with plain struct unpacking."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Optional

import numpy as np

from entmtp.errors import EntmtpError

# GGUF value types (gguf.GGUFValueType) that are not scalars.
_STRING, _ARRAY, _BOOL = 8, 9, 7
# GGUF value types (gguf.GGUFValueType) -> struct format (also a valid numpy
# dtype string); 8 = string, 9 = array.
_SCALAR_DTYPES = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
                  7: "<B", 10: "<Q", 11: "<q", 12: "<d"}


class GGUFFile:
    """A minimal little-endian GGUF (v2/v3) reader.

    gguf.GGUFReader builds a numpy memmap view per metadata item, which costs
    about 7 s on the 98k token and merge strings of the default model; this
    reads the same header with struct in well under a second. Tensor data stays
    memory-mapped; `tensors` holds (name, numpy shape, ggml type, uint8 bytes of
    shape [..., bytes per row]) as gguf.quants.dequantize expects.
    """

    def __init__(self, path: Path):
        import gguf

        self.path = path
        self._mm = np.memmap(path, dtype=np.uint8, mode="r")
        self._buf = memoryview(self._mm)
        self._pos = 0
        if self._take("<I") != gguf.GGUF_MAGIC:
            raise EntmtpError(f"{path}: not a GGUF file (bad magic)")
        version = self._take("<I")
        if version not in (2, 3):
            raise EntmtpError(f"{path}: GGUF version {version} is not supported (2 and 3 are; "
                              "big-endian files are not)")
        n_tensors, n_kv = self._take("<Q"), self._take("<Q")
        self.fields: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            self.fields[key] = self._value(self._take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            ne = [self._take("<Q") for _ in range(self._take("<I"))]
            infos.append((name, ne, self._take("<I"), self._take("<Q")))
        align = int(self.fields.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT))
        data_start = -(-self._pos // align) * align
        self.tensors = []
        for name, ne, type_id, offset in infos:
            try:
                qtype = gguf.GGMLQuantizationType(type_id)
                block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise EntmtpError(f"{path}: tensor {name} has unknown ggml type {type_id}") from None
            shape = tuple(int(n) for n in reversed(ne))  # ne0 (innermost) is listed first
            if shape[-1] % block:
                raise EntmtpError(f"{path}: tensor {name} row size {shape[-1]} is not a multiple "
                                  f"of the {qtype.name} block size {block}")
            byte_shape = (*shape[:-1], shape[-1] // block * type_size)
            start = data_start + offset
            nbytes = int(np.prod(byte_shape))
            if start + nbytes > len(self._mm):
                raise EntmtpError(f"{path}: tensor {name} runs past the end of the file (truncated?)")
            self.tensors.append((name, shape, qtype, self._mm[start:start + nbytes].reshape(byte_shape)))

    def _take(self, fmt: str):
        try:
            (value,) = struct.unpack_from(fmt, self._buf, self._pos)
        except struct.error:
            raise EntmtpError(f"{self.path}: GGUF header is truncated") from None
        self._pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        n = self._take("<Q")
        raw = bytes(self._buf[self._pos:self._pos + n])
        if len(raw) != n:
            raise EntmtpError(f"{self.path}: GGUF header is truncated")
        self._pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise EntmtpError(f"{self.path}: GGUF string at byte {self._pos - n} is not UTF-8") from None

    def _value(self, vtype: int):
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            item_type, n = self._take("<I"), self._take("<Q")
            if item_type == _STRING:
                return [self._string() for _ in range(n)]
            if item_type not in _SCALAR_DTYPES:
                raise EntmtpError(f"{self.path}: unsupported GGUF array item type {item_type}")
            dt = np.dtype(_SCALAR_DTYPES[item_type])
            arr = np.frombuffer(self._buf, dtype=dt, count=n, offset=self._pos)
            self._pos += n * dt.itemsize
            return [bool(v) for v in arr] if item_type == _BOOL else arr.tolist()
        if vtype not in _SCALAR_DTYPES:
            raise EntmtpError(f"{self.path}: unsupported GGUF value type {vtype}")
        value = self._take(_SCALAR_DTYPES[vtype])
        if vtype == _BOOL:
            return bool(value)
        if vtype == 6:
            # float32 metadata: keep the shortest decimal that round-trips in
            # float32 (1e-05, not 9.999999747378752e-06), as the source config had.
            return float(str(np.float32(value)))
        return value


class GGUFMetadata:
    """Typed access to GGUF key/value metadata with one-line errors."""

    def __init__(self, fields: dict, path: Path):
        self._fields = fields
        self.path = path

    def get(self, key: str, default: Any = None) -> Any:
        value = self._fields.get(key, default)
        if isinstance(value, list):
            raise EntmtpError(f"{self.path}: metadata {key} is an array (per-layer values are not supported)")
        return value

    def require(self, key: str) -> Any:
        if key not in self._fields:
            raise EntmtpError(f"{self.path}: GGUF metadata lacks {key}")
        return self.get(key)

    def array(self, key: str) -> Optional[list]:
        value = self._fields.get(key)
        if value is not None and not isinstance(value, list):
            raise EntmtpError(f"{self.path}: metadata {key} should be an array")
        return value
