"""Budget `decomposed`: decomposed networks are a search's first trials, trained from their weights."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch

from shiftnas.errors import ConfigError
from shiftnas.evaluators import DataCfg, load_data
from shiftnas.evaluators.decompose import (
    DecomposeCfg,
    decompose,
    load_decomposed,
    write_decomposed,
)
from shiftnas.nas.budget import budget_from_dict
from shiftnas.nas.commands import run_search
from shiftnas.record import SearchStore, open_run
from shiftnas.searchspace import build_model, decode_net
from tests.nas.test_search import budget_dict
from tests.searchspace.test_spec_functional import randomise


@pytest.fixture(scope="module")
def decomposed(tmp_path_factory):
    """A small plain-basic network with trained-looking weights, decomposed to 2 taps."""
    net = decode_net("cifar-conv3x3-w16-c1-n10-i8|16:basic-s1|16:basic-s2-dconv")
    torch.manual_seed(0)
    model = build_model(net, fuse=False)
    randomise(model, 0)
    data = load_data(DataCfg(name="digits", subset=120))
    d = decompose(net, model.state_dict(), data,
                  DecomposeCfg(to="shift", taps=2, calibrate=100, holdout=50))
    out = tmp_path_factory.mktemp("dec") / "shift-e2"
    write_decomposed(d, out)
    return out, d


def test_decomposed_networks_are_the_first_trials_and_start_from_their_weights(tmp_path,
                                                                                decomposed):
    folder, d = decomposed
    # A learning rate of 1e-9: what the trial keeps is what it started from.
    b = budget_from_dict(budget_dict(tmp_path, trials=2, decomposed=[str(folder)],
                                     train={"epochs": 1, "batch_size": 60, "precise_bn": 0,
                                            "lr": 1e-9}))
    run = open_run(run_search(b))
    first, second = sorted(run.trials, key=lambda t: t.number)
    assert first.arch == d.net.encode() and first.state == "complete"
    assert second.arch != d.net.encode()  # the rest is sampled from the space as usual
    with run.weights_file(first) as w:
        kept = torch.load(w, weights_only=True)
    for k, v in d.state_dict.items():
        if "running" not in k and "num_batches" not in k:
            torch.testing.assert_close(kept[k], v, rtol=1e-5, atol=1e-6, msg=k)
    # Resumed with a larger budget, the folder is not queued again.
    b2 = budget_from_dict(budget_dict(tmp_path, trials=3, decomposed=[str(folder)],
                                      train={"epochs": 1, "batch_size": 60, "precise_bn": 0,
                                             "lr": 1e-9}))
    run = open_run(run_search(b2))
    assert [t.arch for t in run.trials].count(d.net.encode()) == 1 and len(run.trials) == 3


def test_bad_decomposed_folders_are_named(tmp_path, decomposed):
    with pytest.raises(ConfigError, match=r"budget.decomposed\[0\]: .* holds no arch.yaml and no "
                                          r"weights.pt"):
        budget_from_dict(budget_dict(tmp_path, decomposed=[str(tmp_path)]))
    with pytest.raises(ConfigError, match=r"budget.decomposed: must be a list of folders"):
        budget_from_dict(budget_dict(tmp_path, decomposed=str(decomposed[0])))
    # Weights for 10 classes do not fit a search on 4 of them: the launch stops before it
    # writes anything (run_search checks every folder before it opens the study).
    b = budget_from_dict(budget_dict(tmp_path, decomposed=[str(decomposed[0])]))
    four = dataclasses.replace(load_data(DataCfg(name="digits", subset=120)), classes=4)
    with pytest.raises(ConfigError, match=r"fc.weight: \[10, 16\] in the file, \[4, 16\]"):
        load_decomposed(b.decomposed[0], four)


def test_a_folder_is_queued_once_and_a_failed_seed_is_retried_as_itself(tmp_path, decomposed):
    folder, d = str(decomposed[0]), decomposed[1]
    store = SearchStore.open(f"sqlite:///{tmp_path / 's.db'}", "s", directions=["maximize"])
    assert store.enqueue_network(d.net.encode(), folder)
    assert not store.enqueue_network(d.net.encode(), folder)  # once per search
    trial = store.ask()
    assert store.queued_network(trial) == (d.net.encode(), folder)
    store.study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert store.retry_failed() == [trial.number]
    retry = store.ask()
    assert store.queued_network(retry) == (d.net.encode(), folder)
    assert retry.user_attrs["retry_of"] == trial.number
    assert store.queued_network(store.ask()) == (None, None)  # then the sampler draws
