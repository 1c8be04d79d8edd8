"""Bad input, table-driven, at every entry point (the study scripts and each `structinit` command):
each malformed flag, preset field, search-space bound, init parameter, dataset path or split,
cluster setting, or damaged record (a truncated Parquet table, a database that is not one, a file
that is not a checkpoint) exits 2 with one line naming the field, the value and what is allowed,
before any cluster work: no Ray session, no MLflow store, no study folder, nothing written or changed."""
import contextlib
import io
import json
import os
import runpy
import sys
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)  # the whole table runs in one fixture
ROOT = Path(__file__).resolve().parents[1]
STUDY = str(ROOT / "studies" / "heads_vs_dim.py")

# a study script with broken presets, as a researcher might write one
PRESETS = '''
import json
import os
from functools import partial
from structinit.commands.study import cli
from structinit.config import make
from structinit.study import Study, categorical, heads_and_dims

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
    "typo_grid": lambda: Study("bad", base(), partial(categorical, **{"fractoin": [0.5]}), grid={"fractoin": [0.5]}),
    "typo_space": lambda: Study("bad", base(), partial(categorical, **{"model.widht": [2]}), num_configs=1),
    "grid": lambda: Study("bad", base(), partial(categorical, **GRID), grid=GRID),  # GRID: the environment's
}
GRID = json.loads(os.environ.get("GRID", "{}"))
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
    ("set: a word for an integer", STUDY, ["--set", "model.depth=abc"], ("model.depth='abc'", "an integer")),
    ("set: a word for a number", STUDY, ["--set", "recipe.lr=fast"], ("recipe.lr='fast'", "a number")),
    ("set: a fraction for an integer", STUDY, ["--set", "model.depth=2.5"], ("model.depth=2.5", "an integer")),
    ("set: a word for true or false", STUDY, ["--set", "recipe.amp=yes"], ("recipe.amp='yes'", "true or false")),
    ("preset: heads divide no dim", "presets", ["--preset", "odd_heads"], "heads=[4]"),
    ("preset: filter beyond grid", "presets", ["--preset", "big_filter"], "filter_size=5"),
    ("preset: negative lr bound", "presets", ["--preset", "lr_bounds"], "lr=-0.001"),
    ("preset: grace > epochs", "presets", ["--preset", "grace"], "grace_epochs=5"),
    ("unknown scheduler", STUDY, ["--scheduler", "hyperband"], "scheduler='hyperband'"),
    ("reduction factor 1", STUDY, ["--scheduler", "grouped", "--reduction-factor", "1"], "reduction_factor=1"),
    ("grace beyond the epochs", STUDY, ["--scheduler", "grouped", "--grace-epochs", "5"], "grace_epochs=5"),
    ("objective not a kind", STUDY, ["--objective", "gap:impulse"], "objective='gap:impulse'"),
    ("objective names an init not run", STUDY, ["--objective", "gap:impulse-torch_default"],
     ("objective='gap:impulse-torch_default'", "naming inits of this study")),
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
    ("nothing at the address", STUDY, ["--address", "127.0.0.1:1"], "address='127.0.0.1:1'"),
    ("a silent server at the address", STUDY, ["--address", "{silent}"], ("address='{silent}'", "Ray GCS")),
    ("a foreign server at RAY_ADDRESS", STUDY, ["env:RAY_ADDRESS={greeter}"], ("RAY_ADDRESS='{greeter}'", "Ray GCS")),
    ("empty seeds", STUDY, ["--seeds", ""], "seeds=''"),
    ("init twice", STUDY, ["--inits", "impulse,impulse"], "inits=('impulse', 'impulse')"),
    ("no validation split", STUDY, ["--set", "val_fraction=0"], "val_fraction=0"),
    ("no evaluation batch", STUDY, ["--set", "eval_batch_size=0"], "eval_batch_size=0"),
    ("damaged optuna.db", STUDY, ["--storage", "{tmp}/study"], "optuna storage='{tmp}/study/heads_vs_dim/optuna.db'"),
    ("train: infinite lr", "cli", ["train", "--lr", "inf"], "lr=inf"),  # any float field (validate.finite)
    ("train: fraction empties the classes", "cli", ["train", "--fraction", "1e-9"], "fraction=1e-09"),
    ("train: mixup batch beyond the data", "cli", ["train", "--recipe", "followup_small", "--batch-size", "1000"],
     "batch_size=1000"),
    ("train: missing data root", "cli", ["train", "--dataset", "cifar10", "--data-root", "/nonexistent/cifar"],
     "data_root='/nonexistent/cifar'"),
    ("train: no data root", "cli", ["train", "--dataset", "mnist"], "data_root=None"),
    ("train: no data", "cli", ["train", "--fraction", "0"], "fraction=0.0"),
    ("train: batch not divisible", "cli", ["train", "--workers", "3", "--batch-size", "64"], "batch_size=64"),
    ("train: unknown recipe", "cli", ["train", "--recipe", "fast"], "recipe='fast'"),
    ("train: no epochs", "cli", ["train", "--epochs", "0"], "epochs=0"),
    ("train: filter beyond the grid", "cli", ["train", "--filter-size", "5"], "filter_size=5"),  # 4x4 digits grid
    ("train: address", "cli", ["train", "--address", "nonsense"], "address='nonsense'"),
    ("train: nothing at the address", "cli", ["train", "--address", "127.0.0.1:1"], "address='127.0.0.1:1'"),
    ("train: a foreign server at the address", "cli", ["train", "--address", "{greeter}"],
     ("address='{greeter}'", "Ray GCS")),
    ("train: tracking scheme", "cli", ["train", "--tracking-uri", "foo://x"], "tracking_uri='foo://x'"),
    ("train: no data images", "cli", ["train", "--pseudo-input", "data", "--data-images", "0"], "data_images=0"),
    ("inspect-init: data without a dataset", "cli", ["inspect-init", "--pseudo-input", "data"], "dataset=None"),
    ("inspect-init: data by gradient", "cli", ["inspect-init", "--dataset", "digits", "--pseudo-input", "data",
                                               "--solver", "gradient", "--target-mass", "none"], "pseudo_input='data'"),
    ("inspect-init: unknown dataset", "cli", ["inspect-init", "--dataset", "mnist99"], "dataset='mnist99'"),
    ("inspect-init: even filter", "cli", ["inspect-init", "--depth", "1", "--filter-size", "4"], "filter_size=4"),
    ("inspect-init: filter beyond the grid", "cli", ["inspect-init", "--depth", "1", "--filter-size", "19"],
     "filter_size=19"),
    ("inspect-init: heads divide no dim", "cli", ["inspect-init", "--depth", "1", "--num-heads", "5"], "num_heads=5"),
    ("inspect-init: unknown init", "cli", ["inspect-init", "--depth", "1", "--init", "xavier"], "init='xavier'"),
    ("inspect-init: negative target mass", "cli", ["inspect-init", "--depth", "1", "--target-mass", "-0.5"],
     "target_mass=-0.5"),
    ("inspect-init: unknown pseudo input", "cli", ["inspect-init", "--depth", "1", "--pseudo-input", "noise"],
     "pseudo_input='noise'"),
    ("inspect-init: not a ViT", "cli", ["inspect-init", "--depth", "1", "--model", "resnet50"], "model='resnet50'"),
    ("inspect-init: negative seed", "cli", ["inspect-init", "--depth", "1", "--seed", "-1"], "seed=-1"),
    ("rank: unknown model", "cli", ["rank", "--model", "nope"], "model='nope'"),
    ("rank: missing data root", "cli", ["rank", "--dataset", "cifar10", "--data-root", "/nonexistent"],
     "data_root='/nonexistent'"),
    ("rank: no such checkpoint", "cli", ["rank", "--checkpoint", "/nonexistent/state.pt"], "/nonexistent/state.pt"),
    ("rank: impulse on a ConvMixer", "cli", ["rank", "--model", "convmixer_64_4_p1", "--init", "impulse"],
     "a timm VisionTransformer for init='impulse'"),
    ("rank: not a checkpoint", "cli", ["rank", "--checkpoint", "{tmp}/text.pt"], "checkpoint='{tmp}/text.pt'"),
    ("rank: no model in it", "cli", ["rank", "--checkpoint", "{tmp}/bare.pt"], "checkpoint='{tmp}/bare.pt'"),
    ("rank: another geometry", "cli", ["rank", "--checkpoint", "{tmp}/small", "--model", "vit_nano_patch2_8"],
     ("checkpoint='{tmp}/small'", "pos_embed (1, 16, 32) vs (1, 16, 64)", "missing: blocks.1.")),
    ("report: damaged optuna.db", "cli", ["report", "s", "--storage", "{tmp}/study"],
     "optuna storage='{tmp}/study/s/optuna.db'"),
    ("report: MLflow unreachable", "cli", ["report", "s", "--storage", "{tmp}/study", "--tracking-uri",
                                           "http://127.0.0.1:9"], "tracking_uri='http://127.0.0.1:9'"),
    ("report: truncated Parquet", "cli", ["report", "s", "--storage", "{tmp}/study"],
     "results file='{tmp}/study/s/results/trials/s-1.parquet'"),
    ("report: broken report spec", "cli", ["report", "s", "--storage", "{tmp}/study"],
     "report spec='{tmp}/study/s/report_spec.json'"),
    ("report: damaged mlflow.db", "cli", ["report", "s", "--storage", "{tmp}/study", "--tracking-uri",
                                          "sqlite:///{tmp}/store/mlflow.db"], "tracking store='{tmp}/store/mlflow.db'"),
    ("rank: truncated checkpoint", "cli", ["rank", "--checkpoint", "{tmp}/small"], "checkpoint='{tmp}/small/state.pt'"),
    ("sync: truncated Parquet", "cli", ["sync", "s", "--storage", "{tmp}/study"],
     "results file='{tmp}/study/s/results/history/s-1.parquet'"),
    ("sync: damaged mlflow.db", "cli", ["sync", "s", "--storage", "{tmp}/study", "--tracking-uri",
                                        "sqlite:///{tmp}/store/mlflow.db"], "tracking store='{tmp}/store/mlflow.db'"),
    # issue 27: each a case a new user met, where validation was written per case rather than once
    ("inspect-init: plot in a missing folder", "cli", ["inspect-init", "--depth", "1", "--plot", "{tmp}/nope/x.png"],
     "plot='{tmp}/nope/x.png'"),
    ("inspect-init: plot under a file", "cli", ["inspect-init", "--depth", "1", "--plot", "{tmp}/afile/x.png"],
     "plot='{tmp}/afile/x.png'"),
    ("inspect-init: a model beyond memory", "cli", ["inspect-init", "--model", "vit_tiny_patch2_32", "--embed-dim",
                                                    "3000000", "--num-heads", "3"], ("embed_dim=3000000", "memory")),
    ("inspect-init: a ConvMixer", "cli", ["inspect-init", "--model", "convmixer_64_4_p1", "--init", "learned"],
     "model='convmixer_64_4_p1'"),
    ("inspect-init: unknown flag", "cli", ["inspect-init", "--init.target_mas", "0.5"],
     ("--init.target_mas", "nearest: --init.target_mass")),
    ("train: a name that walks out of its folder", "cli", ["train", "--name", 'x"y/../z'], """name='x"y/../z'"""),
    ("train: a name two folders up", "cli", ["train", "--name", "../../x"], "name='../../x'"),
    ("train: an absolute name", "cli", ["train", "--name", "/tmp/x"], "name='/tmp/x'"),
    ("train: a non-ASCII name", "cli", ["train", "--name", "na\u00efve"], "name='na\u00efve'"),
    ("train: a name of 300 characters", "cli", ["train", "--name", "x" * 300], "name='xxxx"),
    ("train: a name with a control character", "cli", ["train", "--name", "a\tb"], "name='a\\tb'"),
    ("train: an experiment outside its folder", "cli", ["train", "--experiment", "../x"], "experiment='../x'"),
    ("train: storage path under a file", "cli", ["train", "--storage-path", "{tmp}/afile/sub"],
     "storage_path='{tmp}/afile/sub'"),
    ("train: json in a missing folder", "cli", ["train", "--json-out", "{tmp}/nope/x.json"],
     "json_out='{tmp}/nope/x.json'"),
    ("train: json onto a folder", "cli", ["train", "--json-out", "{tmp}/empty"], "json_out='{tmp}/empty'"),
    ("train: tracking store in a read-only folder", "cli", ["train", "--tracking-uri", "sqlite:///{tmp}/ro/mlflow.db"],
     ("tracking_uri=", "{tmp}/ro", "read-only")),
    ("train: a seed beyond 64 bits", "cli", ["train", "--seed", "99999999999999999999"], "seed=99999999999999999999"),
    ("train: a seed beyond NumPy's", "cli", ["train", "--seed", str(2 ** 32)], f"seed={2 ** 32}"),
    ("train: ViT-B/16 on 8-pixel digits", "cli", ["train", "--model", "vit_base_patch16_224"], "patch_size=16"),
    ("train: nccl without a GPU", "cli", ["train", "--set", "backend=nccl", "--workers", "2"], "backend='nccl'"),
    ("train: gpu without one", "cli", ["train", "--gpu"], "gpu=True"),
    ("train: more CPUs than the machine", "cli", ["train", "--workers", "2", "--cpus-per-worker",
                                                  str(os.cpu_count() or 1)], ("workers=2", "CPUs")),
    ("train: storage path empty", "cli", ["train", "--storage-path", ""], "storage_path=''"),
    ("train: labels beyond the classes", "cli", ["train", "--dataset", "cifar10", "--data-root", "{tmp}/cifar",
                                                 "--no-verify"], ("data_root='{tmp}/cifar'", "class indices")),
    ("train: --set of an unknown field", "cli", ["train", "--set", "model.wide=3"], ("model.wide", "nearest")),
    ("rank: no images", "cli", ["rank", "--images", "0"], "images=0"),
    ("rank: rtol not a number", "cli", ["rank", "--rtol", "nan"], "rtol=nan"),
    ("report: a study outside the storage", "cli", ["report", "../x", "--storage", "{tmp}/study"], "study='../x'"),
    ("report: an execution outside the results", "cli", ["report", "s", "--storage", "{tmp}/study", "--execution",
                                                         "../../x"], "execution='../../x'"),
    ("report: optuna url not a url", "cli", ["report", "s", "--storage", "{tmp}/study", "--optuna-url", "notaurl"],
     "optuna_url='notaurl'"),
    ("sync: a study outside the storage", "cli", ["sync", "../x", "--storage", "{tmp}/study"], "study='../x'"),
    ("fetch: data root under a file", "cli", ["fetch", "cifar10", "--data-root", "{tmp}/afile/sub"],
     "data_root='{tmp}/afile/sub'"),
    ("search seed below Optuna's", STUDY, ["--search-seed", "-1"], "search_seed=-1"),
    ("search seed beyond Optuna's", STUDY, ["--search-seed", str(2 ** 32)], f"search_seed={2 ** 32}"),
    ("storage under a file", STUDY, ["--storage", "{tmp}/afile/sub"], "storage='{tmp}/afile/sub/heads_vs_dim'"),
    ("checkpoints under a file", STUDY, ["--checkpoints", "{tmp}/afile/sub"], "checkpoints='{tmp}/afile/sub/"),
    ("optuna store in a missing folder", STUDY, ["--optuna-url", "sqlite:///{tmp}/afile/optuna.db"],
     "optuna storage='{tmp}/afile'"),
    ("tracking store in a read-only folder", STUDY, ["--tracking-uri", "sqlite:///{tmp}/ro/mlflow.db"],
     ("tracking_uri=", "read-only")),
    ("resume an execution that is not there", STUDY, ["--resume", "--storage", "{tmp}/study"],
     ("resume='heads_vs_dim-gone'", "no Tune state")),
    ("more workers than CPUs", STUDY, ["--workers-per-trial", "2", "--set", f"cpus_per_worker={os.cpu_count() or 1}"],
     ("workers_per_trial=2", "CPUs")),
    ("more CPUs per worker than the machine", STUDY, ["--set", f"cpus_per_worker={(os.cpu_count() or 1) + 1}"],
     ("workers_per_trial=", "CPUs")),
    ("nccl with one-worker trials and no GPU", STUDY, ["--set", "backend=nccl"], "backend='nccl'"),
    ("nccl with several workers and no GPU", STUDY, ["--set", "backend=nccl", "--workers-per-trial", "2"],
     "backend='nccl'"),
    ("a share of a GPU without one", STUDY, ["--gpus-per-trial", "0.3"], "gpus_per_trial=0.3"),
    ("a seed beyond NumPy's", STUDY, ["--set", f"seed={2 ** 32}"], f"seed={2 ** 32}"),
    ("labels beyond the classes", STUDY, ["--dataset", "cifar10", "--data-root", "{tmp}/cifar", "--set",
                                          "verify=false"],
     ("data_root='{tmp}/cifar'", "class indices")),
    ("a study typo", STUDY, ["--num-config", "2"], ("--num-config", "nearest: --num-configs")),
    ("preset: a grid key not a field", "presets", ["--preset", "typo_grid"], ("fractoin", "nearest: fraction")),
    ("preset: a space param not a field", "presets", ["--preset", "typo_space"], ("model.widht", "nearest")),
]


# ---- generated from the dataclasses: every TrialConfig field, per command that takes it ------
# train, inspect-init and rank take each field as a flag, a study script as --set (and in a grid):
# each field gets a value of another type, and, where the config refuses some value of its type
# (probed here, in this process, over the base config the command builds), that value. The line a
# command prints must name the field as the config does, in one line, before anything is created.

FLAG_COMMANDS = {"train": None, "inspect-init": "vit_tiny_patch2_32", "rank": "vit_tiny_patch2_32"}  # and the model
WRONG = {int: "2.5", float: "abc", bool: "yes", tuple: "abc"}  # text of another type (any text is a string)
PROBES = {int: (-1, 0), float: (-1.0, 0.0, 1.5), str: ("no_such_value",), tuple: ([-1, 2],), bool: ()}


def kind(f) -> type:
    return next((a for a in typing.get_args(f.hint) if a is not type(None)), f.hint)


def refusal(key: str, value, base) -> str | None:
    """What the config says of `value` for the field `key` over `base`, in this process: the
    `name=value` its ValueError begins with, or None where it takes the value."""
    from structinit.config import parse, validate_model, with_overrides

    try:
        cfg = with_overrides(base, {key: parse(key, value) if isinstance(value, str) else value})
        if key.startswith("model."):
            validate_model(cfg)
    except ValueError as err:
        return str(err).partition(" is not allowed")[0]
    return None


def text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def generated() -> list[tuple]:
    """The generated cases: (id, script, arguments, the `name=value` the line must hold)."""
    import importlib.util

    from structinit.config import make, vocabulary

    spec = importlib.util.spec_from_file_location("study_heads_vs_dim", STUDY)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    bases = {None: make("digits"), "vit_tiny_patch2_32": make("digits", model="vit_tiny_patch2_32"),
             "study": script.PRESETS["smoke"]().trial}
    out = []
    for f in vocabulary():
        wrong = WRONG.get(kind(f))
        needle = refusal(f.key, wrong, bases[None]) if wrong else None
        for command, model in FLAG_COMMANDS.items():
            if wrong:
                args = ["--set", f"{f.key}={wrong}"] if kind(f) is bool else [f"--{f.key}", wrong]
                out.append((f"{command}: {f.key} of another type", "cli", [command, *args], needle))
            probe = next(((v, r) for v in PROBES[kind(f)] if (r := refusal(f.key, v, bases[model]))), None)
            if probe:
                out.append((f"{command}: {f.key} out of range", "cli", [command, f"--{f.key}", text(probe[0])],
                            probe[1]))
        if wrong:
            out.append((f"study: {f.key} of another type", STUDY, ["--set", f"{f.key}={wrong}"], needle))
        else:  # a string: only a grid (Python values) can give it another type
            out.append((f"study grid: {f.key} of another type", "presets",
                        ["--preset", "grid", "env:GRID=" + json.dumps({f.key: [3]})],
                        refusal(f.key, 3, bases["study"])))
        probe = next(((v, r) for v in PROBES[kind(f)] if (r := refusal(f.key, v, bases["study"]))), None)
        if probe:
            out.append((f"study: {f.key} out of range", STUDY, ["--set", f"{f.key}={text(probe[0])}"], probe[1]))
    return out


GENERATED = generated()


def results(folder: Path) -> Path:
    """Study `s` under folder/study with one execution's tables, as pyarrow writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    study = folder / "study" / "s"
    for name in ("trials", "history"):
        (study / "results" / name).mkdir(parents=True)
        pq.write_table(pa.table({"study": ["s"], "execution": ["s-1"]}), study / "results" / name / "s-1.parquet")
    (study / "LATEST").write_text("s-1")
    return study


def truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def garbage(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a database " * 64)


def checkpoints(folder: Path) -> None:
    """A text file, a torch file without the model's weights, and a real checkpoint folder
    (checkpoint.write) of a narrower, shallower model than vit_nano_patch2_8."""
    import torch

    from structinit import checkpoint
    from structinit.config import data_kwargs, make
    from structinit.train import build_model

    (folder / "text.pt").write_text("not a checkpoint\n" * 10)
    cfg = make("digits", model_overrides=dict(embed_dim=32, depth=1))
    model, _ = build_model(cfg.model, **data_kwargs(cfg, 10))
    torch.save({"weights": model.state_dict()}, folder / "bare.pt")
    (folder / "small").mkdir()
    checkpoint.write(str(folder / "small"), {"model": model.state_dict(), "epoch": 0}, [])


def labels_beyond_the_classes(folder: Path) -> None:
    """CIFAR-10 files as the archive unpacks, but for a training label of 12 (there are 10 classes)."""
    import pickle

    import numpy as np

    from tests.fake_datasets import cifar

    cifar(folder / "cifar", np.random.default_rng(0))
    batch = folder / "cifar" / "cifar-10-batches-py" / "data_batch_1"
    data = pickle.loads(batch.read_bytes())
    data["labels"][0] = 12
    batch.write_bytes(pickle.dumps(data))


def read_only(folder: Path) -> None:
    (folder / "ro").mkdir()
    (folder / "ro").chmod(0o555)


def gone(folder: Path) -> None:
    """A study whose LATEST names an execution of which nothing else is there."""
    (folder / "study" / "heads_vs_dim").mkdir(parents=True)
    (folder / "study" / "heads_vs_dim" / "LATEST").write_text("heads_vs_dim-gone")


SETUP = {  # the records a case finds in its folder ({tmp})
    "train: tracking store in a read-only folder": read_only,
    "tracking store in a read-only folder": read_only,
    "train: labels beyond the classes": labels_beyond_the_classes,
    "labels beyond the classes": labels_beyond_the_classes,
    "resume an execution that is not there": gone,
    "report: a study outside the storage": results,
    "report: an execution outside the results": results,
    "report: optuna url not a url": results,
    "damaged optuna.db": lambda f: garbage(f / "study" / "heads_vs_dim" / "optuna.db"),
    "rank: not a checkpoint": checkpoints,
    "rank: no model in it": checkpoints,
    "rank: another geometry": checkpoints,
    "report: damaged optuna.db": lambda f: garbage(results(f) / "optuna.db"),
    "report: MLflow unreachable": results,
    "report: truncated Parquet": lambda f: truncated(results(f) / "results" / "trials" / "s-1.parquet"),
    "report: broken report spec": lambda f: (results(f) / "report_spec.json").write_text("{not json"),
    "report: damaged mlflow.db": lambda f: (results(f), garbage(f / "store" / "mlflow.db")),
    "rank: truncated checkpoint": lambda f: (checkpoints(f), truncated(f / "small" / "state.pt")),
    "sync: truncated Parquet": lambda f: truncated(results(f) / "results" / "history" / "s-1.parquet"),
    "sync: damaged mlflow.db": lambda f: (results(f), garbage(f / "store" / "mlflow.db")),
}


def servers() -> dict[str, str]:
    """Two TCP servers on this machine that are no Ray cluster, as HOST:PORT by placeholder: one
    accepts and never says a word, one greets as an SSH server does and hangs up. They serve
    until this process ends."""
    import socket
    import threading

    def serve(greeting: bytes | None) -> str:
        server = socket.create_server(("127.0.0.1", 0))
        held = []  # the silent one keeps its connections open

        def loop():
            while True:
                conn, _ = server.accept()
                if greeting is None:
                    held.append(conn)
                else:
                    conn.sendall(greeting)
                    conn.close()

        threading.Thread(target=loop, daemon=True).start()
        return f"127.0.0.1:{server.getsockname()[1]}"

    return {"{silent}": serve(None), "{greeter}": serve(b"SSH-2.0-OpenSSH_9.6\r\n")}


PLACES: dict[str, str] = {}  # placeholder -> what a case's arguments and message say there (servers())


def fill(text: str, folder: Path) -> str:
    """A case's argument or expected text with its folder ({tmp}) and the servers put in."""
    for key, value in {"{tmp}": str(folder), **PLACES}.items():
        text = text.replace(key, value)
    return text


FOREIGN = ("RAY_ADDRESS", "STRUCTINIT_CHECKPOINTS", "MLFLOW_TRACKING_URI")  # the caller's settings a case must not see


def folder_of(case, tmp: Path) -> Path:
    """The case's own folder, with an empty subfolder and the records it finds (SETUP)."""
    folder = tmp / "".join(c if c.isalnum() else "_" for c in case[0])
    (folder / "empty").mkdir(parents=True)
    (folder / "afile").write_text("a file, where a folder is asked for\n")
    SETUP.get(case[0], lambda f: None)(folder)
    return folder


def snapshot(folder: Path) -> dict:
    """Every path under `folder`, with a file's bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


@dataclass
class Outcome:
    returncode: int
    stderr: str


def entry(script: str, argv: list[str]) -> int:
    """Run `structinit` (script "cli") or a study script as its command line would, in this process."""
    if script == "cli":
        from structinit.cli import main

        return main(argv)
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")  # the script's own `cli(...)` reads sys.argv
    return 0


def attempt(case, folder: Path):
    """Run one case in this process, as its command line would run: in its folder, with its own
    Ray temp dir, without the caller's settings (FOREIGN), stderr captured and warnings shown as a
    command line shows them; all restored after. (Outcome, the folder's files before.)"""
    name, script, args, _ = case
    env, argv = {"RAY_TMPDIR": str(folder / "ray")}, []  # where a Ray session would leave its files
    for a in args:
        if a.startswith("env:"):
            key, _, value = a[4:].partition("=")
            env[key] = fill(value, folder)
        else:
            argv.append(fill(a, folder))
    if script == "presets":
        script = str(folder / "bad_presets.py")
        Path(script).write_text(PRESETS)
    elif script != "cli":
        argv = ["--preset", "smoke", *argv] if "--preset" not in argv else argv
    before, saved, cwd, sys_argv, err = snapshot(folder), dict(os.environ), os.getcwd(), sys.argv, io.StringIO()
    try:
        for key in FOREIGN:
            os.environ.pop(key, None)
        os.environ.update(env)
        os.chdir(folder)
        with contextlib.redirect_stderr(err), warnings.catch_warnings():
            formatwarning = warnings.formatwarning
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
                warnings.formatwarning(message, category, filename, lineno, line))  # as Python's own, not pytest's
            warnings.simplefilter("default")
            try:
                code = entry(script, argv)
            except SystemExit as exit:
                code = exit.code
            finally:
                warnings.formatwarning = formatwarning
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
        sys.argv = sys_argv
    return Outcome(code, err.getvalue()), before


# not bad input: a run shorter than its recipe's warmup, stopped after its warning by a bad tracking URI
WARMUP = ("train: epochs under the warmup", "cli", ["train", "--epochs", "1", "--tracking-uri", "foo://x"], None)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case, one after another in this process (the promise is about what the code does
    before heavy work; a fresh interpreter per case cost ~8 s of imports each). A Ray session an
    earlier test left in this process is stopped first: a case must meet no cluster."""
    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()
    tmp = tmp_path_factory.mktemp("bad_input")
    PLACES.update(servers())
    cases = [*CASES, *GENERATED, WARMUP]
    folders = {c[0]: folder_of(c, tmp) for c in cases}
    return {c[0]: (*attempt(c, folders[c[0]]), folders[c[0]]) for c in cases}


def test_the_table_covers_every_kind_of_input():
    assert len(CASES) >= 60 and len({c[0] for c in [*CASES, *GENERATED]}) == len(CASES) + len(GENERATED)
    assert len([c for c in CASES if c[0] in SETUP]) >= 10  # damaged or foreign records


def test_every_field_has_generated_cases_that_name_it():
    """Every field of every config gets a value of another type at each command that takes it
    (a string field, where only a grid can give one), and the refusals the config gives name the
    field (its dotted key, its own name, or for a section's `name` the section: model=, init=)."""
    from structinit.config import vocabulary

    for f in vocabulary():
        mine = [c for c in GENERATED if c[0].split(": ", 1)[1].startswith(f"{f.key} ")]
        assert {c[0].split(":")[0] for c in mine if "another type" in c[0]} >= (
            {*FLAG_COMMANDS, "study"} if kind(f) is not str else {"study grid"}), f.key
        section, _, leaf = f.key.rpartition(".")
        for case in mine:
            assert case[3] and case[3].partition("=")[0] in {f.key, leaf, *([section] if leaf == "name" else [])}, case
    assert len([c for c in GENERATED if "out of range" in c[0]]) >= 150
    print(f"{len(GENERATED)} generated cases, {len(CASES)} written by hand")


@pytest.mark.parametrize("case", [*CASES, *GENERATED], ids=[c[0] for c in [*CASES, *GENERATED]])
def test_bad_input_is_one_line_exit_2_and_no_cluster(case, outcomes):
    proc, before, folder = outcomes[case[0]]
    needles = [fill(n, folder) for n in (case[3] if isinstance(case[3], tuple) else (case[3],))]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and all(n in lines[0] for n in needles), proc.stderr[-3000:]
    assert any(w in lines[0] for w in ("expected", "invalid int value", "nearest"))  # ...and what is allowed
    assert not (folder / "ray").exists() and not ("ray" in sys.modules and sys.modules["ray"].is_initialized())
    assert not (folder / "mlflow.db").exists() and not (folder / "runs").exists()  # nothing recorded
    assert snapshot(folder) == before  # nothing written, nothing already there changed


def test_a_run_shorter_than_the_warmup_clips_it_with_one_warning(outcomes):
    """The `cpu` recipe warms up for 3 epochs: `train --epochs 1` is not refused, it warms up for 0
    and says so once, in one line; the next check (an unsupported tracking URI here) then stops it."""
    proc, before, folder = outcomes[WARMUP[0]]
    warning, error = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert warning == ("warning: warmup_epochs=3 of the recipe clipped to 0 to fit epochs=1 (set warmup_epochs to "
                       "choose another)")
    assert "error: tracking_uri='foo://x' is not allowed" in error
    assert snapshot(folder) == before


def test_a_study_override_clips_the_warmup_too():
    """`--epochs` in a study script is the override recipe.epochs (config.with_overrides)."""
    from structinit.config import make, with_overrides

    with pytest.warns(UserWarning, match=r"warmup_epochs=3 of the recipe clipped to 1 to fit epochs=2"):
        cfg = with_overrides(make("digits"), {"recipe.epochs": 2})
    assert (cfg.recipe.epochs, cfg.recipe.warmup_epochs) == (2, 1)
    with pytest.raises(ValueError, match=r"warmup_epochs=3 is not allowed: expected an integer in \[0, epochs=2\)"):
        with_overrides(make("digits"), {"recipe.epochs": 2, "recipe.warmup_epochs": 3})  # as given: checked
