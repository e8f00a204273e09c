"""Reading run directories, --pick, and the results subcommands."""

from __future__ import annotations

import argparse
import json
import sys
import types

import optuna
import pytest

from shiftnas.errors import ConfigError
from shiftnas.record import open_run
from shiftnas.results.commands import register
from shiftnas.results.pareto import parse_pick, select_trial
from shiftnas.searchspace import decode_net

from .fixtures import make_run, synthetic_run

TRIALS = [
    dict(number=0, state="complete", metrics={"accuracy": 0.8, "latency_ms": 2.0, "params": 1e5}),
    dict(number=1, state="complete", metrics={"accuracy": 0.9, "latency_ms": 3.0, "params": 2e5}),
    dict(number=2, state="pruned", metrics={"accuracy": 0.95, "latency_ms": 1.0}),
    dict(number=3, state="infeasible", feasible=False, metrics={"params": 9e6}),
    dict(number=4, state="complete", metrics={"accuracy": 0.85, "latency_ms": 1.5, "params": 3e5}),
]


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="shiftnas")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_open_run_reads_the_storage_not_the_view(tmp_path):
    run_dir = make_run(tmp_path, TRIALS + [dict(number=5, state="failed", reason="boom"),
                                           dict(number=6, state="running")])
    run = open_run(run_dir)
    assert [t.number for t in run.trials] == list(range(7))
    assert [t.state for t in run.trials] == ["complete", "complete", "pruned", "infeasible",
                                             "complete", "failed", "running"]
    assert run.trial(5).reason == "boom" and run.trial(3).feasible is False
    assert [o.name for o in run.objectives] == ["accuracy", "latency_ms"]
    assert str(run.constraints[0]) == "params <= 3000000"
    assert run.column("accuracy") == [0.8, 0.9, 0.95, None, 0.85, None, None]
    assert [t.number for t in run.by_state("complete")] == [0, 1, 4]
    assert [t.number for t in run.candidates()] == [0, 1, 4]
    # The run directory's trials.jsonl is a view for people: the reader never looks at it.
    (run_dir / "trials.jsonl").write_text('{"number": 0, "state": "failed"}\n{"number": 9, "sta')
    assert open_run(run_dir).trial(0).state == "complete"
    with pytest.raises(ConfigError, match="unknown trial state"):
        run.by_state("done")
    with pytest.raises(ConfigError, match="no trial number 7"):
        run.trial(7)
    # The same search read through its storage URL and study name, from anywhere.
    again = open_run(storage=f"sqlite:///{run_dir / 'study.db'}", study="run")
    assert again.trials == run.trials and again.path is None


@pytest.mark.parametrize("breakage, match", [
    ("nodir", "does not exist"),
    ("norun", "has no run.json"),
    ("badjson", "unreadable"),
    ("nostorage", "does not exist"),
    ("nostudy", "has no study 'other'"),
    ("foreign", "was not made by shiftnas"),
])
def test_missing_or_foreign_searches_raise_config_error(tmp_path, breakage, match):
    run_dir = make_run(tmp_path, TRIALS)
    pointer = json.loads((run_dir / "run.json").read_text())
    if breakage == "nodir":
        run_dir = tmp_path / "missing"
    elif breakage == "norun":
        (run_dir / "run.json").unlink()
    elif breakage == "badjson":
        (run_dir / "run.json").write_text("{nope")
    elif breakage == "nostorage":
        (run_dir / "study.db").unlink()
    elif breakage in ("nostudy", "foreign"):
        if breakage == "foreign":
            optuna.create_study(study_name="other", storage=pointer["storage"])
        (run_dir / "run.json").write_text(json.dumps({**pointer, "study": "other"}))
    with pytest.raises(ConfigError, match=match):
        open_run(run_dir)
    assert breakage != "nostorage" or not (run_dir / "study.db").exists()  # never created empty


def test_pick_grammar_and_selection(tmp_path):
    run = open_run(make_run(tmp_path, TRIALS))
    assert parse_pick("max accuracy where latency_ms <= 2 and params<2.5e5") == (
        "max", "accuracy", [("latency_ms", "<=", 2.0), ("params", "<", 2.5e5)])
    assert select_trial(run, "max accuracy").number == 1  # pruned 0.95 does not compete
    assert select_trial(run, "max accuracy where latency_ms <= 2").number == 4
    assert select_trial(run, "min latency_ms where accuracy > 0.8").number == 4
    for bad in ("maximum accuracy", "max accuracy where latency_ms ~ 2",
                "max accuracy where", "max accuracy where latency_ms <= two"):
        with pytest.raises(ConfigError, match="--pick"):
            parse_pick(bad)
    with pytest.raises(ConfigError, match="no feasible complete trial"):
        select_trial(run, "max accuracy where latency_ms < 1")


def test_cli_export_from_run_with_weights(tmp_path, capsys):
    run_dir = make_run(tmp_path, TRIALS, weights={4})
    out = tmp_path / "exp"
    assert _cli("export", str(run_dir), "--pick", "max accuracy where latency_ms <= 2",
                "--out", str(out)) == 0
    assert {p.name for p in out.iterdir()} == {"model.py", "arch.yaml", "weights.pt"}
    assert "trial: 4" in (out / "model.py").read_text()
    assert _cli("export", str(run_dir), "--trial", "1", "--out", str(tmp_path / "e1")) == 0
    assert not (tmp_path / "e1" / "weights.pt").exists()
    with pytest.raises(ConfigError, match="exactly one of --trial"):
        _cli("export", str(run_dir), "--out", str(out))
    with pytest.raises(ConfigError, match="need a search"):
        _cli("export", "resnet20", "--trial", "1", "--out", str(out))
    # The same trial through the storage URL, from a directory that knows nothing of the run.
    assert _cli("export", "--storage", f"sqlite:///{run_dir / 'study.db'}", "--study", "run",
                "--artifacts", str(run_dir / "artifacts"), "--trial", "4",
                "--out", str(tmp_path / "e2")) == 0
    assert (tmp_path / "e2" / "weights.pt").read_bytes() == (out / "weights.pt").read_bytes()


def test_cli_export_preset_string_and_file(tmp_path):
    assert _cli("export", "shiftresnet20_e1", "--out", str(tmp_path / "a")) == 0
    src = (tmp_path / "a" / "model.py").read_text()
    assert "shiftresnet20_e1" in src
    assert _cli("export", str(tmp_path / "a" / "arch.yaml"), "--out", str(tmp_path / "b")) == 0
    arch = decode_net("cifar-conv3x3-w16-c3-n10-i32|16:basic-s1").encode()
    assert _cli("export", arch, "--out", str(tmp_path / "c")) == 0
    assert (tmp_path / "c" / "model.py").is_file()


def test_cli_pareto_table_and_json(tmp_path, capsys):
    run_dir = make_run(tmp_path, TRIALS)
    assert _cli("pareto", str(run_dir)) == 0
    text = capsys.readouterr().out
    assert "hypervolume" in text and "latency_ms" in text
    assert _cli("pareto", str(run_dir), "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["trial"] for r in data["front"]] == [1, 4]  # 4 dominates 0
    assert data["hypervolume"] > 0


def test_cli_dashboard(tmp_path, monkeypatch, capsys):
    run_dir = synthetic_run(tmp_path, 6)
    calls = []
    fake = types.ModuleType("optuna_dashboard")
    fake.run_server = lambda storage, host, port: calls.append((storage, host, port))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "optuna_dashboard", fake)
    assert _cli("dashboard", str(run_dir), "--port", "9999") == 0
    ((storage, host, port),) = calls
    assert storage.url == f"sqlite:///{run_dir / 'study.db'}" and (host, port) == ("127.0.0.1", 9999)
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'shiftnas\[dashboard\]'"):
        _cli("dashboard", str(run_dir))


def test_pick_breaks_ties_towards_the_front(tmp_path):
    trials = [
        dict(number=0, state="complete", metrics={"accuracy": 0.99, "latency_ms": 3.0}),
        dict(number=1, state="complete", metrics={"accuracy": 0.99, "latency_ms": 1.0}),
        dict(number=2, state="complete", metrics={"accuracy": 0.99, "latency_ms": 1.0}),
    ]
    run = open_run(make_run(tmp_path, trials))
    # Trial 0 ties on accuracy but is dominated by 1; 1 and 2 are equal: the lower number wins.
    assert select_trial(run, "max accuracy").number == 1
