"""Bad input, table-driven: each malformed study flag, preset field, search-space bound, init
parameter, dataset path or cluster setting exits 2 with one line naming the field, the value and
what is allowed, before any cluster work: no Ray session, no MLflow store, no study folder."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDY = str(ROOT / "studies" / "heads_vs_dim.py")

# a study script with broken presets, as a researcher might write one
PRESETS = '''
from functools import partial
from structinit.commands.study import cli
from structinit.config import make
from structinit.spaces import categorical, heads_and_dims
from structinit.study import Study

base = lambda: make("digits", recipe_overrides=dict(epochs=2, warmup_epochs=0))
one = partial(categorical, **{"model.depth": [2]})
PRESETS = {
    "odd_heads": lambda: Study("bad", base(), partial(heads_and_dims, dims=[30, 64], heads=[4])),
    "big_filter": lambda: Study("bad", base(), partial(categorical, **{"init.filter_size": [3, 5]}),
                                grid={"init.filter_size": [3, 5]}),
    "lr_bounds": lambda: Study("bad", base(), partial(categorical, **{"recipe.lr": [1e-3, -1e-3]}),
                               grid={"recipe.lr": [1e-3, -1e-3]}),
    "grace": lambda: Study("bad", base(), one, scheduler="asha", grace_epochs=5),
    "empty_grid": lambda: Study("bad", base(), one, grid={"model.depth": []}),
}
if __name__ == "__main__":
    cli("bad", PRESETS)
'''

#        id                  script   arguments                                              names the field and value
CASES = [
    ("unknown preset", STUDY, ["--preset", "huge"], "preset='huge'"),
    ("seeds not ints", STUDY, ["--seeds", "a,b"], "seeds='a,b'"),
    ("unknown init", STUDY, ["--inits", "impulse,xavier"], "init='xavier'"),
    ("no configs", STUDY, ["--num-configs", "0"], "num_configs=0"),
    ("configs not an int", STUDY, ["--num-configs", "abc"], "--num-configs: invalid int value: 'abc'"),
    ("two gpus", STUDY, ["--gpus-per-trial", "2"], "gpus_per_trial=2"),
    ("set without =", STUDY, ["--set", "noequals"], "--set='noequals'"),
    ("unknown field", STUDY, ["--set", "model.wide=3"], "search field='model.wide'"),
    ("negative lr", STUDY, ["--set", "recipe.lr=-1"], "lr=-1"),
    ("target mass > 1", STUDY, ["--set", "init.target_mass=1.5"], "target_mass=1.5"),
    ("even filter", STUDY, ["--set", "init.filter_size=4"], "filter_size=4"),
    ("preset: heads divide no dim", "presets", ["--preset", "odd_heads"], "heads=[4]"),
    ("preset: filter beyond grid", "presets", ["--preset", "big_filter"], "filter_size=5"),
    ("preset: negative lr bound", "presets", ["--preset", "lr_bounds"], "lr=-0.001"),
    ("preset: grace > epochs", "presets", ["--preset", "grace"], "grace_epochs=5"),
    ("preset: empty grid", "presets", ["--preset", "empty_grid"], "grid={'model.depth': []}"),
    ("unknown dataset", STUDY, ["--dataset", "mnist99"], "dataset='mnist99'"),
    ("missing data root", STUDY, ["--dataset", "cifar10", "--data-root", "/nonexistent"], "data_root='/nonexistent'"),
    ("empty data root", STUDY, ["--dataset", "svhn", "--data-root", "{tmp}/empty"], "data_root='{tmp}/empty'"),
    ("storage is a file", STUDY, ["--storage", "/etc/hostname"], "storage='/etc/hostname'"),
    ("resume nothing", STUDY, ["--resume"], "resume='heads_vs_dim'"),
    ("address", STUDY, ["--address", "nonsense"], "address='nonsense'"),
    ("RAY_ADDRESS", STUDY, ["env:RAY_ADDRESS=somewhere"], "RAY_ADDRESS='somewhere'"),
    ("checkpoint scheme", STUDY, ["--checkpoints", "ftp://bucket/x"], "checkpoints='ftp://bucket/x'"),
    ("gpus without any", STUDY, ["--gpus-per-trial", "1"], "gpus_per_trial=1"),
    ("optuna url", STUDY, ["--optuna-url", "notaurl"], "optuna_url='notaurl'"),
    ("tracking scheme", STUDY, ["--tracking-uri", "foo://x"], "tracking_uri='foo://x'"),
    ("MLflow unreachable", STUDY, ["--tracking-uri", "http://127.0.0.1:9"], "tracking_uri='http://127.0.0.1:9'"),
]


def attempt(case, tmp: Path):
    """Run one case in its own folder with its own Ray temp dir; (process, folder)."""
    name, script, args, _ = case
    folder = tmp / name.replace(" ", "_").replace(":", "").replace(">", "gt")
    (folder / "empty").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "STRUCTINIT_CHECKPOINTS",
                                                            "MLFLOW_TRACKING_URI")}
    env["RAY_TMPDIR"] = str(folder / "ray")  # where a Ray session would leave its files
    argv = []
    for a in args:
        if a.startswith("env:"):
            key, _, value = a[4:].partition("=")
            env[key] = value
        else:
            argv.append(a.replace("{tmp}", str(folder)))
    if script == "presets":
        script = str(folder / "bad_presets.py")
        Path(script).write_text(PRESETS)
    else:
        argv = ["--preset", "smoke", *argv] if "--preset" not in argv else argv
    proc = subprocess.run([sys.executable, script, *argv], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)
    return proc, folder


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case, run two at a time (each is a fresh interpreter importing torch)."""
    tmp = tmp_path_factory.mktemp("bad_input")
    with ThreadPoolExecutor(2) as pool:
        return dict(zip((c[0] for c in CASES), pool.map(lambda c: attempt(c, tmp), CASES)))


def test_the_table_covers_every_kind_of_input():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_no_cluster(case, outcomes):
    proc, folder = outcomes[case[0]]
    needle = case[3].replace("{tmp}", str(folder))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-3000:]
    assert "expected" in lines[0] or "invalid int value" in lines[0]  # ...and what is allowed
    assert not (folder / "ray").exists()  # no Ray session was started
    assert not (folder / "mlflow.db").exists() and not (folder / "runs").exists()  # nothing recorded
