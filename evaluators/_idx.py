"""Reader for the IDX files of MNIST, Fashion-MNIST and KMNIST, gzip-compressed or not.

An IDX file is a 4-byte big-endian magic number (two zero bytes, the element
type 0x08 = unsigned byte, the number of dimensions), one big-endian uint32
per dimension, then the elements in C order: images are (N, rows, cols),
labels (N,). Each broken rule is one `DataError` that names the file, what
was found and what was expected; nothing is read short or padded silently.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from shiftnas.errors import DataError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
SPLITS = {  # split -> (images, labels), each read as `stem.gz` or `stem`
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CHUNK = 1 << 22  # read in 4 MiB pieces, so a header that lies about its size allocates nothing


def idx_file(directory: Path, stem: str) -> Path | None:
    """`stem.gz` or `stem` in `directory`, whichever exists (the compressed name first)."""
    for p in (directory / f"{stem}.gz", directory / stem):
        if p.is_file():
            return p
    return None


def _open(path: Path) -> BinaryIO:
    # Decided by content, not by name: browsers often unpack a download and keep its `.gz`.
    with path.open("rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else path.open("rb")  # type: ignore[return-value]


def _read_upto(f: BinaryIO, n: int) -> bytes:
    """At most `n` bytes: fewer only where the stream ends."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of the IDX file `path`, whose magic number must be `magic`."""
    ndim = magic & 0xFF
    what = f"IDX {'images' if magic == IMAGES_MAGIC else 'labels'} file"
    try:
        with _open(path) as f:
            head = _read_upto(f, 4 + 4 * ndim)
            if len(head) >= 4 and int.from_bytes(head[:4], "big") != magic:
                raise DataError(f"{path}: magic number 0x{int.from_bytes(head[:4], 'big'):08x}, "
                                f"expected 0x{magic:08x} (an {what}: unsigned bytes, "
                                f"{ndim} dimension{'s' if ndim > 1 else ''}).")
            if len(head) < 4 + 4 * ndim:
                raise DataError(f"{path}: {len(head)} bytes, shorter than the {4 + 4 * ndim}-byte "
                                f"header of an {what}; the file is truncated.")
            dims = struct.unpack(f">{ndim}I", head[4:])
            size = math.prod(dims)
            body = _read_upto(f, size + 1)  # one byte more than declared shows trailing data
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, a cut or corrupt gzip stream, ...
        raise DataError(f"{path}: cannot be read as an {what}, gzip-compressed or not "
                        f"({exc}).") from None
    shape = " x ".join(map(str, dims))
    if len(body) < size:
        raise DataError(f"{path}: {len(body)} bytes of data after the header, expected {size} "
                        f"({shape}); the file is truncated.")
    if len(body) > size:
        raise DataError(f"{path}: more data after the header than the {size} bytes its "
                        f"dimensions declare ({shape}); expected exactly {size}.")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def read_idx_split(directory: Path, split: str = "train",
                   classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, rows, cols) uint8 and labels (N,) uint8 of one split in `directory`.

    Images must be square and at least one; the two files must hold the same
    number of examples; labels must lie in [0, classes).
    """
    paths = []
    for stem in SPLITS[split]:
        p = idx_file(directory, stem)
        if p is None:
            raise DataError(f"{directory} has no {stem}.gz (or uncompressed {stem}); expected the "
                            f"IDX files {', '.join(s + '.gz' for s in SPLITS[split])}.")
        paths.append(p)
    x, y = read_idx(paths[0], IMAGES_MAGIC), read_idx(paths[1], LABELS_MAGIC)
    n, rows, cols = x.shape
    if n < 1 or rows < 1 or rows != cols:
        raise DataError(f"{paths[0]}: {n} images of {rows} x {cols} pixels; expected at least "
                        f"one image, square (rows = columns).")
    if len(y) != n:
        raise DataError(f"{paths[1]}: {len(y)} labels, but {paths[0].name} has {n} images; "
                        f"expected one label per image.")
    bad = np.flatnonzero(y >= classes)
    if bad.size:
        raise DataError(f"{paths[1]}: label {y[bad[0]]} at index {bad[0]} ({bad.size} out of "
                        f"range in all); labels must lie in [0, {classes}).")
    return x, y
