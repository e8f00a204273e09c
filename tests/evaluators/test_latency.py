"""Latency: BN folding, timing statistics, the cache, the device lock, the block table."""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import replace

import pytest
import torch
from torch import nn

from shiftnas.config import cfg_from_dict
from shiftnas.errors import ConfigError
from shiftnas.evaluators import LatencyCfg, device_lock, measure_latency
from shiftnas.evaluators.latency import resolve_backend
from shiftnas.evaluators.predictor import BlockLatencyTable
from shiftnas.kernels import ShiftConv1x1
from shiftnas.searchspace import build_model, create_preset, decode_net, fold_bn

FAST = dict(warmup=1, repeats=5)


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


NETS = [
    "cifar-conv3x3-w16-c3-n10-i16|16:csc-fixed-8c-e3-s1|32:csc-fixed-8c-e1-s2-dconv",
    "cifar-conv3x3-w16-c3-n10-i16|16:csc-active-8c-grid-e2-s1|32:csc-sparse-4c-grid-e1-s2-davgpool",
    "cifar-conv3x3_nobn-w16-c3-n10-i16|16:asl_preact-active-uniform-e1-s1|32:asl_preact-fixed-8c-e1-s2-dshift",
    "cifar-conv3x3-w16-c3-n10-i16|32:bottleneck3-fixed-8c-multi-e1-s1|64:bottleneck3-fixed-4c-multi-e0.5-s2-dshift",
    "cifar-conv3x3-w16-c3-n10-i16|16:basic-s1|32:basic-s2-dconv|32:csc-dwconv3x3-e2-s1",
    "imagenet-conv7x7s2_maxpool-w16-c3-n10-i32|32:bottleneck3-fixed-4c-single-e1-s2-davgpool",
]


@pytest.mark.parametrize("arch", NETS, ids=lambda s: s.split("|")[1].split("-")[0].split(":")[1])
def test_fold_bn_keeps_the_function(arch):
    net = decode_net(arch)
    torch.manual_seed(0)
    model = build_model(net)
    _randomise_bn(model)
    model.eval()
    folded = fold_bn(model)
    x = torch.randn(3, net.in_chans, net.input_size, net.input_size)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    # Only pre-activation BNs (asl_preact's bn0 and its head) may remain.
    left = {n.rsplit(".", 1)[-1] for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert left <= {"bn0", "head_norm"}
    if "asl_preact" not in arch:
        assert not left
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched


def test_fold_bn_folds_into_fused_shift_convolutions():
    model = build_model(decode_net(NETS[0]))
    blk = model.stages[0][0]
    assert isinstance(blk.conv2, ShiftConv1x1) and isinstance(blk.shift, nn.Identity)
    folded = fold_bn(model).stages[0][0]
    assert isinstance(folded.conv2, ShiftConv1x1) and folded.conv2.bias is not None
    assert isinstance(folded.bn2, nn.Identity) and isinstance(folded.bn1, nn.Identity)
    assert set(model.state_dict()) == set(build_model(decode_net(NETS[0]), fuse=False).state_dict())


def test_measure_latency_statistics_and_cache(tmp_path):
    net = create_preset("shiftresnet20_e1", input_size=8)
    cfg = LatencyCfg(**FAST, cache=str(tmp_path / "lat.json"))
    threads = torch.get_num_threads()
    r = measure_latency(net, cfg)
    assert torch.get_num_threads() == threads  # restored
    assert not r.cached and r.runs == 5 and r.batch_size == 1 and r.dtype == "float32"
    assert 0 < r.p25_ms <= r.median_ms <= r.p75_ms and r.iqr_ms == pytest.approx(r.p75_ms - r.p25_ms)
    assert r.torch_version == torch.__version__ and r.backend == "eager"
    again = measure_latency(net, cfg)
    assert again.cached and again.median_ms == r.median_ms
    stored = json.loads((tmp_path / "lat.json").read_text())
    assert len(stored) == 1 and net.archid in next(iter(stored))
    other = measure_latency(net, cfg, batch_size=2)
    assert not other.cached and other.batch_size == 2
    # A module built by build_model carries its genome: same cache entry.
    assert measure_latency(build_model(net), cfg).cached


class _MostlySlow(nn.Module):
    """Sleeps 3 ms on three calls of every four: the fastest run and the median are far apart."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls % 4:
            time.sleep(0.003)
        return x


def test_min_statistic_is_the_fastest_run_and_min_time_adds_runs():
    cfg = LatencyCfg(warmup=0, repeats=8, fold_bn=False, lock=None, statistic="min")
    r = measure_latency(_MostlySlow(), cfg, input_shape=(1, 2, 2))
    assert r.runs == 8  # no min_time_s: exactly the repeats
    # 2 of 8 runs do nothing, 6 sleep 3 ms: the minimum is a no-op, the median a sleep.
    assert r.min_ms < 1.0 <= 3.0 <= r.median_ms
    assert r.value("min") == r.min_ms and r.value("median") == r.median_ms
    longer = measure_latency(_MostlySlow(), replace(cfg, min_time_s=0.1), input_shape=(1, 2, 2))
    assert longer.runs > 8  # 8 runs take ~20 ms; runs go on until 0.1 s have passed


def test_min_statistic_remeasures_cache_entries_without_a_minimum(tmp_path):
    net = create_preset("shiftresnet20_e1", input_size=8)
    cache = tmp_path / "lat.json"
    first = measure_latency(net, LatencyCfg(**FAST, cache=str(cache)))
    stored = json.loads(cache.read_text())
    for v in stored.values():  # as written before results had a minimum
        del v["min_ms"]
    cache.write_text(json.dumps(stored))
    assert measure_latency(net, LatencyCfg(**FAST, cache=str(cache))).cached  # median: a hit
    cfg = LatencyCfg(**FAST, cache=str(cache), statistic="min")
    again = measure_latency(net, cfg)
    assert not again.cached and again.min_ms <= again.median_ms
    assert measure_latency(net, cfg).cached and first.min_ms is not None


def test_module_without_genome_needs_a_shape():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    with pytest.raises(ConfigError, match="input_shape"):
        measure_latency(m, LatencyCfg(**FAST))
    r = measure_latency(m, LatencyCfg(**FAST), input_shape=(3, 8, 8))
    assert r.median_ms > 0


def test_device_lock_is_exclusive(tmp_path):
    path = tmp_path / "dev.lock"
    with device_lock("cpu", path):
        fd = os.open(path, os.O_RDWR)  # a second open file description, as another process has
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
    os.close(fd)


def test_default_lock_lives_in_the_cache_dir(tmp_path):
    with device_lock("cpu"):
        pass
    assert (tmp_path / "cache" / "cpu.lock").exists()  # SHIFTNAS_CACHE, set by conftest


def test_block_table_measures_each_part_once(tmp_path):
    a = decode_net("cifar-conv3x3-w16-c3-n10-i8|16:csc-fixed-8c-e1-s1*2|32:csc-fixed-8c-e1-s2-dconv")
    b = decode_net("cifar-conv3x3-w16-c3-n10-i8|16:csc-fixed-8c-e1-s1*2|32:basic-s2-dconv")
    cfg = LatencyCfg(**FAST)
    table = BlockLatencyTable(cfg, path=tmp_path / "blocks.json")
    assert [k for k, _ in table.parts(a)][1] == "block:csc-fixed-8c-e1-s1:16->16"
    pa = table.predict(a)
    assert pa > 0 and table.measured == 4  # stem, the s1 block (twice, measured once), s2, head
    table.predict(b)
    assert table.measured == 5  # only basic-s2 is new
    fresh = BlockLatencyTable(cfg, path=tmp_path / "blocks.json")
    assert fresh.predict(a) == pytest.approx(pa) and fresh.measured == 0
    err = table.predictor_error([a, b])
    assert err["n"] == 2 and err["mean_abs_pct"] >= 0 and 0 <= err["within_10pct"] <= 1
    assert {"archid", "predicted_ms", "measured_ms"} <= set(err["rows"][0])
    # Hand-made measurements 10% and 50% above the prediction: errors 1/11 and 1/3.
    pa, pb = table.predict(a), table.predict(b)
    err = table.predictor_error([a, b], measured=[1.1 * pa, 1.5 * pb])
    assert err["mean_abs_pct"] == pytest.approx(100 * (0.1 / 1.1 + 0.5 / 1.5) / 2)
    assert err["within_10pct"] == 0.5


def test_block_table_calibration_is_the_median_ratio(tmp_path):
    cfg = LatencyCfg(warmup=1, repeats=3, lock=None)
    table = BlockLatencyTable(cfg, path=tmp_path / "blocks.json")
    nets = [create_preset(n, input_size=8) for n in ("resnet20", "shiftresnet20_e1", "shiftresnet20_e3")]
    raw = [table.predict(n) for n in nets]
    measured = [1.1 * raw[0], 1.3 * raw[1], 2.0 * raw[2]]  # ratios 1.1, 1.3, 2.0: median 1.3
    assert table.calibrate(nets, measured) == pytest.approx(1.3)
    assert table.predict(nets[0]) == pytest.approx(1.3 * raw[0])


def test_latencycfg_from_dict_strict():
    c = cfg_from_dict(LatencyCfg, {"batch_size": 8, "repeats": 20}, "latency")
    assert c.batch_size == 8 and c.repeats == 20
    with pytest.raises(ConfigError, match=r"budget\.latency\.repeat: unknown key; allowed"):
        cfg_from_dict(LatencyCfg, {"repeat": 3}, "budget.latency")
    with pytest.raises(ConfigError, match=r"latency\.dtype: must be one of"):
        cfg_from_dict(LatencyCfg, {"dtype": "int8"}, "latency")
    # A list would be accepted and then only its first size measured: one size per search.
    with pytest.raises(ConfigError, match=r"latency\.batch_size: must be one integer >= 1"):
        cfg_from_dict(LatencyCfg, {"batch_size": [1, 8]}, "latency")
    with pytest.raises(ConfigError, match=r"latency\.statistic: must be one of \['median', "
                                          r"'min'\], got 'mean'"):
        cfg_from_dict(LatencyCfg, {"statistic": "mean"}, "latency")
    with pytest.raises(ConfigError, match=r"latency\.min_time_s: must be a number of seconds"):
        cfg_from_dict(LatencyCfg, {"min_time_s": -1}, "latency")
    with pytest.raises(ConfigError, match="cudagraph"):
        measure_latency(create_preset("resnet20", input_size=8), LatencyCfg(backend="cudagraph",
                                                                            **FAST))


def test_auto_backend_is_eager_on_the_cpu_and_the_result_names_what_ran():
    cfg = LatencyCfg(**FAST, lock=None)
    assert cfg.backend == "auto"
    assert resolve_backend(cfg, "cpu").backend == "eager"
    assert resolve_backend(cfg, "cuda").backend == "cudagraph"
    assert resolve_backend(LatencyCfg(backend="compile"), "cuda").backend == "compile"
    r = measure_latency(create_preset("resnet20", input_size=8), cfg)
    assert r.backend == "eager"


@pytest.mark.gpu
@pytest.mark.parametrize("backend,used", [("eager", "eager"), ("cudagraph", "cudagraph"),
                                          ("auto", "cudagraph")])
def test_cuda_latency(backend, used):
    net = create_preset("shiftresnet20_e3")
    r = measure_latency(net, LatencyCfg(backend=backend, dtype="float16", warmup=5, repeats=20),
                        "cuda")
    assert r.median_ms > 0 and r.device_name == torch.cuda.get_device_name()
    assert r.backend == used


@pytest.mark.gpu
def test_on_a_gpu_folded_csc_blocks_are_timed_as_their_fused_kernels(monkeypatch):
    from shiftnas.evaluators.latency import _prepare
    from shiftnas.kernels import CscInference
    from shiftnas.kernels.dispatch import ENV_VAR

    model = build_model(decode_net(NETS[0])).eval()  # csc blocks with fixed shifts
    _randomise_bn(model)
    cfg = LatencyCfg(dtype="float32", lock=None)
    prepared, cl = _prepare(model.cuda(), cfg, torch.device("cuda"))
    assert cl and any(isinstance(m, CscInference) for m in prepared.modules())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        got = prepared(x.cuda().contiguous(memory_format=torch.channels_last)).cpu()
        monkeypatch.setenv(ENV_VAR, "reference")  # the spec's ops, in float64 on the CPU
        want = model.cpu().double()(x.double())
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2)  # TF32 GEMMs


class _HostSync(nn.Module):
    """Reads a value back to the host mid-forward: a CUDA graph cannot capture that."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float(x.abs().max())


@pytest.mark.gpu
def test_a_network_a_cuda_graph_cannot_capture_is_timed_eagerly():
    cfg = LatencyCfg(backend="auto", warmup=2, repeats=5, lock=None)
    with pytest.warns(RuntimeWarning, match="cannot be captured in a CUDA graph"):
        r = measure_latency(_HostSync(), cfg, "cuda", input_shape=(3, 8, 8))
    assert r.backend == "eager" and r.median_ms > 0


def test_onnxruntime_times_the_same_network(tmp_path):
    pytest.importorskip("onnxruntime")
    from shiftnas.evaluators.latency import _prepare, onnxruntime_session

    net = decode_net(NETS[1])  # active and sparse shifts, an avgpool stride
    torch.manual_seed(0)
    model = build_model(net)
    _randomise_bn(model)
    cfg = LatencyCfg(backend="onnxruntime", **FAST, lock=None)
    prepared, _ = _prepare(model, cfg, torch.device("cpu"))
    x = torch.randn(2, 3, 16, 16)
    session = onnxruntime_session(prepared, x, threads=1)
    (out,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref = model.eval()(x)
    torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-4, atol=1e-4)
    r = measure_latency(net, cfg)
    assert r.median_ms > 0 and r.backend == "onnxruntime"
    with pytest.raises(ConfigError, match="dtype: must be float32 with backend onnxruntime"):
        cfg_from_dict(LatencyCfg, {"backend": "onnxruntime", "dtype": "float16"}, "latency")
    with pytest.raises(ConfigError, match="channels_last: cannot be 'on'"):
        cfg_from_dict(LatencyCfg, {"backend": "onnxruntime", "channels_last": "on"}, "latency")


def test_an_8c_shift_exports_to_one_pad_nine_slices_and_a_concat():
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from shiftnas.evaluators.latency import onnxruntime_session
    from shiftnas.kernels import portable

    x = torch.randn(1, 27, 7, 7)
    session = onnxruntime_session(portable.Shift(27, "8c"), x, threads=1)
    (out,) = session.run(None, {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), portable.Shift(27, "8c")(x))
    import io

    from shiftnas.evaluators.onnx_passes import merge_slices

    buf = io.BytesIO()
    torch.onnx.export(portable.Shift(27, "8c"), (x,), buf, dynamo=False, opset_version=17,
                      do_constant_folding=True)
    graph = onnx.load_from_string(buf.getvalue()).graph
    pads = {n.output[0] for n in graph.node if n.op_type == "Pad"}
    data_ops = [n.op_type for n in graph.node if n.op_type in ("Pad", "Slice", "Concat")]
    assert data_ops.count("Slice") == 28  # the exporter: one per axis (+1 building pad widths)
    merged = merge_slices(onnx.load_from_string(buf.getvalue())).graph
    on_data = [n.op_type for n in merged.node if n.op_type == "Slice" and n.input[0] in pads]
    assert len(on_data) == 9  # one Slice per channel group, each over channels, rows, columns
    assert [n.op_type for n in merged.node if n.op_type in ("Pad", "Concat")].count("Pad") == 1
