"""Where the record lives: storage URLs and their rules, the Optuna storage behind a URL, and
the artifact store that holds trained weights.

Storages come from Optuna: SQLite (in write-ahead-log mode) for one worker, Optuna's
journal file for several workers on one machine, any database URL (PostgreSQL is tested)
for several machines. Passwords are never printed or written down (`mask`).
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from shiftnas.errors import ConfigError, StorageError
from shiftnas.files import file_lock

HEARTBEAT_S = 10  # a running trial touches an RDB storage this often
GRACE_S = 60  # after this long without a heartbeat, a trial on another host counts as dead

_PASSWORD = re.compile(r"(://[^:/@]+:)([^@/]*)@")


def mask(url: str) -> str:
    """The URL with its password replaced by `***`, for anything printed or written."""
    return _PASSWORD.sub(r"\1***@", url)


def check_url(url: Any, where: str = "storage") -> str:
    """The rules a storage URL must follow; a break is one `ConfigError`."""
    examples = ("'sqlite:///runs/x.db', 'journal:///runs/x.log', "
                "'postgresql://user@host/db' (password from PGPASSWORD or ~/.pgpass)")
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"{where}: must be a storage URL such as {examples}, got {url!r}.")
    scheme = url.split("://", 1)[0]
    rest = url.split("://", 1)[1]
    if scheme == "journal":
        if not rest.strip("/"):
            raise ConfigError(f"{where}: {url!r} names no journal file; use journal:///abs/path.log "
                              f"or journal://relative/path.log.")
        return url
    if scheme.startswith("sqlite"):
        path = rest[1:] if rest.startswith("/") else rest
        if path in ("", ":memory:") or path.startswith(":memory:"):
            raise ConfigError(f"{where}: {url!r} is an in-memory database: nothing would survive "
                              f"the process, and workers could not share it. Give a file, e.g. "
                              f"'sqlite:///runs/x.db', or null for the run directory's default.")
    return url


def journal_path(url: str) -> Path | None:
    return Path(url[len("journal://"):]) if url.startswith("journal://") else None


def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite"):
        return None
    rest = url.split("://", 1)[1]
    return Path(rest[1:] if rest.startswith("/") else rest)


def absolute_url(url: str) -> str:
    """Relative file paths in a SQLite or journal URL made absolute (workers may start elsewhere)."""
    for prefix, path in (("journal://", journal_path(url)), ("sqlite:///", sqlite_path(url))):
        if path is not None and url.startswith(prefix):
            return f"{prefix}{path.resolve()}" if prefix == "sqlite:///" else \
                f"journal://{path.resolve()}"
    return url


def _driver_hint(url: str, exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if url.startswith("postgresql") and ("psycopg" in text or "DB access module" in text):
        return (" The PostgreSQL driver is missing: pip install 'shiftnas[postgres]' (psycopg 3; "
                "SQLAlchemy maps postgresql:// to it), or use postgresql+psycopg2:// with "
                "psycopg2-binary installed.")
    return ""


def make_storage(url: str, where: str = "storage") -> optuna.storages.BaseStorage:
    """Open (creating the tables if needed) the Optuna storage at `url`.

    SQLite and journal files are created under a file lock beside them, so
    launchers that start at the same moment do not race on the schema; a remote
    database retries its schema creation a few times for the same reason.
    """
    url = check_url(url, where)
    jpath = journal_path(url)
    try:
        if jpath is not None:
            jpath.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(
                str(jpath), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(jpath)))
            return optuna.storages.JournalStorage(backend)
        # Stale trials are failed by `SearchStore.recover`, which also queues their retry.
        kw: dict[str, Any] = dict(heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
        spath = sqlite_path(url)
        if spath is not None:
            spath.parent.mkdir(parents=True, exist_ok=True)
            with file_lock(spath.with_name(f".{spath.name}.lock")), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if not spath.exists():  # a deleted database's log must not replay into a new one
                    for side in ("-wal", "-shm"):
                        spath.with_name(spath.name + side).unlink(missing_ok=True)
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs={"connect_args": {"timeout": 60}}, **kw)
                _sqlite_wal(storage)
                return storage
        for attempt in range(4):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, **kw)
            except Exception as exc:  # a concurrent schema creation: try again shortly
                if attempt == 3 or not _is_race(exc):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except StorageError:
        raise
    except Exception as exc:  # SQLAlchemy's errors for a bad URL, driver or server
        raise StorageError(
            f"{where}: cannot open the Optuna storage {mask(url)!r} ({type(exc).__name__}: "
            f"{mask(' '.join(str(exc).split()))[:300]}); check the URL, its driver and that the "
            f"database is reachable.{_driver_hint(url, exc)}") from None
    raise AssertionError("unreachable")


def _is_race(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("already exists", "duplicate", "unique constraint"))


def _sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    """Write-ahead log, fsync at checkpoints only: an attribute write no longer waits for the
    disk (a cost-only trial's bookkeeping: 185 -> 99 ms on our 2-core VM). A crash of the
    process loses nothing; only a power loss may lose the last commits."""
    from sqlalchemy import event

    def pragmas(conn, _record) -> None:
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # connections opened before the listener get it too



def make_artifact_store(location: str):
    """A file-system artifact store at a path, or S3 (`s3://bucket`) / GCS (`gs://bucket`)."""
    from optuna.artifacts import FileSystemArtifactStore

    if location.startswith(("s3://", "gs://")):
        scheme, bucket = location.split("://", 1)
        if "/" in bucket.strip("/"):
            raise ConfigError(f"artifacts: {location!r}: give the bucket alone ({scheme}://BUCKET);"
                              f" Optuna's artifact stores take no prefix.")
        try:
            if scheme == "s3":
                import boto3
                from optuna.artifacts import Boto3ArtifactStore

                return Boto3ArtifactStore(bucket.strip("/"), client=boto3.client("s3"))
            from google.cloud import storage as gcs  # noqa: F401
            from optuna.artifacts import GCSArtifactStore

            return GCSArtifactStore(bucket.strip("/"))
        except ImportError as exc:
            raise ConfigError(f"artifacts: {location!r} needs {exc.name} (pip install "
                              f"{'boto3' if scheme == 's3' else 'google-cloud-storage'}).") from None
    path = Path(location)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"artifacts: cannot create the artifact folder {path} "
                           f"({exc.strerror}).") from None
    return FileSystemArtifactStore(str(path))
