"""IDX data sets (fashion_mnist, mnist, kmnist): the reader, where files are found, the CLI.

Every file here is written byte by byte by the test (header with `struct`,
pixels from a formula), so the expected tensors are independent of the reader.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shiftnas.config import cfg_from_dict
from shiftnas.errors import ConfigError, DataError
from shiftnas.evaluators import DataCfg, load_data
from shiftnas.evaluators import fetch as fetch_mod
from shiftnas.evaluators._idx import read_idx_split
from shiftnas.nas.cli import main

LABELS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]  # 12 examples, label of example i
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _no_default_locations(tmp_path, monkeypatch):
    """No test sees the machine's Debian package or a user's $SHIFTNAS_DATA by accident."""
    monkeypatch.setitem(fetch_mod.DEBIAN_DIRS, "fashion_mnist", tmp_path / "no-debian")
    monkeypatch.delenv("SHIFTNAS_DATA", raising=False)


def pixel(i: int, r: int, c: int, size: int) -> int:
    """The value the test writes at row r, column c of image i (image i starts with i)."""
    return i if r == c == 0 else (7 * i + 3 * r * size + c) % 256


def idx_bytes(magic: int, dims: list[int], values: list[int]) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + bytes(values)


def write_set(d: Path, n: int = 12, size: int = 5, gz: bool = True, labels: list[int] | None = None,
              images_raw: bytes | None = None, labels_raw: bytes | None = None) -> Path:
    """The two training files of an IDX data set in `d` (test files are never needed)."""
    d.mkdir(parents=True, exist_ok=True)
    labels = LABELS[:n] if labels is None else labels
    if images_raw is None:
        pixels = [pixel(i, r, c, size) for i in range(n) for r in range(size) for c in range(size)]
        images_raw = idx_bytes(0x803, [n, size, size], pixels)
    if labels_raw is None:
        labels_raw = idx_bytes(0x801, [len(labels)], labels)
    for stem, raw in (("train-images-idx3-ubyte", images_raw),
                      ("train-labels-idx1-ubyte", labels_raw)):
        if gz:
            (d / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (d / stem).write_bytes(raw)
    return d


def _raw_pixels(b) -> torch.Tensor:
    x = torch.cat([b.train_x, b.val_x])
    mean = torch.tensor(b.mean)[None, :, None, None]
    std = torch.tensor(b.std)[None, :, None, None]
    return torch.round((x * std + mean) * 255).to(torch.int64)


# ----------------------------------------------------------------------------
# the reader
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_reader_returns_the_written_pixels_and_labels(tmp_path, gz):
    d = write_set(tmp_path / "d", n=12, size=5, gz=gz)
    x, y = read_idx_split(d)
    assert x.shape == (12, 5, 5) and x.dtype == np.uint8
    for i in range(12):
        assert x[i].tolist() == [[pixel(i, r, c, 5) for c in range(5)] for r in range(5)]
    assert y.tolist() == LABELS


def test_a_gz_name_holding_unpacked_bytes_is_read(tmp_path):
    """Browsers often unpack a download and keep its `.gz` name: the content decides."""
    d = write_set(tmp_path / "d", n=3, gz=False)
    for p in list(d.iterdir()):
        p.rename(p.with_name(p.name + ".gz"))
    x, y = read_idx_split(d)
    assert x[2, 0, 0] == 2 and y.tolist() == LABELS[:3]


@pytest.mark.parametrize("name,flip", [("fashion_mnist", True), ("mnist", False),
                                       ("kmnist", False)])
def test_load_data_round_trip_28x28(tmp_path, name, flip):
    d = write_set(tmp_path / "d", n=12, size=28)
    b = load_data(DataCfg(name=name, path=str(d), val_fraction=0.25))
    assert (b.in_chans, b.classes, b.input_size) == (1, 10, 28)
    assert b.train_x.shape == (9, 1, 28, 28) and len(b.val_y) == 3
    assert b.pad == 3 and b.flip is flip  # a mirrored digit or character is another glyph
    raw, labels = _raw_pixels(b), torch.cat([b.train_y, b.val_y])
    seen = set()
    for img, lab in zip(raw, labels):
        i = int(img[0, 0, 0])
        seen.add(i)
        assert int(lab) == LABELS[i]
        want = [[pixel(i, r, c, 28) for c in range(28)] for r in range(28)]
        assert img[0].tolist() == want
    assert seen == set(range(12))


def test_resolution_and_no_augmentation(tmp_path):
    d = write_set(tmp_path / "d", n=12, size=28)
    b = load_data(DataCfg(name="fashion_mnist", path=str(d), resolution=14, augment=False))
    assert b.train_x.shape[1:] == (1, 14, 14) and b.input_size == 14
    assert b.pad == 0 and b.flip is False


def _header(magic, dims):
    return idx_bytes(magic, dims, [])


@pytest.mark.parametrize("images,labels,gz,match", [
    # wrong magic number: a labels header on the images file
    (_header(0x801, [3]) + bytes(3), None, False,
     r"train-images-idx3-ubyte: magic number 0x00000801, expected 0x00000803"),
    # truncated: 3 images of 5x5 declared, 74 of 75 bytes present
    (_header(0x803, [3, 5, 5]) + bytes(74), None, False,
     r"train-images-idx3-ubyte: 74 bytes of data after the header, expected 75 \(3 x 5 x 5\); "
     r"the file is truncated"),
    (_header(0x803, [3, 5, 5]) + bytes(74), None, True,
     r"train-images-idx3-ubyte\.gz: 74 bytes of data .* expected 75"),
    # a header cut short
    (struct.pack(">I", 0x803) + b"\0\0\0\3", None, False,
     r"train-images-idx3-ubyte: 8 bytes, shorter than the 16-byte header"),
    # more bytes than the header declares
    (_header(0x803, [3, 5, 5]) + bytes(76), None, False,
     r"more data after the header than the 75 bytes its dimensions declare"),
    # image and label counts disagree
    (None, _header(0x801, [2]) + bytes([1, 2]), False,
     r"train-labels-idx1-ubyte: 2 labels, but train-images-idx3-ubyte has 3 images"),
    # a label outside [0, 10)
    (None, _header(0x801, [3]) + bytes([1, 10, 2]), False,
     r"train-labels-idx1-ubyte: label 10 at index 1 .*labels must lie in \[0, 10\)"),
    # not square
    (_header(0x803, [3, 5, 4]) + bytes(60), None, False,
     r"3 images of 5 x 4 pixels; expected .* square"),
    # labels file with the images magic number
    (None, _header(0x803, [3, 1, 1]) + bytes(3), True,
     r"train-labels-idx1-ubyte\.gz: magic number 0x00000803, expected 0x00000801"),
])
def test_malformed_files_are_one_clear_error(tmp_path, images, labels, gz, match):
    d = write_set(tmp_path / "d", n=3, gz=gz, images_raw=images, labels_raw=labels)
    with pytest.raises(DataError, match=match):
        load_data(DataCfg(name="fashion_mnist", path=str(d)))


def test_cut_gzip_stream_names_the_file(tmp_path):
    d = write_set(tmp_path / "d", n=12, size=28)
    p = d / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: cannot be read as an IDX "
                                        r"images file.*\(Compressed file ended"):
        load_data(DataCfg(name="mnist", path=str(d)))


def test_a_bad_file_through_the_cli_exits_2_without_traceback(tmp_path):
    d = write_set(tmp_path / "d", n=3, labels_raw=_header(0x801, [3]) + bytes([0, 11, 2]))
    env = {**os.environ, "SHIFTNAS_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "shiftnas", "evaluate", "shiftresnet20_e3",
                        "--dataset", "fashion_mnist", "--data-path", str(d), "--epochs", "0"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "label 11 at index 1" in r.stderr and "train-labels-idx1-ubyte.gz" in r.stderr


def test_evaluate_on_an_idx_set_through_the_cli(tmp_path, capsys):
    d = write_set(tmp_path / "d", n=12, size=28)
    rc = main(["evaluate", "shiftresnet20_e3", "--dataset", "mnist", "--data-path", str(d),
               "--epochs", "0", "--json", "--device", "cpu"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "mnist" and "-c1-n10-i28" in out["arch"]


# ----------------------------------------------------------------------------
# where the files are found
# ----------------------------------------------------------------------------


def test_lookup_order(tmp_path, monkeypatch):
    deb, fetched, given = tmp_path / "deb", tmp_path / "data" / "fashion_mnist", tmp_path / "mine"
    monkeypatch.setitem(fetch_mod.DEBIAN_DIRS, "fashion_mnist", deb)
    monkeypatch.setenv("SHIFTNAS_DATA", str(tmp_path / "data"))
    write_set(fetched, n=4)
    assert fetch_mod.locate("fashion_mnist") == (fetched, "where `shiftnas data fetch` writes")
    write_set(deb, n=5)
    assert fetch_mod.locate("fashion_mnist") == (deb, "the Debian package dataset-fashion-mnist")
    write_set(given, n=6)
    assert fetch_mod.locate("fashion_mnist", str(given)) == (given, "data.path")
    assert len(load_data(DataCfg(name="fashion_mnist")).train_y) == 4  # the Debian 5, 1 held out
    assert len(load_data(DataCfg(name="fashion_mnist", path=str(given))).train_y) == 5  # 6, 1 out


def test_default_fetch_folder_is_under_the_cache(tmp_path):
    # conftest sets SHIFTNAS_CACHE to tmp_path/cache; SHIFTNAS_DATA is unset
    assert fetch_mod.data_dir("kmnist") == tmp_path / "cache" / "data" / "kmnist"
    write_set(tmp_path / "cache" / "data" / "kmnist", n=4)
    assert load_data(DataCfg(name="kmnist")).name == "kmnist"


def test_nothing_found_says_what_to_do(tmp_path, capsys):
    with pytest.raises(DataError) as e:
        load_data(DataCfg(name="fashion_mnist"))
    msg = str(e.value)
    assert "no-debian" in msg and str(tmp_path / "cache" / "data" / "fashion_mnist") in msg
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "shiftnas data fetch fashion_mnist" in msg and "data.path (--data-path)" in msg
    assert "\n" not in msg
    with pytest.raises(DataError) as e:
        load_data(DataCfg(name="mnist"))
    assert "apt-get" not in str(e.value) and "data fetch" not in str(e.value)
    assert f"in {tmp_path / 'cache' / 'data' / 'mnist'}" in str(e.value)
    assert main(["evaluate", "resnet20", "--dataset", "fashion_mnist", "--epochs", "0"]) == 2
    assert "shiftnas data fetch fashion_mnist" in capsys.readouterr().err
    assert main(["data", "where", "fashion_mnist"]) == 2
    assert "no data found" in capsys.readouterr().err


def test_data_path_problems(tmp_path):
    with pytest.raises(DataError, match=r"data\.path .*nope does not exist"):
        load_data(DataCfg(name="mnist", path=str(tmp_path / "nope")))
    d = write_set(tmp_path / "d", n=3)
    (d / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"data\.path .* has no train-labels-idx1-ubyte \(\.gz"):
        load_data(DataCfg(name="mnist", path=str(d)))


def test_data_where(tmp_path, capsys):
    d = write_set(tmp_path / "d", n=3)
    assert main(["data", "where", "mnist", "--path", str(d)]) == 0
    assert capsys.readouterr().out.strip() == f"mnist: {d} (data.path)"
    assert main(["data", "where", "digits"]) == 0
    assert "bundled" in capsys.readouterr().out
    assert main(["data", "where", "cifar10"]) == 0
    assert "data.path (--data-path) only" in capsys.readouterr().out


def test_path_is_optional_for_idx_sets_only():
    assert cfg_from_dict(DataCfg, {"name": "fashion_mnist"}, "data").path is None
    with pytest.raises(ConfigError, match=r"data\.path: is required for the imagefolder"):
        cfg_from_dict(DataCfg, {"name": "imagefolder"}, "data")


# ----------------------------------------------------------------------------
# the real Fashion-MNIST (the Debian package), when installed
# ----------------------------------------------------------------------------


@pytest.mark.skipif(not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_the_debian_package(monkeypatch):
    monkeypatch.setitem(fetch_mod.DEBIAN_DIRS, "fashion_mnist", DEBIAN)
    d, source = fetch_mod.locate("fashion_mnist")
    assert d == DEBIAN and "Debian" in source
    x, y = read_idx_split(d)
    assert x.shape == (60000, 28, 28)
    assert np.bincount(y).tolist() == [6000] * 10
    b = load_data(DataCfg(name="fashion_mnist", subset=500))
    assert len(b.train_y) == 500 and len(b.val_y) == 12000
    assert (b.in_chans, b.classes, b.input_size, b.flip) == (1, 10, 28, True)
