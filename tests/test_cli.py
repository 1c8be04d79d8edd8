"""`structinit inspect-init` as a user runs it: a real subprocess of the installed entry point."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "structinit.cli"]


def run(*args):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_json_contract_for_the_papers_model():
    out = run("inspect-init", "--model", "vit_tiny_patch2_32", "--init", "impulse", "--filter-size", "3",
              "--pseudo-input", "pe", "--solver", "closed_form", "--target-mass", "0.9", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert isinstance(data["solve_seconds"], float) and data["solve_seconds"] > 0
    assert [b["block"] for b in data["blocks"]] == list(range(12))
    offsets = [h["offset"] for h in data["blocks"][0]["heads"]]
    assert offsets == [[0, 0], [-1, 0], [0, 1]]
    for block in data["blocks"]:  # the forward pass, block 0 on the pseudo input itself
        for head in block["heads"]:
            assert set(head) == {"head", "offset", "target_mass", "argmax_hit"}
    for note in data["notes"]["blocks"]:  # the solve, each block on its own pseudo input
        assert all(abs(m - 0.9) <= 0.05 for m in note["mass"]) and min(note["argmax_hit"]) >= 0.98
        assert note["rank"] == 15 and note["gain"] <= 5 + 1e-9 and note["cond"] > 1
    assert [h["target_mass"] for h in data["blocks"][0]["heads"]] == pytest.approx(
        data["notes"]["blocks"][0]["mass"], abs=1e-3)
    assert [w["block"] for w in data["weights"]] == list(range(12))
    assert all(len(w["wq_norm"]) == len(w["wk_norm"]) == 3 and 0 < min(w["wq_norm"]) for w in data["weights"])
    assert data["weights"][0]["wq_norm"] == pytest.approx(data["notes"]["blocks"][0]["wq_norm"], rel=1e-4)


@pytest.mark.slow
def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "maps.png"
    out = run("inspect-init", "--depth", "2", "--init", "mimetic", "--plot", str(path))
    assert out.returncode == 0, out.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "block head" in out.stdout


@pytest.mark.slow
def test_entry_point_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "structinit")
    out = subprocess.run([exe, "inspect-init", "--depth", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and json.loads(out.stdout)["blocks"][0]["block"] == 0


@pytest.mark.slow
@pytest.mark.cluster
def test_train_end_to_end_with_mlflow_and_rank_on_its_checkpoint(tmp_path):
    """`structinit train` to the end, tracked in MLflow; its checkpoint carries its TrialConfig, so
    `structinit rank --checkpoint` without model flags measures the model that run trained (a
    non-default width and depth here), on the run's dataset. The flags are the fields' dotted names
    and their former dashed ones alike. Every file the run writes stays under its storage folder
    (its run's folder, named as given), the MLflow store and the JSON summary: the tree is walked."""
    import torch
    from mlflow.tracking import MlflowClient

    name = "A.run_named-by+hand=1"  # every kind of character a name may hold
    out = subprocess.run([*CLI, "train", "--dataset", "digits", "--recipe.epochs", "2", "--warmup-epochs", "0",
                          "--set", "recipe.batch_size=32", "--model.embed_dim", "32", "--depth", "1", "--seed", "3",
                          "--name", name, "--storage-path", "store", "--json-out", "summary.json"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    places = (Path("store") / name, Path("mlartifacts"), Path("mlflow.db"), Path("summary.json"))
    assert written and all(any(p == q or q in p.parents for q in places) for p in written), written
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [name]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["name"] == name and summary["checkpoint"].startswith(str(tmp_path / "store" / name))
    assert summary["epochs"] == 2 and summary["final"]["epoch"] == 1
    assert summary["config"]["seed"] == 3 and summary["config"]["model"]["name"] == "vit_nano_patch2_8"
    assert summary["tracking_uri"] == "sqlite:///" + str(tmp_path / "mlflow.db")
    client = MlflowClient(summary["tracking_uri"])
    run_ = client.get_run(summary["mlflow_run_id"])
    assert run_.info.status == "FINISHED"
    assert run_.data.tags["init"] == "impulse" and run_.data.tags["dataset"] == "digits"
    assert run_.data.params["recipe.epochs"] == "2" and run_.data.params["init.filter_size"] == "3"
    assert [m.step for m in client.get_metric_history(run_.info.run_id, "val_top1")] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(run_.info.run_id, "init")}
    assert artifacts == {"init/init_attention.png", "init/init_fidelity.json"}

    state = torch.load(os.path.join(summary["checkpoint"], "state.pt"), weights_only=True)
    assert json.loads(json.dumps(state["config"])) == summary["config"]  # the summary is JSON: tuples are lists
    ranked = run("rank", "--checkpoint", summary["checkpoint"], "--json")
    assert ranked.returncode == 0, ranked.stderr[-2000:]
    m = json.loads(ranked.stdout)
    assert (m["model"], m["dataset"], m["D"], m["heads"]) == ("vit_nano_patch2_8", "digits", 32, 4)
    assert (m["split"], m["images"]) == ("validation", 64)  # the run's held-out images, not its test set


HEAVY = ("torch", "timm", "ray", "mlflow")
PARSE_ONLY = [["--help"], ["train", "--help"], ["inspect-init", "--help"], ["rank", "--help"],
              ["train", "--epochs", "0"], ["train", "--recipe", "fast"], ["train", "--lr", "inf"], ["train", "--recipe.lr", "fast"],
              ["train", "--model.depth", "0"], ["train", "--set", "init.target_mass=abc"],
              ["train", "--address", "nonsense"], ["train", "--address", "127.0.0.1:1"],
              ["inspect-init", "--no-such-flag"], ["inspect-init", "--init.target_mas", "0.5"], ["report", "--help"]]


@pytest.mark.slow
@pytest.mark.parametrize("argv", PARSE_ONLY, ids=" ".join)
def test_the_cli_answers_before_it_loads_the_world(argv):
    """--help and argument errors come before torch, timm, Ray or MLflow are imported (checked in
    the process that answered); the time it took is printed, not asserted (machines differ)."""
    probe = ("import sys, time; t = time.perf_counter()\nfrom structinit.cli import main\ntry:\n    main(sys.argv[1:])\n"
             "except SystemExit as e:\n    code = e.code\nheavy = sorted({m.split('.')[0] for m in sys.modules} & set("
             f"{HEAVY!r}))\nprint(repr((code, heavy, time.perf_counter() - t)), file=sys.stderr)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - start
    *message, result = out.stderr.strip().splitlines()
    code, heavy, inside = eval(result)
    print(f"structinit {' '.join(argv)}: exit {code}, {wall:.2f} s wall ({inside:.3f} s after the interpreter started)")
    assert heavy == [], f"{argv} imported {heavy}"
    assert code == (0 if "--help" in argv else 2), out.stderr
    if "--help" in argv:  # a flag per field, derived from the dataclasses, and still quick
        assert inside < 0.5, f"{argv}: {inside:.2f} s"
    if code:  # one line naming what is wrong
        assert len(message) == 1 and message[0].startswith("structinit") and "error:" in message[0], message


@pytest.mark.slow
def test_python_dash_m_structinit_is_the_cli():
    out = subprocess.run([sys.executable, "-m", "structinit", "train", "--epochs", "0"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and out.stderr.strip() == ("structinit train: error: epochs=0 is not allowed: expected "
                                                          "a positive integer")
    assert "inspect-init" in subprocess.run([sys.executable, "-m", "structinit", "--help"], capture_output=True,
                                            text=True, timeout=60).stdout


@pytest.mark.slow
def test_inspect_init_on_a_dataset_reports_pseudo_and_real_image_fidelity():
    out = run("inspect-init", "--model", "vit_tiny_patch2_32", "--init", "impulse", "--pseudo-input", "data",
              "--dataset", "digits", "--target-mass", "0.5", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["dataset"] == "digits" and [b["block"] for b in data["data"]] == list(range(12))
    assert (data["data_split"], data["data_images"]) == ("validation", 64)  # held out: never test images
    for where in ("blocks", "data"):  # its training batch (the pseudo input), and held-out validation images
        masses = [h["target_mass"] for b in data[where] for h in b["heads"]]
        assert len(masses) == 36 and all(abs(m - 0.5) <= 0.05 for m in masses), (where, masses)
        assert all(0 <= h["argmax_hit"] <= 1 for b in data[where] for h in b["heads"])


CONFIGURED = ("train", "inspect-init", "rank")  # the commands that build a TrialConfig from its fields


def helps() -> dict[str, str]:
    import contextlib
    import io

    from structinit.cli import main

    out = {}
    for command in CONFIGURED:
        text = io.StringIO()
        with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
            main([command, "--help"])
        out[command] = " ".join(text.getvalue().split())  # argparse wraps lines: compare words
    return out


def test_help_lists_every_field_once_with_its_dataclass_default():
    """train, inspect-init and rank --help: every TrialConfig field (model, recipe, init and its
    own) once, by its dotted name, with the dataclass's default (or what the command sets: its
    model, inspect-init's dataset, a recipe's required fields)."""
    import dataclasses

    from structinit.config import vocabulary

    for command, text in helps().items():
        options = text.split("options:", 1)[1]
        for f in vocabulary():
            assert options.count(f"--{f.key} ") + options.count(f"--{f.key},") == 1, (command, f.key)
            entry = options.split(f"--{f.key}", 1)[1].split(" --", 1)[0] if f.default is dataclasses.MISSING else \
                options.split(f"--{f.key}", 1)[1].split("(default: ", 1)[1]
            if f.default is not dataclasses.MISSING and not (command != "train" and f.key in ("dataset",)):
                assert entry.startswith(f"{f.default})"), (command, f.key, entry[:80])


def test_a_new_field_is_a_flag_of_every_command_with_no_other_edit(monkeypatch):
    """A field added to a config dataclass (here a Recipe made at run time with one more) is a
    flag of train, inspect-init and rank, and a --set key of the studies, typed as declared."""
    import dataclasses

    from structinit import config, recipes

    Wider = dataclasses.make_dataclass("Recipe", [("new_knob", float, dataclasses.field(default=0.5))],
                                       bases=(recipes.Recipe,), frozen=True)
    monkeypatch.setattr(config, "Recipe", Wider)  # TrialConfig's annotation "recipe: Recipe" now names it
    config.vocabulary.cache_clear()
    try:
        for command, text in helps().items():
            assert "--recipe.new_knob NUM, --new-knob NUM (default: 0.5)" in text, command
        assert config.parse("recipe.new_knob", "0.7") == 0.7
        with pytest.raises(ValueError, match=r"recipe.new_knob='fast' is not allowed: expected a number"):
            config.parse("recipe.new_knob", "fast")
    finally:
        monkeypatch.undo()
        config.vocabulary.cache_clear()
    assert "recipe.new_knob" not in {f.key for f in config.vocabulary()}


def test_every_name_that_becomes_a_folder_stays_in_it():
    """Whatever name is given (a run's, an experiment's, a study's, an execution's), either it is
    refused in one line or it is one path component: joined to its folder it stays inside it."""
    from structinit.validate import component

    names = ["../../x", "/abs/x", "x/../../y", 'x"y/../z', "..", ".", ".hidden", "-flag", "na\u00efve", "x" * 300,
             "a\tb", "a\nb", "a\x00b", "C:\\x", "~", "run name", "ok_name-1.2+3=4", "", "x" * 100]
    for name in names:
        try:
            component("name", name)
        except ValueError as err:
            assert str(err).startswith(f"name={name!r} is not allowed") and "\n" not in str(err)
            continue
        joined = os.path.realpath(os.path.join("/storage", name))
        assert os.path.dirname(joined) == "/storage" and len(name) <= 100, name
