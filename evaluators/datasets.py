"""Data sets for proxy training, held as tensors on the training device.

`digits` (scikit-learn's bundled 8x8 handwritten digits) needs no download and
is the default; `fashion_mnist`, `mnist` and `kmnist` read the four IDX files
(found as `evaluators.fetch` describes); `cifar10` / `cifar100` read the
python-pickle directories, through an unpickler that refuses every global but
numpy's array reconstruction (a data file never runs code); `imagefolder` reads
one sub-folder of images per class. Training and validation both come from the
training set (`val_fraction`, split with `seed`); the test split is never used
for search. Images are normalised per channel with training statistics and
augmented on the device (`DataBundle.augment`), so a training step does no
host work.
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shiftnas.config import check, is_int, is_num
from shiftnas.errors import ConfigError, DataError

from ._idx import read_idx_split
from .fetch import IDX_DATASETS, locate

DATASETS = ("digits", *IDX_DATASETS, "cifar10", "cifar100", "imagefolder")
NEEDS_PATH = ("cifar10", "cifar100", "imagefolder")  # no default location: data.path is required
_NO_FLIP = ("digits", "mnist", "kmnist")  # a mirrored digit or character is another glyph
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


# ----------------------------------------------------------------------------
# Config and bundle
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DataCfg:
    """Which data set, where it lives, and how it is split and sized."""

    name: str = "digits"  # one of DATASETS
    path: str | None = None  # data directory: required for cifar*, imagefolder; optional for
    # fashion_mnist, mnist, kmnist (see evaluators.fetch for where they are looked for)
    val_fraction: float = 0.2  # share of the training set held out for validation
    subset: int | None = None  # at most this many training examples (None = all)
    val_subset: int | None = None  # at most this many validation examples (None = all)
    resolution: int | None = None  # resize once at load (imagefolder: default 32)
    augment: bool = True  # random crop with padding (+ horizontal flip, except digits/mnist/kmnist)
    seed: int = 0  # seed of the train/validation split and the subset

    def __post_init__(self) -> None:
        check(self.name in DATASETS, "name", f"must be one of {list(DATASETS)}", self.name)
        check(self.path is None or isinstance(self.path, (str, Path)), "path",
               "must be a directory path", self.path)
        if isinstance(self.path, Path):
            object.__setattr__(self, "path", str(self.path))
        check(self.name not in NEEDS_PATH or bool(self.path), "path",
               f"is required for the {self.name} data set (its data directory)", self.path)
        check(is_num(self.val_fraction) and 0 < self.val_fraction < 1, "val_fraction",
               "must be a number in (0, 1)", self.val_fraction)
        object.__setattr__(self, "val_fraction", float(self.val_fraction))
        check(self.subset is None or (is_int(self.subset) and self.subset >= 2), "subset",
               "must be an integer >= 2 or null", self.subset)
        check(self.val_subset is None or (is_int(self.val_subset) and self.val_subset >= 1),
              "val_subset", "must be an integer >= 1 or null", self.val_subset)
        check(self.resolution is None or (is_int(self.resolution) and self.resolution >= 4),
               "resolution", "must be an integer >= 4 or null", self.resolution)
        check(isinstance(self.augment, bool), "augment", "must be true or false", self.augment)
        check(is_int(self.seed), "seed", "must be an integer", self.seed)



@dataclass
class DataBundle:
    """A loaded data set: normalised NCHW float tensors on one device."""

    name: str
    train_x: torch.Tensor  # (N, C, H, W) float32, normalised with training statistics
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    in_chans: int
    classes: int
    input_size: int
    mean: tuple[float, ...] = ()  # per-channel statistics used to normalise
    std: tuple[float, ...] = ()
    pad: int = 0  # random-crop padding (0 = no crop)
    flip: bool = False  # random horizontal flips

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop with zero padding and (if allowed) horizontal flip, all on `x`'s device."""
        n, _, h, w = x.shape
        if self.pad:
            p = self.pad
            xp = F.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (n,), device=x.device, generator=generator)
            ox = torch.randint(0, 2 * p + 1, (n,), device=x.device, generator=generator)
            rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
            cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
            idx = torch.arange(n, device=x.device)[:, None, None]
            x = xp.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2)
        if self.flip:
            m = torch.rand(n, device=x.device, generator=generator) < 0.5
            x = torch.where(m[:, None, None, None], x.flip(3), x)
        # Not `.contiguous()`: with one channel the gathered batch has strides (HW, 1, W, 1),
        # which count as contiguous, and oneDNN's weight gradient of the stem convolution
        # corrupts the heap on them (torch 2.13, one thread: "corrupted double-linked list").
        return x.clone(memory_format=torch.contiguous_format)

    def describe(self) -> str:
        return (f"{self.name}: {len(self.train_y)} train / {len(self.val_y)} validation, "
                f"{self.in_chans}x{self.input_size}x{self.input_size}, {self.classes} classes")


# ----------------------------------------------------------------------------
# Readers (each returns uint8 or float images (N, C, H, W) and int64 labels, on the CPU)
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # values 0..16 -> [0, 1]
    return x, torch.from_numpy(d.target.astype(np.int64))


# The globals a CIFAR batch's numpy arrays need, pickled by numpy 1 (`numpy.core`) or 2
# (`numpy._core`), found by loading batches written with protocols 0-5: `_reconstruct`,
# `ndarray` and `dtype` rebuild an array (protocols 0-4), `_frombuffer` one from its buffer
# (protocol 5), `scalar` a numpy number (a label written as np.int64, say).
_PICKLE_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
})
_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch: dicts, lists, numbers, bytes and numpy arrays, nothing else.

    Every other global (`os.system`, `builtins.exec`, any class) is refused
    with a `DataError`, so a data file can never run code.
    """

    def __init__(self, f: Any, path: Path):
        super().__init__(f, encoding="bytes")  # Python 2 str -> bytes, as the keys b"data" expect
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return self._latin1  # protocols 0-2 under Python 3 spell bytes this way
        if (module, name) in _PICKLE_GLOBALS:
            if module.startswith("numpy.") and "core" in module:  # the installed numpy's name,
                module = f"{_NUMPY_CORE}.{module.rsplit('.', 1)[1]}"  # without its warning
            return super().find_class(module, name)
        raise DataError(f"{self.path}: refused to load the global {module}.{name}; a CIFAR "
                        f"batch holds only dicts, lists, numbers, bytes and numpy arrays, and a "
                        f"data file may not run code. Is this file really a CIFAR batch?")

    def _latin1(self, text: Any, encoding: str) -> bytes:
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise DataError(f"{self.path}: refused _codecs.encode({type(text).__name__}, "
                            f"{encoding!r}); a pickle spells bytes as encode(str, 'latin1').")
        return text.encode("latin-1")


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return _CifarUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as exc:  # truncated file, not a pickle, ...
        raise DataError(f"{path}: cannot be read as a CIFAR python pickle ({exc}).") from None


def _idx(name: str, path: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split of an IDX data set (10 classes), looked up as `evaluators.fetch` says."""
    directory, _ = locate(name, path)
    x, y = read_idx_split(directory, "train", classes=10)
    return torch.from_numpy(x[:, None].copy()), torch.from_numpy(y.astype(np.int64))


_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], b"labels", 10,
                "the python-pickle layout from the CIFAR-10 'python version' archive: "
                "data_batch_1..5, test_batch, batches.meta"),
    "cifar100": ("cifar-100-python", ["train"], b"fine_labels", 100,
                 "the python-pickle layout from the CIFAR-100 'python version' archive: "
                 "train, test, meta (with b'fine_labels')"),
}


def _cifar(name: str, root: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    sub, files, label_key, classes, layout = _CIFAR[name]
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"{name} directory {base} does not exist; expected {layout}.")
    if not (base / files[0]).is_file() and (base / sub / files[0]).is_file():
        base = base / sub  # the archive's parent folder was given
    xs, ys = [], []
    for fname in files:
        p = base / fname
        if not p.is_file():
            raise DataError(f"{name} directory {base} has no {fname}; expected {layout}.")
        d = _unpickle(p)
        if b"data" not in d or label_key not in d:
            raise DataError(f"{p}: missing b'data' or {label_key!r}; expected {layout}.")
        data, labels = np.asarray(d[b"data"]), np.asarray(d[label_key])
        if data.dtype != np.uint8 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{p}: b'data' must be uint8 pixels and {label_key!r} integers, "
                              f"got {data.dtype} and {labels.dtype}; expected {layout}.")
        labels = labels.astype(np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise DataError(f"{p}: b'data' must be (N, 3072) uint8 rows with N labels, got "
                              f"shape {data.shape} and {len(labels)} labels.")
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise DataError(f"{p}: labels must lie in [0, {classes}), got "
                              f"[{labels.min()}, {labels.max()}].")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), classes


def _imagefolder(root: str, size: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    from PIL import Image

    base = Path(root).expanduser()
    what = ("one sub-folder per class (class = folder name, sorted), each holding images "
            f"({', '.join(_IMAGE_EXTS[:4])}, ...)")
    if not base.is_dir():
        raise DataError(f"imagefolder directory {base} does not exist; expected {what}.")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"imagefolder directory {base} has {len(classes)} class folder(s); "
                          f"expected at least 2: {what}.")
    xs, ys, modes = [], [], set()
    for label, c in enumerate(classes):
        files = sorted(p for p in (base / c).iterdir() if p.suffix.lower() in _IMAGE_EXTS)
        if not files:
            raise DataError(f"imagefolder class folder {base / c} has no images; expected {what}.")
        for p in files:
            try:
                with Image.open(p) as im:
                    im = im.convert("L" if im.mode in ("1", "L", "I;16", "I") else "RGB")
                    modes.add(im.mode)
                    im = im.resize((size, size), Image.BILINEAR)
                    a = np.asarray(im, dtype=np.uint8)
            except OSError as exc:
                raise DataError(f"imagefolder image {p} cannot be read ({exc}).") from None
            xs.append(a)
            ys.append(label)
    chans = 3 if "RGB" in modes else 1
    arr = [np.repeat(a[..., None], 3, axis=2) if (chans == 3 and a.ndim == 2) else a for a in xs]
    x = np.stack(arr)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.tensor(ys), len(classes), chans


# ----------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------


def load_data(cfg: DataCfg, device: str | torch.device = "cpu") -> DataBundle:
    """Read, split, subset, resize and normalise a data set onto `device`.

    The split is a seeded permutation of the training set: the first
    `round(val_fraction * N)` indices validate (capped at `val_subset`), the
    rest train (capped at `subset`). Raises `DataError` (a `ConfigError`) naming the expected
    layout when a data directory is missing or malformed.
    """
    device = torch.device(device)
    if cfg.name == "digits":
        x, y = _digits()
        classes, chans, default_size = 10, 1, 8
    elif cfg.name in IDX_DATASETS:
        x, y = _idx(cfg.name, cfg.path)
        classes, chans, default_size = 10, 1, x.shape[-1]
    elif cfg.name in _CIFAR:
        x, y, classes = _cifar(cfg.name, str(cfg.path))
        chans, default_size = 3, 32
    else:
        x, y, classes, chans = _imagefolder(str(cfg.path), cfg.resolution or 32)
        default_size = cfg.resolution or 32
    n = len(y)
    n_val = int(round(cfg.val_fraction * n))
    if n_val < 1 or n - n_val < 2:
        raise ConfigError(f"{cfg.name}: val_fraction {cfg.val_fraction} of {n} examples leaves "
                          f"{n - n_val} for training and {n_val} for validation; need >= 2 and >= 1.")
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(n, generator=g)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if cfg.subset is not None:
        train_idx = train_idx[: cfg.subset]
    if cfg.val_subset is not None:
        val_idx = val_idx[: cfg.val_subset]

    def prep(idx: torch.Tensor) -> torch.Tensor:
        t = x[idx].to(device)
        t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
        if cfg.resolution is not None and cfg.resolution != t.shape[-1]:
            t = F.interpolate(t, size=(cfg.resolution, cfg.resolution), mode="bilinear",
                              align_corners=False, antialias=cfg.resolution < t.shape[-1])
        return t

    tx, vx = prep(train_idx), prep(val_idx)
    mean = tx.mean(dim=(0, 2, 3))
    std = tx.std(dim=(0, 2, 3)).clamp_min(1e-6)
    tx = (tx - mean[None, :, None, None]) / std[None, :, None, None]
    vx = (vx - mean[None, :, None, None]) / std[None, :, None, None]
    size = cfg.resolution or default_size
    return DataBundle(
        name=cfg.name, train_x=tx.contiguous(), train_y=y[train_idx].to(device),
        val_x=vx.contiguous(), val_y=y[val_idx].to(device), in_chans=chans, classes=classes,
        input_size=size, mean=tuple(mean.tolist()), std=tuple(std.tolist()),
        pad=max(1, size // 8) if cfg.augment else 0,  # 4 pixels at 32x32, 3 at 28x28, 1 at 8x8
        flip=cfg.augment and cfg.name not in _NO_FLIP,
    )
