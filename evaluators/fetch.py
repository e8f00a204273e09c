"""Where the IDX data sets live, and `shiftnas data fetch`: a download checked by SHA-256.

`fashion_mnist`, `mnist` and `kmnist` are read from the first of:

1. `data.path` (`--data-path`), when given: it must hold the files;
2. for fashion_mnist, the Debian package's folder (`apt-get install dataset-fashion-mnist`
   puts the four `.gz` files in /usr/share/datasets/fashion-mnist);
3. the folder `shiftnas data fetch NAME` writes to: `$SHIFTNAS_DATA/NAME`, else
   `<cache>/data/NAME` (`$SHIFTNAS_CACHE`, else ~/.cache/shiftnas).

A download goes to a temporary name beside its destination and is renamed
only once its SHA-256 matches, so no partial or unverified file ever carries
a final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from shiftnas.errors import ConfigError, DataError
from shiftnas.files import cache_dir

from ._idx import SPLITS, idx_file

IDX_DATASETS = ("fashion_mnist", "mnist", "kmnist")
DATA_DIR_ENV = "SHIFTNAS_DATA"  # root of the folders `shiftnas data fetch` writes
URL_ENV = "SHIFTNAS_DATA_URL"  # overrides a fetch's base URL (a mirror; tests serve locally)
DEBIAN_DIRS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
DEBIAN_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}
TIMEOUT_S = 10.0  # per connection attempt and per read: an unreachable server fails in seconds

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 of the authors' four files. How they were obtained: the Debian package
# dataset-fashion-mnist (0.0~git20200523.55506a9-1) holds the authors' deflate streams
# under a normalised gzip header (mtime 0, no file name), so its MD5s differ from the
# published ones. Putting the header fields back (FNAME = the file's name; MTIME =
# 1504176606 for train-*, 1504176627 for t10k-*, found by trying the seconds of August
# 2017 until the MD5 matched) rebuilds files whose MD5s are exactly those the authors
# publish (8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...). These are the rebuilt
# files' SHA-256; other public loaders list the same. tests/evaluators/test_fetch.py
# rebuilds the files from the package and fetches them with this table.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
SOURCES = {"fashion_mnist": (FASHION_MNIST_URL, FASHION_MNIST_SHA256)}  # name -> (URL, hashes)


# ----------------------------------------------------------------------------
# Where the files are found
# ----------------------------------------------------------------------------


def data_dir(name: str) -> Path:
    """The folder `shiftnas data fetch NAME` writes to and the loader looks in last."""
    root = os.environ.get(DATA_DIR_ENV)
    return Path(root).expanduser() / name if root else cache_dir() / "data" / name


def _has_train(directory: Path) -> bool:
    return all(idx_file(directory, stem) for stem in SPLITS["train"])


def howto(name: str, fetching: bool = False) -> str:
    """What to do to get `name`'s files: the sentence that ends every not-found message.

    `fetching`: the advice after a failed `shiftnas data fetch` (which it leaves out).
    """
    files = (" and ".join(s + ".gz" for s in SPLITS["train"])
             + " (gzip-compressed or not; the t10k-* test files are not needed)")
    if name in SOURCES and not fetching:
        ways = [f"download it with `shiftnas data fetch {name}`, which checks each file's SHA-256",
                f"set data.path (--data-path) to a folder holding {files}"]
    elif name in SOURCES:
        ways = ["download the files elsewhere and set data.path (--data-path) to their folder"]
    else:
        ways = [f"put {files} in {data_dir(name)}",
                "set data.path (--data-path) to a folder holding them"]
    if name in DEBIAN_PACKAGES:
        ways.insert(0, f"install the Debian/Ubuntu package (`sudo apt-get install "
                       f"{DEBIAN_PACKAGES[name]}`)")
    return ("Instead, " if fetching else "To fix, do one of: ") + "; or ".join(ways) + "."


def locate(name: str, path: str | Path | None = None) -> tuple[Path, str]:
    """The folder `name`'s training files are read from, and where it came from (see above).

    Raises `DataError` when `path` lacks the files or, without `path`, when no
    known folder has them; the message lists where it looked and what to do.
    """
    if path:
        d = Path(path).expanduser()
        if not d.is_dir():
            raise DataError(f"{name}: data.path {d} does not exist or is not a folder. "
                            + howto(name))
        if not _has_train(d):
            missing = [s for s in SPLITS["train"] if idx_file(d, s) is None]
            raise DataError(f"{name}: data.path {d} has no {' or '.join(missing)} (.gz or "
                            f"uncompressed). " + howto(name))
        return d, "data.path"
    looked = []
    if name in DEBIAN_DIRS:
        looked.append(f"{DEBIAN_DIRS[name]} (the Debian package {DEBIAN_PACKAGES[name]})")
        if _has_train(DEBIAN_DIRS[name]):
            return DEBIAN_DIRS[name], f"the Debian package {DEBIAN_PACKAGES[name]}"
    d = data_dir(name)
    role = "where `shiftnas data fetch` writes" if name in SOURCES else "the data folder"
    looked.append(f"{d} ({role}; ${DATA_DIR_ENV} moves it)")
    if _has_train(d):
        return d, role
    raise DataError(f"{name}: no data found: data.path is not set, and {' and '.join(looked)} "
                    f"hold{'s' if len(looked) == 1 else ''} no training files "
                    f"({', '.join(s + '.gz' for s in SPLITS['train'])}). " + howto(name))


# ----------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(name: str, url: str, tmp: Path, timeout: float) -> str:
    """Write `url` to the new file `tmp` (flushed to disk); returns its SHA-256."""
    h = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                while chunk := r.read(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
        except urllib.error.HTTPError as exc:
            raise DataError(f"{name}: {url} answered HTTP {exc.code} ({exc.reason}). "
                            + howto(name, fetching=True)) from None
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError,
                ConnectionError) as exc:
            reason = getattr(exc, "reason", None) or exc
            why = (f"no answer within {timeout:g} s" if isinstance(reason, TimeoutError)
                   else str(reason) or type(exc).__name__)
            raise DataError(f"{name}: {url} cannot be downloaded ({why}). "
                            + howto(name, fetching=True)) from None
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


def fetch_files(name: str, dest: str | Path, base_url: str, sha256: Mapping[str, str], *,
                timeout: float = TIMEOUT_S,
                log: Callable[[str], None] | None = None) -> list[Path]:
    """Download each file of `sha256` (file name -> hex digest) from `base_url` into `dest`.

    A file already in `dest` with the right hash is kept. Each download is
    written to a temporary name in `dest`, checked, then renamed; a wrong hash
    deletes it and raises `DataError` (file, expected and actual hash), as
    does a server that does not answer within `timeout` seconds.
    """
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https", "file"):
        raise ConfigError(f"{name}: the base URL must start with http://, https:// or file:// "
                          f"(--url, ${URL_ENV}), got {base_url!r}.")
    say = log or (lambda _msg: None)
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for fname, want in sha256.items():
        final = dest / fname
        out.append(final)
        if final.is_file() and _sha256(final) == want:
            say(f"{final}: present, SHA-256 checked")
            continue
        url = base_url.rstrip("/") + "/" + fname
        say(f"{final}: downloading {url}")
        tmp = dest / f".{fname}.{os.getpid()}.{secrets.token_hex(4)}.part"
        try:
            got = _download(name, url, tmp, timeout)
            if got != want:
                raise DataError(f"{name}: {url} has SHA-256 {got}, expected {want}; the download "
                                f"was deleted and {final} not written (a proxy or mirror may "
                                f"have altered the file). " + howto(name, fetching=True))
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        say(f"{final}: SHA-256 checked")
    return out


def fetch(name: str, dest: str | Path | None = None, base_url: str | None = None, *,
          timeout: float = TIMEOUT_S, log: Callable[[str], None] | None = None) -> Path:
    """Download `name`'s files with the built-in hashes; returns the folder.

    `dest` defaults to `data_dir(name)` (where the loader looks), `base_url`
    to `$SHIFTNAS_DATA_URL`, else the authors' server.
    """
    if name not in SOURCES:
        raise DataError(f"{name}: no verified download is built in (only for "
                        f"{', '.join(SOURCES)}). " + howto(name))
    url, table = SOURCES[name]
    d = Path(dest).expanduser() if dest else data_dir(name)
    fetch_files(name, d, base_url or os.environ.get(URL_ENV) or url, table, timeout=timeout,
                log=log)
    return d
