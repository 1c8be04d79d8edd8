"""`structinit inspect-init` as a user runs it: a real subprocess of the installed entry point."""
import json
import os
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "structinit.cli"]


def run(*args):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def test_json_contract_for_the_papers_model():
    out = run("inspect-init", "--model", "vit_tiny_patch2_32", "--init", "impulse", "--filter-size", "3",
              "--pseudo-input", "pe", "--solver", "closed_form", "--target-mass", "0.9", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert isinstance(data["solve_seconds"], float) and data["solve_seconds"] > 0
    assert [b["block"] for b in data["blocks"]] == list(range(12))
    offsets = [h["offset"] for h in data["blocks"][0]["heads"]]
    assert offsets == [[0, 0], [-1, 0], [0, 1]]
    for block in data["blocks"]:
        for head in block["heads"]:
            assert set(head) == {"head", "offset", "target_mass", "argmax_hit"}
            assert abs(head["target_mass"] - 0.9) <= 0.05 and head["argmax_hit"] >= 0.98


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "maps.png"
    out = run("inspect-init", "--depth", "2", "--init", "mimetic", "--plot", str(path))
    assert out.returncode == 0, out.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "block head" in out.stdout


@pytest.mark.parametrize("args,needle", [
    (["--filter-size", "4"], "filter_size=4"),
    (["--filter-size", "19"], "filter_size=19"),
    (["--num-heads", "5"], "num_heads=5"),
    (["--init", "xavier"], "init='xavier'"),
    (["--target-mass", "-0.5"], "target_mass=-0.5"),
    (["--pseudo-input", "noise"], "pseudo_input='noise'"),
    (["--model", "resnet50"], "model='resnet50'"),
    (["--seed", "-1"], "seed=-1"),
])
def test_bad_input_exits_2_with_one_line_naming_the_value(args, needle):
    out = run("inspect-init", "--depth", "1", *args)
    assert out.returncode == 2
    assert needle in out.stderr and "expected" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_entry_point_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "structinit")
    out = subprocess.run([exe, "inspect-init", "--depth", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and json.loads(out.stdout)["blocks"][0]["block"] == 0
