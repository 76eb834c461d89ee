"""IDX files (``.gz`` or raw), as used by (Fashion-)MNIST: :func:`read_idx`,
:func:`read_idx_pair` and the writer :func:`write_idx`. Readers are strict: a bad file
raises a ValueError / FileNotFoundError that names it.
"""
from __future__ import annotations

import gzip
import os
import struct
from typing import Optional, Tuple

import numpy as np
import torch

from .._io import check_input_file

__all__ = ["read_idx", "write_idx", "read_idx_pair", "check_label_range", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC"]

# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("=").str[1:]: k for k, v in _IDX_DTYPES.items()}  # "u1" -> 0x08 ...
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, H, W)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)


def _read_file_bytes(path: str) -> bytes:
    """Whole file content, gunzipped when the file is gzip (by content, not by name)."""
    path = check_input_file(path, "data file")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, gzip.BadGzipFile) as exc:
            raise ValueError(f"{path}: truncated or corrupt gzip file ({exc})") from None
    if path.endswith(".gz"):
        raise ValueError(f"{path}: named .gz but is not a gzip file")
    return raw


def read_idx(path: str, expected_magic: Optional[int] = None) -> torch.Tensor:
    """An IDX file (``.gz`` or raw) as a tensor of the shape its header gives.

    Raises ValueError for a wrong magic number (or one other than ``expected_magic``), a
    truncated file (fewer data bytes than the header's dimensions need) or trailing bytes.
    """
    path = os.fspath(path)
    data = _read_file_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(data)} bytes, no complete header)")
    magic = struct.unpack(">I", data[:4])[0]
    zero, code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if expected_magic is not None and magic != expected_magic:
        what = {IDX_IMAGES_MAGIC: "images: ubyte, 3 dims", IDX_LABELS_MAGIC: "labels: ubyte, 1 dim"}.get(expected_magic, "")
        raise ValueError(
            f"{path}: wrong magic number 0x{magic:08X}, expected 0x{expected_magic:08X}"
            + (f" (IDX {what})" if what else "")
        )
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: wrong magic number 0x{magic:08X}: not an IDX file")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX file (header needs {header} bytes, file has {len(data)})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(dims, dtype=np.int64))
    need, have = count * dtype.itemsize, len(data) - header
    if have < need:
        raise ValueError(
            f"{path}: truncated IDX file: header says {'x'.join(map(str, dims))} "
            f"({need} data bytes), the file holds {have}"
        )
    if have > need:
        raise ValueError(f"{path}: {have - need} unexpected bytes after the IDX data ({'x'.join(map(str, dims))})")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return torch.from_numpy(arr.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path: str, array) -> str:
    """Write a tensor / array as an IDX file (gzip-compressed when ``path`` ends in ``.gz``)."""
    path = os.fspath(path)
    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    key = arr.dtype.newbyteorder("=").str[1:]
    if key not in _IDX_CODES:
        raise ValueError(f"write_idx: dtype {arr.dtype} has no IDX type (use uint8, int8, int16, int32, float32, float64)")
    if arr.ndim == 0 or arr.ndim > 255:
        raise ValueError(f"write_idx: need 1 to 255 dimensions, got {arr.ndim}")
    code = _IDX_CODES[key]
    body = struct.pack(">I", (code << 8) | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    body += np.ascontiguousarray(arr, dtype=np.dtype(_IDX_DTYPES[code])).tobytes()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
            f.write(body)
    else:
        with open(path, "wb") as f:
            f.write(body)
    return path


def read_idx_pair(images_path: str, labels_path: str, num_classes: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """An (images, labels) pair of IDX files: uint8 (N, 1, H, W) and int64 (N,)."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"label/image count mismatch: {images_path} holds {images.shape[0]} images, "
            f"{labels_path} holds {labels.shape[0]} labels"
        )
    labels = labels.long()
    if num_classes is not None:
        check_label_range(labels_path, labels, num_classes)
    return images.unsqueeze(1).contiguous(), labels


def check_label_range(path: str, labels: torch.Tensor, num_classes: int) -> None:
    """ValueError naming the file ``path`` and the first label of ``labels`` outside
    0..num_classes-1 (the value itself: a -1 as much as a 10), with how many there are."""
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.numel():
        more = f" ({outside.numel()} labels are)" if outside.numel() > 1 else ""
        raise ValueError(f"{path}: label {int(outside[0])} out of range for {num_classes} classes (0 to "
                         f"{num_classes - 1}){more}")
