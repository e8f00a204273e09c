"""Small file helpers every layer shares: an inter-process lock, atomic writes, the cache folder.

A crash or a kill never leaves a half-written file under its final name
(`atomic_write` writes a temporary file in the same folder and renames it),
and a full disk is one `StorageError` naming the path, not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError, StorageError

CACHE_ENV = "SHIFTNAS_CACHE"


def cache_dir() -> Path:
    """`$SHIFTNAS_CACHE`, else `~/.cache/shiftnas`: lock files and default caches live here."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "shiftnas")


@contextlib.contextmanager
def file_lock(path: str | Path, shared: bool = False) -> Iterator[None]:
    """Hold an inter-process `flock` on `path` (created if missing) for the block.

    `shared=True` takes a shared lock (many holders), else an exclusive one.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise ConfigError(f"lock file {p} cannot be created ({exc.strerror or exc}); point "
                          f"${CACHE_ENV} (or the setting that names it) at a writable folder.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def no_space(path: str | Path, exc: OSError, needed: int | None = None) -> StorageError:
    """The one message for a full disk (or quota): the path, the bytes needed and free."""
    where = Path(path)
    try:
        free = shutil.disk_usage(where.parent if not where.is_dir() else where).free
    except OSError:
        free = None
    need = f"{needed:,} bytes needed" if needed is not None else "more space needed"
    have = f", {free:,} bytes free" if free is not None else ""
    return StorageError(f"no space left to write {where} ({need}{have}; {exc.strerror}); free "
                        f"some space or move out_dir, then rerun: finished results are kept and "
                        f"the run resumes.")


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_no_space(exc):
            raise no_space(path, exc, len(raw)) from None
        raise
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write `path` through (by any writer: torch.save, savefig, ...).

    The file appears under its final name only when the block finishes; on an
    error (a full disk included) the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_no_space(exc):
            raise no_space(path, exc) from None  # type: ignore[arg-type]
        raise
