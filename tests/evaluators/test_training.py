"""Proxy training: accuracy on digits, reproducibility, pruning, divergence, shift groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shiftnas.config import cfg_from_dict
from shiftnas.errors import ConfigError
from shiftnas.evaluators import DataCfg, TrainCfg, load_data, train
from shiftnas.evaluators.training import _normalise_shift_grads, lr_factor
from shiftnas.kernels.modules import shift_parameters
from shiftnas.searchspace import build_model, create_preset


def test_shiftresnet20_learns_digits_reproducibly(digits):
    net = create_preset("shiftresnet20_e3", classes=10, in_chans=1, input_size=8)
    cfg = TrainCfg(epochs=2, batch_size=64, seed=0)
    a = train(net, digits, cfg)
    assert a.status == "ok" and a.reason is None
    assert a.epochs == 2 and len(a.history) == 2 and a.accuracy == a.history[-1]
    assert a.accuracy >= 0.8  # chance is 0.1
    assert a.images_per_s > 0 and a.wall_s > 0
    b = train(net, digits, cfg)
    assert b.history == a.history and b.train_loss == a.train_loss  # same bits


def test_seed_changes_the_run(digits, small_net):
    net = small_net()
    a = train(net, digits, TrainCfg(epochs=1, max_batches_per_epoch=4, seed=0))
    b = train(net, digits, TrainCfg(epochs=1, max_batches_per_epoch=4, seed=1))
    assert a.train_loss != b.train_loss


def test_on_epoch_prunes(digits, small_net):
    calls = []

    def on_epoch(epoch: int, acc: float) -> bool:
        calls.append((epoch, acc))
        return epoch == 2

    r = train(small_net(), digits, TrainCfg(epochs=5, max_batches_per_epoch=2), on_epoch=on_epoch)
    assert r.status == "pruned" and r.epochs == 2 and "epoch 2" in r.reason
    assert [c[0] for c in calls] == [1, 2] and [c[1] for c in calls] == r.history


def test_divergence_is_a_status_not_an_exception(digits, small_net):
    r = train(small_net(), digits, TrainCfg(epochs=2, lr=1e6, warmup=0.0, label_smoothing=0.0))
    assert r.status == "nan" and "diverged" in r.reason
    assert r.epochs < 2


class _Raises(nn.Module):
    def __init__(self, msg: str):
        super().__init__()
        self.lin = nn.Linear(64, 10)
        self.msg = msg

    def forward(self, x):
        raise RuntimeError(self.msg)


def test_out_of_memory_and_errors_are_recorded(digits):
    r = train(_Raises("CUDA out of memory. Tried to allocate 2.00 GiB"), digits, TrainCfg(epochs=1))
    assert r.status == "oom" and "out of memory" in r.reason
    r = train(_Raises("shape mismatch"), digits, TrainCfg(epochs=1))
    assert r.status == "error" and "shape mismatch" in r.reason


def test_shift_parameters_have_their_own_learning_rate(digits, small_net):
    data = load_data(DataCfg(subset=256, augment=False))
    net = small_net("active")
    for mult, moves in ((0.0, False), (1.0, True)):
        torch.manual_seed(0)
        model = build_model(net)
        theta0 = [t.detach().clone() for t in shift_parameters(model)]
        conv0 = model.stem[0].weight.detach().clone()
        train(model, data, TrainCfg(epochs=1, shift_lr_mult=mult, sparse_l1=0.0))
        moved = any(not torch.equal(t0, t) for t0, t in zip(theta0, shift_parameters(model)))
        assert moved is moves
        assert not torch.equal(conv0, model.stem[0].weight)


def test_sparse_l1_pulls_offsets_towards_zero(small_net):
    data = load_data(DataCfg(subset=256, augment=False))
    net = small_net("sparse")
    l1 = {}
    for lam in (0.0, 1.0):
        torch.manual_seed(0)
        model = build_model(net)
        train(model, data, TrainCfg(epochs=1, shift_lr_mult=1.0, sparse_l1=lam))
        l1[lam] = sum(t.abs().sum().item() for t in shift_parameters(model))
    assert l1[1.0] < l1[0.0]


def test_shift_grad_norm_gives_unit_rows():
    p = nn.Parameter(torch.zeros(5, 2))
    p.grad = torch.tensor([[3.0, 4.0], [0.1, 0.0], [-2.0, 2.0], [1e-3, 1e-3], [0.0, -7.0]])
    _normalise_shift_grads([p])
    torch.testing.assert_close(p.grad.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(p.grad[0], torch.tensor([0.6, 0.8]))


def test_schedules():
    oc = TrainCfg(schedule="onecycle", warmup=0.2)
    f = [lr_factor(s, 100, oc) for s in range(100)]
    assert f[0] == pytest.approx(1 / 25) and max(f) == pytest.approx(1.0) and f.index(max(f)) == 20
    assert f[-1] < 0.01
    cos = TrainCfg(schedule="cosine", warmup=0.0)
    g = [lr_factor(s, 100, cos) for s in range(100)]
    assert g[0] == 1.0 and all(a >= b for a, b in zip(g, g[1:])) and g[-1] < 0.01


def test_traincfg_from_dict_strict():
    c = cfg_from_dict(TrainCfg, {"epochs": 3, "lr": "5e-2", "weight_decay": 0}, "train")
    assert c.lr == 0.05 and c.weight_decay == 0.0 and isinstance(c.weight_decay, float)
    with pytest.raises(ConfigError, match=r"budget\.train\.epoch: unknown key; allowed: \["):
        cfg_from_dict(TrainCfg, {"epoch": 3}, "budget.train")
    with pytest.raises(ConfigError, match=r"train\.schedule: must be one of \['onecycle', "
                                          r"'cosine'\], got 'step'"):
        cfg_from_dict(TrainCfg, {"schedule": "step"}, "train")
    with pytest.raises(ConfigError, match=r"train\.lr: must be a finite number > 0, got -1"):
        cfg_from_dict(TrainCfg, {"lr": -1}, "train")
    with pytest.raises(ConfigError, match=r"train\.epochs: must be an integer >= 1, got 2\.5"):
        cfg_from_dict(TrainCfg, {"epochs": 2.5}, "train")
    with pytest.raises(ConfigError, match=r"train\.amp: must be one of"):
        cfg_from_dict(TrainCfg, {"amp": True}, "train")
    assert not math.isnan(TrainCfg().warmup)


@pytest.mark.gpu
def test_cuda_training_with_bf16_and_channels_last(small_net):
    data = load_data(DataCfg(), "cuda")
    r = train(small_net(), data, TrainCfg(epochs=2), device="cuda")
    assert r.status == "ok" and r.accuracy > 0.3
