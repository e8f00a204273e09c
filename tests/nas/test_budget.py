"""Budget files: every malformed one gets its own clear error and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shiftnas.errors import ConfigError
from shiftnas.nas.budget import budget_from_dict, load_budget, parse_duration
from shiftnas.nas.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GOOD = {"name": "t", "objectives": ["accuracy", "params"], "trials": 3}


def test_examples_parse_and_defaults_are_filled():
    for name in ("quickstart.yaml", "budget-reference.yaml", "cifar10-gpu.yaml"):
        b = load_budget(EXAMPLES / name)
        assert b.to_dict()["name"] == b.name
        assert budget_from_dict(b.to_dict()) == b  # the "as used" form reads back the same
    b = budget_from_dict(GOOD)
    assert b.engine == "optuna" and b.sampler == "tpe" and b.train.epochs >= 1
    assert [o.direction for o in b.objectives] == ["maximize", "minimize"]


@pytest.mark.parametrize("change,match", [
    ({"epochz": 3}, r"budget.epochz: unknown key; allowed: \[.*'train'"),
    ({"name": None}, r"budget.name: .*must be a non-empty name"),
    ({"trials": 0}, r"budget.trials: .*must be an integer >= 1 or null, got 0"),
    ({"trials": "ten"}, r"budget.trials: .*got 'ten'"),
    ({"trials": None}, r"cannot both be null"),
    ({"objectives": []}, r"budget.objectives: must be a non-empty list"),
    ({"objectives": ["accuracy", "speed"]}, r"budget.objectives\[1\].metric: unknown metric 'speed'"),
    ({"objectives": [{"metric": "accuracy", "direction": "up"}]}, r"direction: must be maximize or minimize"),
    ({"objectives": ["accuracy", "accuracy"]}, r"objective 'accuracy' is listed twice"),
    ({"constraints": ["params < lots"]}, r"budget.constraints\[0\]: a constraint is a string 'METRIC OP NUMBER'"),
    ({"constraints": ["params >= 5e5", "params <= 1e5"]}, r"contradict each other"),
    ({"engine": "hyperopt"}, r"budget.engine: .*must be one of \['optuna', 'ray'\], got 'hyperopt'"),
    ({"sampler": "cmaes"}, r"budget.sampler: .*must be one of"),
    ({"time_budget": "ten minutes"}, r"budget.time_budget: must be a positive number of seconds or a duration"),
    ({"train": {"epochs": 0}}, r"budget.train.epochs"),
    ({"train": {"lr": "fast"}}, r"budget.train.lr"),
    ({"data": {"name": "svhn"}}, r"budget.data.name: .*must be one of"),
    ({"data": {"name": "cifar10"}}, r"budget.data.path: .*is required"),
    ({"pruning": {"eta": 1}}, r"budget.pruning.eta: .*must be an integer >= 2"),
    ({"latency": {"repeats": -1}}, r"budget.latency.repeats"),
    ({"storage": "study.db"}, r"budget.storage: must be a storage URL such as"),
    ({"storage": "sqlite:///"}, r"budget.storage: 'sqlite:///' is an in-memory database"),
    ({"storage": "sqlite:///:memory:"}, r"in-memory database"),
    ({"time_budget": float("inf")}, r"budget.time_budget: must be a positive number"),
    ({"time_budget": "0s"}, r"budget.time_budget: must be a positive duration"),
    ({"device": "gpu"}, r"budget.device: must be auto, cpu, cuda or cuda:N"),
    ({"keep_weights": "some"}, r"budget.keep_weights: must be one of \['all', 'front', 'none'\]"),
    ({"stop_after_failures": -1}, r"budget.stop_after_failures: must be an integer >= 0"),
    ({"artifacts": ""}, r"budget.artifacts: must be a folder"),
    ({"space": {"stages": []}}, r"budget.space: budget.space.stages: must be a non-empty list"),
    ({"space": "no/such/space.yaml"}, r"space file 'no/such/space.yaml' does not exist"),
    ({"proxies": ["magic"]}, r"budget.proxies: must be a list of proxy names"),
    ({"workers": 0}, r"budget.workers: .*must be an integer >= 1"),
    ({"objectives": [{"metric": [1]}]}, r"budget.objectives\[0\].metric: must be a metric name, got \[1\]"),
    ({"export": "best accuracy"}, r"budget.export: --pick 'best accuracy'"),
    ({"export": "max speed"}, r"budget.export: unknown metric 'speed'"),
])
def test_each_malformed_budget_has_its_own_error(change, match):
    with pytest.raises(ConfigError, match=match):
        budget_from_dict({**GOOD, **change})


def test_durations():
    assert parse_duration("90s", "x") == 90 and parse_duration("1h30m", "x") == 5400
    assert parse_duration(12, "x") == 12.0


def test_cli_exits_2_with_one_paragraph(tmp_path, capsys):
    bad = tmp_path / "b.yaml"
    bad.write_text(yaml.safe_dump({**GOOD, "sampler": "cmaes"}))
    assert main(["search", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "budget" in err and "sampler" in err and "'cmaes'" in err and "Traceback" not in err
    assert err.strip().count("\n") == 0
    assert main(["search", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    assert main(["search", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_cli_argument_errors_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "b.yaml"
    bad.write_text(yaml.safe_dump({**GOOD, "trials": -3}))
    for args in (["search", str(bad)], ["search", str(bad), "--workers", "zero"],
                 ["show", "nonexistent_net"], ["status", str(tmp_path)]):
        r = subprocess.run([sys.executable, "-m", "shiftnas", *args], capture_output=True, text=True)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.strip(), args


def test_an_unreachable_storage_is_a_clear_error_before_the_run_exists(tmp_path, capsys):
    bad = tmp_path / "b.yaml"
    (tmp_path / "afile").write_text("not a folder")
    bad.write_text(yaml.safe_dump({**GOOD, "out_dir": str(tmp_path / "runs"),
                                   "storage": f"sqlite:///{tmp_path / 'afile' / 'x.db'}"}))
    assert main(["search", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "budget.storage: cannot open the Optuna storage" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "t").exists()


def test_unwritable_paths_exit_2(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["export", "resnet20", "--out", str(tmp_path / "afile")]) == 2
    assert "afile" in capsys.readouterr().err
