"""Processes, signals, disks, clusters and the CLI's edges, each with a real subprocess,
a real signal or a real small filesystem."""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shiftnas.errors import ConfigError, ShiftNASError, StorageError
from shiftnas.evaluators.device import DeviceLock
from shiftnas.files import atomic_path, atomic_write
from shiftnas.metrics import fmt_duration
from shiftnas.nas.budget import budget_from_dict
from shiftnas.nas.cli import main
from shiftnas.record import open_run

from .test_search import SPACE, budget_dict

# ----------------------------------------------------------------------------
# Workers follow their parent (F5)
# ----------------------------------------------------------------------------


def _session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(p) for p, s in (line.split() for line in out.splitlines()) if int(s) == sid]


def _gone(sid: int, timeout: float = 30.0) -> bool:
    """True once no process of the session is left (the resource tracker takes a moment)."""
    deadline = time.time() + timeout
    while _session_pids(sid) and time.time() < deadline:
        time.sleep(0.2)
    return not _session_pids(sid)


def _two_worker_search(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(budget_dict(
        tmp_path, trials=40, workers=2, data={"name": "digits", "subset": 600},
        train={"epochs": 4, "batch_size": 60, "precise_bn": 0})))
    run_dir = tmp_path / "runs" / "t"
    proc = subprocess.Popen([sys.executable, "-m", "shiftnas", "search", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        log = run_dir / "log.txt"
        if log.exists() and "worker 1 joined" in log.read_text() and \
                (run_dir / "trials.jsonl").exists():
            return proc, path, run_dir
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the two workers did not start")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_workers_stop_with_their_parent(tmp_path, sig, code):
    proc, path, run_dir = _two_worker_search(tmp_path)
    os.kill(proc.pid, sig)  # the parent alone, as `kill PID` or a batch scheduler does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert _gone(proc.pid)  # no worker left running headless
    if sig == signal.SIGTERM:
        assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    # Resumable: a rerun finishes the search (a smaller budget keeps the test short).
    done = len([t for t in open_run(run_dir).trials if t.state in ("complete", "pruned")])
    assert main(["search", str(path), "--trials", str(done + 1), "--workers", "1"]) == 0
    assert not [t for t in open_run(run_dir).trials if t.state == "running"]


def test_ctrl_c_stops_every_worker_with_one_message(tmp_path):
    proc, _, _ = _two_worker_search(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and err.count("interrupted") == 1, err
    assert _gone(proc.pid)


# ----------------------------------------------------------------------------
# Latency measured on a quiet device (O1)
# ----------------------------------------------------------------------------


def test_a_measurement_waits_for_trainers_and_blocks_new_ones(tmp_path):
    """Trainers share the device; a measurement is exclusive and stops new training meanwhile."""
    path = tmp_path / "cpu.lock"
    events: list[str] = []
    trainer_in, measuring = threading.Event(), threading.Event()

    def trainer(name: str, hold: float) -> None:
        with DeviceLock("cpu", path).shared():
            events.append(f"{name} in")
            trainer_in.set()
            time.sleep(hold)
            events.append(f"{name} out")

    def measurer() -> None:
        with DeviceLock("cpu", path).exclusive():
            measuring.set()
            events.append("measure in")
            time.sleep(0.3)
            events.append("measure out")

    # flock is per open file description, so threads stand in for processes here.
    threads = [threading.Thread(target=trainer, args=("a", 0.6))]
    threads[0].start()
    trainer_in.wait()
    threads.append(threading.Thread(target=measurer))
    threads[1].start()
    time.sleep(0.2)  # the measurement is waiting for trainer a; b arrives now
    threads.append(threading.Thread(target=trainer, args=("b", 0.1)))
    threads[2].start()
    for t in threads:
        t.join(timeout=10)
    assert events == ["a in", "a out", "measure in", "measure out", "b in", "b out"]


def test_a_measurement_waits_for_a_slice_of_training_not_an_epoch(tmp_path):
    """Training lets the shared lock go every half second, so a measurement gets in mid-epoch."""
    from shiftnas.evaluators import DataCfg, TrainCfg, load_data, train
    from shiftnas.searchspace import create_preset

    lock = DeviceLock("cpu", tmp_path / "cpu.lock")
    data = load_data(DataCfg(augment=False))
    net = create_preset("resnet20").for_data(data.in_chans, data.classes, data.input_size)
    cfg = TrainCfg(epochs=1, batch_size=4, precise_bn=0)  # ~360 steps: seconds
    result: dict = {}
    trainer = threading.Thread(target=lambda: result.update(r=train(net, data, cfg, lock=lock)))
    trainer.start()
    fd = os.open(tmp_path / "cpu.lock", os.O_RDWR | os.O_CREAT)
    try:  # wait until the trainer holds the device (its steps have begun)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                time.sleep(0.05)
            except BlockingIOError:
                break
    finally:
        os.close(fd)
    t0 = time.perf_counter()
    with lock.exclusive():
        waited, mid_training = time.perf_counter() - t0, trainer.is_alive()
    trainer.join(timeout=120)
    assert mid_training, "the measurement only got the device after the epoch"
    assert waited < 1.5 and result["r"].status == "ok", waited


# ----------------------------------------------------------------------------
# Ray connection errors (F6)
# ----------------------------------------------------------------------------


def test_an_unreachable_ray_address_fails_in_seconds(tmp_path, capsys):
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(budget_dict(tmp_path, engine="ray", trials=1,
                                               ray={"address": f"127.0.0.1:{port}"})))
    t0 = time.time()
    assert main(["search", str(path)]) == 2
    assert time.time() - t0 < 30
    err = capsys.readouterr().err
    assert f"nothing answers at 127.0.0.1:{port}" in err and "Traceback" not in err


def test_ray_address_from_the_environment_with_num_cpus_is_a_budget_error(tmp_path, capsys,
                                                                          monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6391")
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(budget_dict(tmp_path, engine="ray", trials=1,
                                               ray={"num_cpus": 2})))
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert "budget.ray.num_cpus" in err and "RAY_ADDRESS" in err and "Traceback" not in err


# ----------------------------------------------------------------------------
# A full disk (F7)
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(tmp_path: Path, size: str = "3m"):
    """A size-limited tmpfs (root can mount one), else nothing: the caller falls back."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                        capture_output=True).returncode == 0
    try:
        yield mnt if ok else None
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _no_partial_files(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            assert ".tmp" not in p.name, p
            assert p.stat().st_size > 0 or p.name.endswith((".lock", ".txt")), p


def test_atomic_writes_leave_nothing_behind_on_a_full_disk(tmp_path):
    with small_disk(tmp_path, "1m") as mnt:
        if mnt is None:
            pytest.skip("cannot mount a tmpfs here")
        with pytest.raises(StorageError, match=r"no space left to write .*weights.pt \(2,000,000 "
                                                r"bytes needed"):
            atomic_write(mnt / "weights.pt", b"x" * 2_000_000)
        with pytest.raises(StorageError, match="no space left to write .*pareto.png"):
            with atomic_path(mnt / "pareto.png") as tmp:
                tmp.write_bytes(b"y" * 2_000_000)
        assert list(mnt.iterdir()) == []


def test_a_search_on_a_full_disk_stops_with_one_paragraph_and_resumes(tmp_path):
    with small_disk(tmp_path, "3m") as mnt:
        if mnt is not None:
            out_dir, limit = mnt / "runs", None
        else:  # no mount here: a file-size limit makes big writes fail the same way
            out_dir, limit = tmp_path / "runs", 1_500_000
        path = tmp_path / "b.yaml"
        path.write_text(yaml.safe_dump({**budget_dict(tmp_path, trials=3), "out_dir": str(out_dir)}))

        def cap():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            if limit:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        r = subprocess.run([sys.executable, "-m", "shiftnas", "search", str(path)],
                           capture_output=True, text=True, preexec_fn=cap, timeout=300)
        assert r.returncode == 2, r.stderr[-2000:]
        assert "no space left to write" in r.stderr or "ran out of disk space" in r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("shiftnas search:")]
        assert "Traceback" not in r.stderr and len(errors) == 1, r.stderr  # one paragraph
        _no_partial_files(out_dir)
        if mnt is not None:
            subprocess.run(["mount", "-o", "remount,size=200m", str(mnt)], check=True)
        r = subprocess.run([sys.executable, "-m", "shiftnas", "search", str(path)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        run = open_run(out_dir / "t")
        assert len([t for t in run.trials if t.state == "complete"]) == 3
        assert (out_dir / "t" / "report.md").stat().st_size > 0


# ----------------------------------------------------------------------------
# Data problems found before the run exists (row 26)
# ----------------------------------------------------------------------------


def test_a_bad_data_directory_leaves_no_run_behind(tmp_path, capsys):
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(budget_dict(
        tmp_path, trials=1, objectives=["params", "macs"],
        data={"name": "cifar10", "path": str(tmp_path / "nope")})))
    assert main(["search", str(path)]) == 2
    assert "cifar10 directory" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "t").exists()
    path.write_text(yaml.safe_dump(budget_dict(tmp_path, trials=1, objectives=["params", "macs"])))
    assert main(["search", str(path)]) == 0  # the corrected budget is accepted


# ----------------------------------------------------------------------------
# Values that validate, then crash (F10): a property test over the budget schema
# ----------------------------------------------------------------------------

_values = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.lists(st.integers(-3, 3), max_size=3))
_sections = {"train": ["epochs", "lr", "batch_size", "warmup", "amp", "max_batches_per_epoch"],
             "latency": ["batch_size", "repeats", "threads", "backend", "dtype"],
             "pruning": ["eta", "min_epochs", "enabled"], "data": ["name", "subset", "val_fraction"],
             "ray": ["num_cpus", "address", "cpus_per_trial"]}
_top = ["seed", "trials", "time_budget", "workers", "threads", "population_size", "sampler",
        "engine", "storage", "artifacts", "keep_weights", "stop_after_failures", "export",
        "onnx", "device", "proxies", "constraints", "objectives"]


@st.composite
def budgets(draw) -> dict:
    d: dict = {"name": "h", "trials": 3, "space": SPACE}
    for key in draw(st.lists(st.sampled_from(_top), max_size=4, unique=True)):
        d[key] = draw(_values)
    for sec in draw(st.lists(st.sampled_from(list(_sections)), max_size=2, unique=True)):
        keys = draw(st.lists(st.sampled_from(_sections[sec]), min_size=1, max_size=2, unique=True))
        d[sec] = {k: draw(_values) for k in keys}
    return d


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budgets())
def test_every_budget_either_fails_clearly_or_is_usable(d):
    """A budget is a `ConfigError` or a budget whose values every later step can use."""
    try:
        b = budget_from_dict(d)
    except ConfigError:
        return
    except ShiftNASError as exc:  # noqa: F841
        raise AssertionError(f"not a ConfigError: {exc!r}") from None
    # What the search does with the values before and while running: none may raise.
    b.settings_hash()
    assert fmt_duration(b.time_budget)
    assert b.trials is None or b.trials >= 1
    assert b.time_budget is None or 0 < b.time_budget < float("inf")


# ----------------------------------------------------------------------------
# The CLI's edges (F11, F12, row 41)
# ----------------------------------------------------------------------------


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shiftnas", *args], capture_output=True,
                          text=True, **kw)


def test_cli_argument_edges_are_one_paragraph(tmp_path):
    for args, what in ((["sample", "cifar_shift", "--seed", "-1"], "must be >= 0"),
                       (["dashboard", str(tmp_path), "--port", "99999"], "port number"),
                       (["dashboard", "--storage", f"sqlite:///{tmp_path / 'no.db'}", "--study",
                         "x"], "does not exist")):
        r = _cli(*args)
        assert r.returncode == 2 and what in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "no.db").exists()  # never an empty database
    assert _cli("--version").stdout.startswith("shiftnas ")


def test_output_piped_to_head_exits_quietly():
    r = subprocess.run(f"{sys.executable} -m shiftnas presets | head -1", shell=True,
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("preset") and r.stderr == ""


def test_status_before_the_first_trial_says_it_is_running(tmp_path, capsys):
    from shiftnas.nas.commands import open_search, resolve_storage
    from shiftnas.record import RunDir, SearchStore

    b = budget_from_dict(budget_dict(tmp_path, trials=2))
    view = RunDir(b.run_dir)
    url, art = resolve_storage(b, view)
    open_search(b, url, art, "cpu", view)
    trial = SearchStore.open(url, "t").study.ask()  # a worker has started its first trial
    trial.set_user_attr("worker", "host:1")
    assert main(["status", str(b.run_dir)]) == 0
    assert "running: no trial has finished yet" in capsys.readouterr().out


def test_an_export_replaces_the_whole_set_and_lists_every_file(tmp_path, capsys):
    pytest.importorskip("onnx")
    out = tmp_path / "exp"
    assert main(["export", "shiftresnet20_e1", "--out", str(out), "--onnx"]) == 0
    # Where a shift's fastest formulation on this machine is a custom op, its library, source,
    # note and a standard-ONNX copy come along (which one is fastest is measured here).
    custom = {"model-standard.onnx", "libshiftnas_ort.so", "shiftnas_ort_ops.cpp",
              "ORT_CUSTOM_OPS.md"}
    first = {p.name for p in out.iterdir()}
    assert first - custom == {"model.py", "arch.yaml", "model.onnx"}
    assert not first & custom or first >= custom  # the custom op's files come as a set
    (out / "model.onnx.data").write_text("stale")  # what an older exporter left
    (out / "weights.pt").write_text("stale weights of another architecture")
    assert main(["export", "resnet20", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"model.py", "arch.yaml"}
    listed = capsys.readouterr().out
    assert "model.py" in listed and "arch.yaml" in listed
