"""A throwaway PostgreSQL server for the tests: Debian's binaries, a temporary cluster, a Unix socket.

PostgreSQL refuses to run as root, so as root the cluster belongs to the
`postgres` system user (which Debian's package creates) and its commands run
through `runuser`. Nothing listens on a network port: clients connect through
the socket in the cluster's folder.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def bindir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, or in Debian's /usr/lib/postgresql/<version>/bin."""
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).resolve().parent  # a symlink into the real bindir
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        raise RuntimeError("PostgreSQL cannot run as root, and runuser is missing")
    return ["runuser", "-u", "postgres", "--"]


@contextlib.contextmanager
def server(db: str = "nas", user: str = "shiftnas") -> Iterator[str]:
    """Start a cluster, create `db`, yield its SQLAlchemy URL (psycopg 3), stop and delete it."""
    bins = bindir()
    if bins is None:
        raise FileNotFoundError("no PostgreSQL server binaries (apt-get install postgresql)")
    run_as = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="shiftnas-pg-"))  # /tmp: readable by the server user
    data = root / "data"
    try:
        if run_as:
            shutil.chown(root, "postgres", "postgres")
        subprocess.run([*run_as, str(bins / "initdb"), "-D", str(data), "-U", user,
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True,
                       capture_output=True)
        opts = f"-k {root} -c listen_addresses='' -c fsync=off -c max_connections=50"
        subprocess.run([*run_as, str(bins / "pg_ctl"), "-D", str(data), "-o", opts, "-w",
                        "-l", str(root / "server.log"), "start"], check=True, capture_output=True)
        try:
            subprocess.run([*run_as, str(bins / "createdb"), "-h", str(root), "-U", user, db],
                           check=True, capture_output=True)
            yield f"postgresql+psycopg://{user}@/{db}?host={root}"
        finally:
            subprocess.run([*run_as, str(bins / "pg_ctl"), "-D", str(data), "-m", "immediate",
                            "stop"], capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
