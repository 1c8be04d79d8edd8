"""study.py: a study's (init, seed) repeats, seeded proposals and grids, the space it builds, a
study script's name, and the space checked before any cluster work."""
import dataclasses
import sys
from functools import partial
from pathlib import Path

import optuna
import pytest

from structinit.config import make
from structinit.runner import searcher
from structinit.study import TRIAL_INDEX, Study, categorical, check_space, heads_and_dims, trial_config


def small_study(tmp_path, **kw):
    base = make("digits", recipe_overrides=dict(epochs=2, warmup_epochs=0))
    fields = dict(space=partial(heads_and_dims, dims=[32, 64, 96], heads=[1, 2, 3, 4, 8]), num_configs=6,
                  storage=str(tmp_path))
    return Study("probe", base, **{**fields, **kw})


def test_repeats_pair_every_init_with_every_seed(tmp_path):
    study = small_study(tmp_path, inits=("impulse", "mimetic"), seeds=(3, 4))
    got = [trial_config(study, {"model.embed_dim": 64, "heads_e64": 4, "model.num_heads": 4, TRIAL_INDEX: i})[0]
           for i in range(4)]
    assert [(c.init.name, c.seed) for c in got] == [("impulse", 3), ("impulse", 4), ("mimetic", 3), ("mimetic", 4)]
    assert all(c.model.embed_dim == 64 and c.model.num_heads == 4 for c in got)


def proposals(study, execution, n):
    alg = searcher(study, execution)
    out = []
    for i in range(n):
        cfg = alg.suggest(f"t{i}")
        out.append({k: v for k, v in cfg.items() if k != TRIAL_INDEX})
        if (i + 1) % len(study.repeats) == 0:  # a finished group lets the searcher propose anew
            for j in range(i + 1 - len(study.repeats), i + 1):
                alg.on_trial_complete(f"t{j}", {"val_top1": float(j), "epoch": 1})
    return out


def test_same_search_seed_proposes_the_same_configurations(tmp_path):
    a = small_study(tmp_path / "a", search_seed=7)
    b = small_study(tmp_path / "b", search_seed=7)
    c = small_study(tmp_path / "c", search_seed=8)
    for s in (a, b, c):
        Path(s.paths.folder).mkdir(parents=True)
    n = 6 * len(a.repeats)
    pa, pb, pc = proposals(a, "x", n), proposals(b, "x", n), proposals(c, "x", n)
    assert pa == pb and pa != pc
    assert all(p["model.embed_dim"] % p["model.num_heads"] == 0 for p in pa)  # the constraint holds


def test_grid_study_visits_every_cell_in_a_seeded_order(tmp_path):
    grid = {"init.filter_size": [3, 5], "fraction": [0.5, 1.0]}
    study = dataclasses.replace(small_study(tmp_path, seeds=(0,), inits=("impulse",)),
                                space=partial(categorical, **grid), grid=grid,
                                trial=make("digits", model_overrides=dict(patch_size=1)))
    Path(study.paths.folder).mkdir(parents=True)
    cells = proposals(study, "g", 4)
    assert sorted((c["init.filter_size"], c["fraction"]) for c in cells) == [(3, 0.5), (3, 1.0), (5, 0.5), (5, 1.0)]


def test_a_grid_study_builds_its_own_space_and_a_study_without_either_is_refused(tmp_path):
    """Study(grid=...) searches `categorical` over the grid (the space a script would pass); a study
    with neither a space nor a grid is refused naming the space."""
    grid = {"init.filter_size": [3, 5], "fraction": [0.5, 1.0]}
    study = Study("g", make("digits"), grid=grid, storage=str(tmp_path))
    assert (study.space.func, study.space.keywords, study.configs) == (categorical, grid, 4)
    trial = optuna.trial.FixedTrial({"init.filter_size": 5, "fraction": 0.5})
    assert study.space(trial) is None and trial.params == {"init.filter_size": 5, "fraction": 0.5}
    with pytest.raises(ValueError, match=r"space=None .*grid="):
        Study("g", make("digits"), storage=str(tmp_path))


def test_a_study_script_is_named_after_its_file(monkeypatch, capsys):
    """`cli(PRESETS)` takes the script's name from its file (its --help says `studies/<file>.py`);
    `cli(name, PRESETS)` names it, for a script written elsewhere (bench/search_efficiency.py)."""
    import types

    from structinit.commands.study import cli, script_name

    main = types.ModuleType("__main__", "A probe study.")
    main.__file__ = "/somewhere/studies/probe_study.py"
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert script_name() == "probe_study"
    for args, prog in (((PRESETS,), "studies/probe_study.py"), (("heads_vs_dim", PRESETS), "studies/heads_vs_dim.py")):
        with pytest.raises(SystemExit) as done:
            cli(*args, argv=["--help"], default="smoke")
        assert done.value.code == 0 and f"usage: {prog}" in capsys.readouterr().out


PRESETS = {"smoke": lambda: None}


def test_check_space_rejects_a_broken_space_before_any_cluster_work(tmp_path):
    def bad(trial):  # heads that do not divide the dim
        trial.suggest_categorical("model.embed_dim", [30, 64])
        return {"model.num_heads": 4}

    with pytest.raises(ValueError, match=r"num_heads=4 .*divisor of embed_dim=30"):
        check_space(small_study(tmp_path, space=bad))
    grid = {"init.filter_size": [3, 5]}  # 5 does not fit the digits model's 4x4 grid
    with pytest.raises(ValueError, match=r"filter_size=5"):
        check_space(small_study(tmp_path, space=partial(categorical, **grid), grid=grid))


