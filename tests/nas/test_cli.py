"""The foundation commands: presets, show, sample; bad input files exit 2 with one paragraph."""

from __future__ import annotations

import json

import pytest
import yaml

from shiftnas.nas.cli import main
from shiftnas.searchspace import decode_net, load_arch


def test_presets_lists_with_costs(capsys):
    assert main(["presets", "shiftresnet20*"]) == 0
    out = capsys.readouterr().out
    assert "shiftresnet20_e3" in out and "95,642" in out and "resnet56" not in out
    assert main(["presets", "nothing*"]) == 2


def test_show_json_has_the_spec_numbers(capsys):
    assert main(["show", "shiftresnet20_e3", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["params"] == 95_642 and d["macs"] == 16_433_792
    assert d["archid"] == decode_net(d["arch"]).archid
    assert d["traffic_bytes_fused_shift"] < d["traffic_bytes"]
    assert main(["show", "resnet20", "--classes", "100", "--input-size", "64", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["classes"] == 100 and d["input"] == [3, 64, 64]


def test_show_table(capsys):
    assert main(["show", "shiftresnet20_e3", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "stage 2" in out and "16,433,792" in out and "stages.2.2.conv2" in out


def test_sample_writes_loadable_architecture_files(tmp_path, capsys):
    assert main(["sample", "cifar_shift", "--n", "3", "--seed", "4", "--out", str(tmp_path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3  # one path per file
    files = sorted(tmp_path.glob("arch_*.yaml"))
    assert len(files) == 3
    nets = [load_arch(f) for f in files]
    assert len({n.archid for n in nets}) == 3
    assert main(["show", str(files[0]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["archid"] == nets[0].archid
    assert main(["sample", "cifar_shift", "--n", "3", "--seed", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == [n.archid for n in nets]  # seeded: same draws


@pytest.mark.parametrize("content,match", [
    ("arch: [1, 2]\n", "`arch` must be a string"),
    ("archid: abc\n", "mapping with an `arch` string"),
    ("arch: 'cifar-conv3x3-w16-c3-n10-i32|16:csc-fixed-5x5-e1-s1'\n", "5x5 shift needs at least 25"),
    ("arch: 'cifar-conv3x3-w16-c3-n10-i32|16:basic-s1'\narchid: 000000000000\n", "does not match"),
    ("arch: 'cifar-conv3x3-w16-c3-n10-i32|16:basic-s1'\ncolour: red\n", "unknown key 'colour'"),
    ("arch: [unclosed\n", "not valid YAML"),
])
def test_bad_architecture_files(tmp_path, capsys, content, match):
    f = tmp_path / "a.yaml"
    f.write_text(content)
    assert main(["show", str(f)]) == 2
    err = capsys.readouterr().err
    assert match in err and str(f) in err and "Traceback" not in err


def test_bad_space_file(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"stages": [{"depth": 1, "width": 16}], "block": {"kind": ["shift"]}}))
    assert main(["sample", str(f)]) == 2
    assert "block.kind: 'shift' is not a valid kind" in capsys.readouterr().err
