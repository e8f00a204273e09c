"""`shiftnas data fetch`: downloads from a local HTTP server on 127.0.0.1, checked by SHA-256.

Nothing leaves the machine: the server is `http.server` in a thread on a free
port, proxies are switched off, and the expected hashes are computed here
from the bytes the test serves.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from shiftnas.errors import ConfigError, DataError
from shiftnas.evaluators import fetch as fetch_mod
from shiftnas.evaluators.fetch import fetch, fetch_files
from shiftnas.nas.cli import main

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
# The MD5s the Fashion-MNIST authors publish for their four files (README of
# github.com/zalandoresearch/fashion-mnist).
AUTHORS_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No proxy may carry a request to 127.0.0.1 elsewhere; no user settings leak in."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY", fetch_mod.URL_ENV, fetch_mod.DATA_DIR_ENV):
        monkeypatch.delenv(var, raising=False)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):  # noqa: N802 (the http.server name)
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(folder it serves, its base URL, the list of paths requested)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = type("H", (_Quiet,), {"requests": []})
    srv = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}/", handler.requests
    srv.shutdown()
    srv.server_close()


def _serve(root: Path, files: dict[str, bytes]) -> dict[str, str]:
    for name, data in files.items():
        (root / name).write_bytes(data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FILES = {"a.gz": b"first file\n" * 1000, "b.gz": bytes(range(256)) * 9}


def test_good_files_are_downloaded_once(tmp_path, server):
    root, url, requests = server
    table = _serve(root, FILES)
    dest = tmp_path / "dest"
    log: list[str] = []
    paths = fetch_files("demo", dest, url, table, log=log.append)
    assert paths == [dest / "a.gz", dest / "b.gz"]
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data
    assert sorted(p.name for p in dest.iterdir()) == ["a.gz", "b.gz"]  # no temporary left
    assert requests == ["/a.gz", "/b.gz"]
    fetch_files("demo", dest, url, table, log=log.append)  # present with the right hash
    assert requests == ["/a.gz", "/b.gz"] and "present, SHA-256 checked" in log[-1]
    (dest / "a.gz").write_bytes(b"stale")  # a wrong file is replaced
    fetch_files("demo", dest, url, table)
    assert requests[-1] == "/a.gz" and (dest / "a.gz").read_bytes() == FILES["a.gz"]


def test_a_corrupted_file_is_deleted_and_named(tmp_path, server):
    root, url, _ = server
    table = _serve(root, FILES)
    (root / "b.gz").write_bytes(FILES["b.gz"][:-1] + b"X")  # one byte differs
    actual = hashlib.sha256(FILES["b.gz"][:-1] + b"X").hexdigest()
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as e:
        fetch_files("demo", dest, url, table)
    msg = str(e.value)
    assert f"{url}b.gz has SHA-256 {actual}, expected {table['b.gz']}" in msg
    assert "the download was deleted" in msg
    assert sorted(p.name for p in dest.iterdir()) == ["a.gz"]  # b.gz never under its name


def test_unreachable_server_fails_fast(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/"
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        fetch("fashion_mnist", tmp_path / "dest", url)
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert f"{url}train-images-idx3-ubyte.gz cannot be downloaded" in msg
    assert "sudo apt-get install dataset-fashion-mnist" in msg and "data.path" in msg
    assert list((tmp_path / "dest").iterdir()) == []


def test_a_server_that_never_answers_times_out(tmp_path):
    with socket.socket() as s:  # accepts connections (the backlog) but never replies
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/"
        t0 = time.perf_counter()
        with pytest.raises(DataError, match=r"cannot be downloaded \(no answer within 0.3 s\)"):
            fetch_files("demo", tmp_path / "dest", url, {"a.gz": "0" * 64}, timeout=0.3)
        assert time.perf_counter() - t0 < 5
    assert list((tmp_path / "dest").iterdir()) == []


def test_http_errors_and_bad_urls(tmp_path, server):
    _, url, _ = server
    with pytest.raises(DataError, match=r"missing\.gz answered HTTP 404"):
        fetch_files("demo", tmp_path / "dest", url, {"missing.gz": "0" * 64})
    with pytest.raises(ConfigError, match=r"must start with http://.*got 'ftp:/x'"):
        fetch_files("demo", tmp_path / "dest", "ftp:/x", {"a.gz": "0" * 64})
    with pytest.raises(DataError, match=r"no verified download is built in .*mnist"):
        fetch("mnist", tmp_path / "dest")


def test_cli_uses_the_production_hashes(tmp_path, server, monkeypatch, capsys):
    """Files that are not the authors' are refused; the URL may come from the environment."""
    root, url, requests = server
    _serve(root, {name: b"not the real thing" for name in fetch_mod.FASHION_MNIST_SHA256})
    dest = tmp_path / "dest"
    assert main(["data", "fetch", "fashion_mnist", "--url", url, "--dest", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "SHA-256" in err and fetch_mod.FASHION_MNIST_SHA256["train-images-idx3-ubyte.gz"] in err
    assert "Traceback" not in err and list(dest.iterdir()) == []
    monkeypatch.setenv(fetch_mod.URL_ENV, url)
    monkeypatch.setenv(fetch_mod.DATA_DIR_ENV, str(tmp_path / "data"))
    n = len(requests)
    assert main(["data", "fetch", "fashion_mnist"]) == 2  # default dest, URL from the env
    assert len(requests) == n + 1
    assert list((tmp_path / "data" / "fashion_mnist").iterdir()) == []
    port = _closed_port()
    assert main(["data", "fetch", "fashion_mnist", "--url", f"http://127.0.0.1:{port}/"]) == 2
    assert "cannot be downloaded" in capsys.readouterr().err


def _authors_file(debian_gz: Path, mtime: int) -> bytes:
    """The authors' file rebuilt from Debian's: the same deflate stream, whose gzip header
    strip-nondeterminism reset (mtime 0, no name); put back FNAME and the original mtime."""
    data = debian_gz.read_bytes()
    assert data[:4] == b"\x1f\x8b\x08\x00"  # gzip, deflate, no flags
    name = debian_gz.name.removesuffix(".gz").encode() + b"\0"
    return b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + data[8:10] + name + data[10:]


@pytest.mark.skipif(not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist is not installed")
def test_production_hashes_are_the_authors_files(tmp_path, server, monkeypatch, capsys):
    """Rebuild the authors' files from the Debian package, check them against the authors'
    MD5s, serve them, and fetch them with the built-in SHA-256 table."""
    root, url, _ = server
    for name, md5 in AUTHORS_MD5.items():
        data = _authors_file(DEBIAN / name, 1504176606 if name.startswith("train") else 1504176627)
        assert hashlib.md5(data).hexdigest() == md5
        assert gzip.decompress(data) == gzip.decompress((DEBIAN / name).read_bytes())
        (root / name).write_bytes(data)
    monkeypatch.setenv(fetch_mod.DATA_DIR_ENV, str(tmp_path / "data"))
    monkeypatch.setitem(fetch_mod.DEBIAN_DIRS, "fashion_mnist", tmp_path / "no-debian")
    assert main(["data", "fetch", "fashion_mnist", "--url", url]) == 0
    d = tmp_path / "data" / "fashion_mnist"
    assert sorted(p.name for p in d.iterdir()) == sorted(AUTHORS_MD5)
    assert capsys.readouterr().out.strip().endswith(f"the files are in {d}")
    assert main(["data", "where", "fashion_mnist"]) == 0
    assert str(d) in capsys.readouterr().out
