"""The shift's ONNX Runtime custom operators (`_ort_shift.cpp`, domain `shiftnas`), built on first use.

`library()` compiles the C++ source into a shared library with the system C++
compiler (`$CXX`, else `c++`; ~1 s), once per machine, ONNX Runtime version and
source, under `cache_dir()/ort_ops/`; later calls load the cached file. Without
a compiler, or when the build fails, it returns None after one warning, and
callers fall back to standard ONNX operators. `register(session_options)` loads
it into an ONNX Runtime session, as a deployment would:

    so = onnxruntime.SessionOptions()
    so.register_custom_ops_library("libshiftnas_ort.so")

The source needs no ONNX Runtime headers (the Python wheel ships none): it
declares the few stable parts of ORT's C ABI it uses (see its header comment).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import time
import warnings
from pathlib import Path

from shiftnas.files import cache_dir, file_lock

from ._autotune import add_build_seconds

SOURCE = Path(__file__).with_name("_ort_shift.cpp")
LIBRARY_NAME = "libshiftnas_ort.so"
DOMAIN = "shiftnas"
CXXFLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC"]  # portable: the AVX2 path is picked at run time


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def build_command(out: str | Path, source: str | Path = SOURCE) -> list[str]:
    """The compiler command that builds the library from `source` into `out`."""
    return [os.environ.get("CXX") or "c++", *CXXFLAGS, str(source), "-o", str(out)]


@functools.cache
def library() -> Path | None:
    """The built custom-op library (building it on the first call), or None with one warning."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    folder = cache_dir() / "ort_ops" / f"ort{_ort_version()}-{platform.machine()}-{digest}"
    path = folder / LIBRARY_NAME
    t0 = time.perf_counter()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with file_lock(folder / "build.lock"):
            if not path.is_file():
                tmp = folder / f".{LIBRARY_NAME}.{os.getpid()}"
                res = subprocess.run(build_command(tmp), capture_output=True, text=True)
                if res.returncode != 0:
                    raise RuntimeError(res.stderr.strip()[-500:] or f"exit code {res.returncode}")
                os.replace(tmp, path)
        return path
    except Exception as exc:  # no compiler, a failed build, a read-only cache
        warnings.warn(f"the shift's ONNX Runtime custom ops could not be built ({type(exc).__name__}: "
                      f"{exc}); ONNX Runtime runs the best standard-ONNX formulation of each shift "
                      f"instead (it needs a C++ compiler: set CXX or install g++)", RuntimeWarning,
                      stacklevel=2)
        return None
    finally:  # reported as compile time by the trial that pays for it
        add_build_seconds(time.perf_counter() - t0)


def available() -> bool:
    """Whether the custom-op library is built (building it on the first call)."""
    return library() is not None


def register(session_options) -> bool:
    """Load the library into `session_options`; False (nothing loaded) when it is unavailable."""
    lib = library()
    if lib is None:
        return False
    session_options.register_custom_ops_library(str(lib))
    return True


DEPLOY_NOTE = """# Running model.onnx in ONNX Runtime

The model uses custom operators of the `shiftnas` domain (the shift, and the shift fused
into the 1x1 convolution after it). Register their library with the session:

    import onnxruntime as ort
    so = ort.SessionOptions()
    so.register_custom_ops_library("libshiftnas_ort.so")
    session = ort.InferenceSession("model.onnx", so)

In C++: `Ort::SessionOptions::RegisterCustomOpsLibrary(ORT_TSTR("libshiftnas_ort.so"))`.
`libshiftnas_ort.so` was built for {machine} (ONNX Runtime >= 1.17); on another machine
rebuild it from the source next to it, which needs only a C++17 compiler:

    {command}

`model-standard.onnx` computes the same function with standard ONNX operators only.
"""


def write_deploy_files(out_dir: str | Path) -> list[Path]:
    """Copy the library, its source and `ORT_CUSTOM_OPS.md` into `out_dir` (nothing when the
    library is unavailable); returns the files written."""
    lib = library()
    if lib is None:
        return []
    out = Path(out_dir)
    files = [out / LIBRARY_NAME, out / "shiftnas_ort_ops.cpp", out / "ORT_CUSTOM_OPS.md"]
    shutil.copyfile(lib, files[0])
    shutil.copyfile(SOURCE, files[1])
    cmd = " ".join(build_command(LIBRARY_NAME, "shiftnas_ort_ops.cpp"))
    files[2].write_text(DEPLOY_NOTE.format(machine=platform.machine(), command=cmd))
    return files
