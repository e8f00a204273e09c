"""The installed distribution: one top-level name (`shiftnas`), its data files, its entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the tracked sources (the checkout stays untouched)."""
    src = tmp_path_factory.mktemp("src")
    try:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout to list the sources")
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(out), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("shiftnas-*.whl")
    return whl


def test_wheel_installs_only_the_shiftnas_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"shiftnas"}, sorted(top)
    # The five repository folders are subpackages, with their data files.
    for sub in ("searchspace", "kernels", "evaluators", "nas", "results"):
        assert f"shiftnas/{sub}/__init__.py" in names
    assert "shiftnas/searchspace/spaces/cifar_shift.yaml" in names
    assert "shiftnas/kernels/_cpu_shift.cpp" in names  # the CPU kernel's source, built on first use
    assert "shiftnas/kernels/_ort_shift.cpp" in names  # the ONNX Runtime custom ops' source, too
    assert "shiftnas/errors.py" in names and "shiftnas/config.py" in names
    assert "shiftnas/record/store.py" in names  # the record, a package of the base
    (meta,) = dist_info
    entry = zipfile.ZipFile(wheel).read(f"{meta}/entry_points.txt").decode()
    assert "shiftnas = shiftnas.nas.cli:main" in entry


def test_version_and_lazy_api():
    import shiftnas

    out = subprocess.run([sys.executable, "-c",
                          "import sys, shiftnas; print(shiftnas.__version__); "
                          "print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [shiftnas.__version__, "False"]  # importing the package loads no torch
    assert shiftnas.create_preset("resnet20").encode().startswith("cifar-conv3x3-w16")
    assert issubclass(shiftnas.ConfigError, shiftnas.ShiftNASError)
    with pytest.raises(AttributeError):
        shiftnas.not_a_name  # noqa: B018
