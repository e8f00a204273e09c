"""The bounded autotuner: one choice per shape class, persisted per GPU and Triton version, counted.

On the CPU the kernels have one interpreter config each, so the cache logic is
tested directly: candidates are plain functions and the timing function is
injected (it counts its calls), the file lives in a temporary `$SHIFTNAS_CACHE`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from shiftnas.kernels import _autotune as at  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_memory():
    with at.forget_memory():
        yield


def timer(ms: dict[str, float], calls: list[str]):
    """A `bench` that returns `ms[name]` for the candidate named by its function's tag."""

    def bench(fn):
        calls.append(fn.tag)
        return ms[fn.tag]

    return bench


def candidates(*names: str) -> dict:
    out = {}
    for name in names:
        def fn(name=name):
            return name
        fn.tag = name
        out[name] = fn
    return out


def test_m_is_bucketed_to_a_power_of_two_and_the_rest_is_exact():
    assert [at.bucket(m) for m in (0, 1, 2, 3, 1000, 1024, 1025, 200704)] == [0, 1, 2, 4, 1024, 1024,
                                                                               2048, 262144]
    key = at.shape_class("fused_fwd", 250 * 1024, c_in=64, c_out=64, dtype=torch.bfloat16)
    assert key == "fused_fwd|M262144|c_in=64|c_out=64|dtype=bfloat16"
    assert at.shape_class("fused_fwd", 256 * 1024, c_in=64, c_out=64, dtype=torch.bfloat16) == key
    assert at.shape_class("fused_fwd", 256 * 1024, c_in=64, c_out=96, dtype=torch.bfloat16) != key
    assert at.shape_class("fused_fwd", 256 * 1024, c_in=64, c_out=64, dtype=torch.float16) != key


def test_the_fastest_candidate_is_stored_and_reused_without_timing(tmp_path):
    path = at.choice_file("NVIDIA H200", "3.6.0", root=tmp_path)
    assert path == tmp_path / "triton" / "autotune-nvidia-h200-triton3.6.0.json"
    calls: list[str] = []
    bench = timer({"a": 0.30, "b": 0.10, "c": 0.20}, calls)
    store = at.ChoiceFile(path, "NVIDIA H200", "3.6.0")
    key = at.shape_class("op", 3000, c=64)
    assert at.choose(key, candidates("a", "b", "c"), CPU, store=store, bench=bench) == "b"
    assert sorted(calls) == ["a", "b", "c"]
    # Same class (M 3000 and 4096 share the bucket 4096): this process remembers it.
    key2 = at.shape_class("op", 4096, c=64)
    assert key2 == key
    assert at.choose(key2, candidates("a", "b", "c"), CPU, store=store, bench=bench) == "b"
    assert len(calls) == 3
    data = json.loads(path.read_text())
    assert data["gpu"] == "NVIDIA H200" and data["triton"] == "3.6.0"
    assert data["entries"][key]["choice"] == "b"
    assert data["entries"][key]["ms"] == {"a": 0.3, "b": 0.1, "c": 0.2}
    # Another trial (a fresh process's memory, a fresh file object) reads the choice, times nothing.
    with at.forget_memory():
        reused = at.stats().reused
        fresh = at.ChoiceFile(path)
        assert at.choose(key, candidates("a", "b", "c"), CPU, store=fresh, bench=bench) == "b"
        assert len(calls) == 3 and at.stats().reused == reused + 1
    # A choice that is no longer a candidate (the config list changed) is tuned again.
    with at.forget_memory():
        assert at.choose(key, candidates("a", "c"), CPU, store=at.ChoiceFile(path), bench=bench) == "c"
        assert calls[3:] == ["a", "c"]


def test_a_failing_candidate_is_skipped_and_recorded(tmp_path):
    store = at.ChoiceFile(tmp_path / "c.json")

    def bench(fn):
        if fn.tag == "big":
            raise RuntimeError("out of resources: shared memory")
        return 1.0

    assert at.choose("k", candidates("big", "small"), CPU, store=store, bench=bench) == "small"
    entry = json.loads((tmp_path / "c.json").read_text())["entries"]["k"]
    assert entry["choice"] == "small" and "shared memory" in entry["errors"]["big"]
    with pytest.raises(RuntimeError, match="every candidate failed"):
        at.choose("k2", {"big": candidates("big")["big"], "big2": candidates("big")["big"]}, CPU,
                  store=store, bench=bench)


def test_without_a_store_or_on_the_cpu_the_first_candidate_runs_untimed():
    calls: list[str] = []
    assert at.choose("k", candidates("first", "second"), CPU) == "first"
    assert at.choose("k", candidates("only"), CPU, bench=timer({}, calls)) == "only"
    assert calls == []


def test_tuning_time_is_counted_and_reported(tmp_path):
    store = at.ChoiceFile(tmp_path / "c.json")

    def slow_bench(fn):
        time.sleep(0.05)
        return 1.0

    before = at.stats()
    with at.CompileTimer() as t:
        at.choose("slow", candidates("a", "b"), CPU, store=store, bench=slow_bench)
    assert t.seconds >= 0.1
    assert at.compile_seconds() - before.total_s >= 0.1
    after = at.stats()
    assert after.tuned == before.tuned + 1 and after.autotune_s - before.autotune_s >= 0.1
    # Nothing new inside a second timer: the choice is remembered.
    with at.CompileTimer() as again:
        at.choose("slow", candidates("a", "b"), CPU, store=store, bench=slow_bench)
    assert again.seconds == 0.0


def test_writers_merge_and_a_crash_leaves_no_partial_file(tmp_path):
    path = tmp_path / "c.json"
    one, two = at.ChoiceFile(path), at.ChoiceFile(path)
    one.get("x")  # both read the (empty) file first, as two workers would
    two.get("x")
    one.put("a", {"choice": "p"})
    two.put("b", {"choice": "q"})  # must keep the entry `one` wrote meanwhile
    assert set(json.loads(path.read_text())["entries"]) == {"a", "b"}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    path.write_text("{ half a file")  # unreadable: ignored, tuned again, rewritten whole
    three = at.ChoiceFile(path)
    assert three.get("a") is None
    three.put("c", {"choice": "r"})
    assert json.loads(path.read_text())["entries"] == {"c": {"choice": "r"}}


def test_choices_persist_across_processes(tmp_path):
    """Two worker processes: the first tunes and writes, the second only reads."""
    script = textwrap.dedent('''
        import sys, torch
        from shiftnas.kernels import _autotune as at
        calls = []
        def bench(fn):
            calls.append(fn.__name__)
            return {"fast": 1.0, "slow": 2.0}[fn.__name__]
        def fast(): pass
        def slow(): pass
        store = at.ChoiceFile(at.choice_file("Test GPU", "9.9"), "Test GPU", "9.9")
        key = at.shape_class("op", int(sys.argv[1]), c=64)
        print(at.choose(key, {"slow": slow, "fast": fast}, torch.device("cpu"), store=store, bench=bench),
              len(calls))
    ''')
    env = {**os.environ, "SHIFTNAS_CACHE": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    first = subprocess.run([sys.executable, "-c", script, "1000"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.split() == ["fast", "2"]
    second = subprocess.run([sys.executable, "-c", script, "1020"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.split() == ["fast", "0"]  # same class (M 1000 and 1020 -> 1024): no timing
    assert (tmp_path / "triton" / "autotune-test-gpu-triton9.9.json").exists()


def test_launches_that_compile_are_counted():
    """`launch` counts a launch whose kernel cache grew (a stand-in kernel records its calls)."""

    class Kernel:
        def __init__(self):
            self.device_caches = {0: ({}, None)}

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                cache = self.device_caches[0][0]
                if kwargs["key"] not in cache:
                    time.sleep(0.03)  # "compiling"
                    cache[kwargs["key"]] = True
            return run

    k = Kernel()
    interpret, at.INTERPRET = at.INTERPRET, False
    try:
        before = at.stats()
        at.launch(k, (1,), key="a")
        at.launch(k, (1,), key="a")
        at.launch(k, (1,), key="b")
        after = at.stats()
    finally:
        at.INTERPRET = interpret
    assert after.compiles - before.compiles == 2
    assert 0.06 <= after.compile_s - before.compile_s < 1.0


def test_tuning_inside_tuning_is_counted_once(tmp_path):
    """A candidate that tunes what it launches (the two-pass form's shift) adds no seconds twice."""
    store = at.ChoiceFile(tmp_path / "c.json")

    def bench(fn):
        fn()
        time.sleep(0.02)
        return 1.0

    def outer_a():
        at.choose("inner", candidates("x", "y"), CPU, store=store, bench=bench)
    outer_a.tag = "a"
    before = at.stats().autotune_s
    t0 = time.perf_counter()
    at.choose("outer", {"a": outer_a, "b": candidates("b")["b"]}, CPU, store=store, bench=bench)
    wall = time.perf_counter() - t0
    assert at.stats().autotune_s - before <= wall + 1e-3
    assert at._tuning == 0
