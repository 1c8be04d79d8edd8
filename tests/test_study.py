"""Studies: config overrides, seeded proposals, the space checked before any cluster work, the
report's statistics, and a smoke study end to end on real Ray, Optuna storage and MLflow."""
import dataclasses
import json
import math
import sys
from functools import partial
from pathlib import Path

import optuna
import pandas as pd
import pytest
from scipy import stats

from structinit.config import make, with_overrides
from structinit.config import config_key
from structinit.report import ci95, markdown, summarize, summary_metrics
from structinit.stats import arms, decomposition, holm, per_cell
from structinit.runner import searcher
from structinit.study import TRIAL_INDEX, Study, categorical, check_space, heads_and_dims, trial_config


def small_study(tmp_path, **kw):
    base = make("digits", recipe_overrides=dict(epochs=2, warmup_epochs=0))
    fields = dict(space=partial(heads_and_dims, dims=[32, 64, 96], heads=[1, 2, 3, 4, 8]), num_configs=6,
                  storage=str(tmp_path))
    return Study("probe", base, **{**fields, **kw})


def test_with_overrides_replaces_dotted_fields_and_validates():
    base = make("digits")
    cfg = with_overrides(base, {"model.embed_dim": 96, "init.filter_size": 3, "recipe.lr": 5e-4, "seed": 4})
    assert (cfg.model.embed_dim, cfg.init.filter_size, cfg.recipe.lr, cfg.seed) == (96, 3, 5e-4, 4)
    assert cfg.model.name == base.model.name
    with pytest.raises(ValueError, match=r"search field='model.width'"):
        with_overrides(base, {"model.width": 3})
    with pytest.raises(ValueError, match=r"target_mass=2"):
        with_overrides(base, {"init.target_mass": 2})


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


@pytest.mark.parametrize("fields,needle", [
    (dict(gpu=True, gpu_share=0.0), "gpu_share=0.0"),
    (dict(gpu=True, gpu_share=1.5), "gpu_share=1.5"),
    (dict(gpu=True, gpu_share=0.5, workers=2), "gpu_share=0.5 is not allowed: expected 1 with workers=2"),
    (dict(val_size=0), "val_size=0"),
    (dict(checkpoint_every=0), "checkpoint_every=0"),
])
def test_evaluation_checkpoint_and_gpu_share_fields_are_checked(fields, needle):
    with pytest.raises(ValueError, match="expected") as err:
        make("digits", **fields)
    assert needle in str(err.value)


def test_a_worker_holds_its_cpus_and_on_a_gpu_its_share():
    assert make("digits", cpus_per_worker=2).worker_resources() == {"CPU": 2}
    assert make("digits", gpu=True, gpu_share=0.25).worker_resources() == {"CPU": 1, "GPU": 0.25}


def test_report_statistics_by_hand():
    rows = []
    for seed, (imp, mim) in enumerate([(90.0, 85.0), (92.0, 86.0), (88.0, 87.0)]):
        for init, acc in (("impulse", imp), ("mimetic", mim)):
            rows.append(dict(status="TERMINATED", config_key="k", params=json.dumps({"model.embed_dim": 64}),
                             init=init, seed=seed, final_test_top1=acc, test_top1_at_best_val=acc + 1,
                             init_mass_pseudo=0.9, init_mass_data=0.1))
    table, paired = summarize(pd.DataFrame(rows))
    imp = table[table.init == "impulse"].iloc[0]
    assert imp.final_test_top1_mean == pytest.approx(90.0) and imp.final_test_top1_std == pytest.approx(2.0)
    assert imp.final_test_top1_ci95 == pytest.approx(stats.t.ppf(0.975, 2) * 2.0 / math.sqrt(3))
    diff = paired[paired.pair == "impulse - mimetic"].iloc[0]
    assert diff.n == 3 and diff["mean"] == pytest.approx((5 + 6 + 1) / 3)
    assert math.isnan(ci95([1.0])[2]) and ci95([])[3] == 0


def test_report_flags_near_chance_inits_and_an_unscaled_pe_control():
    rows = [dict(status="TERMINATED", config_key="k", params=json.dumps({"model.embed_dim": 64}), init=init,
                 seed=seed, final_test_top1=80.0 + seed, test_top1_at_best_val=81.0, init_mass_pseudo=0.9,
                 init_mass_data=0.2, init_hit_data=hit, init_hit_chance=1 / 16, init_wq_norm=5.7,
                 init_pe_scale=1.0)
            for seed in range(3) for init, hit in (("impulse", 0.1 if seed else 0.5), ("pe_scaled", 0.3))]
    table, paired = summarize(pd.DataFrame(rows))
    imp = table[table.init == "impulse"].iloc[0]
    assert imp.near_chance == 2 and imp.init_hit_data == pytest.approx((0.5 + 0.1 + 0.1) / 3)
    assert table[table.init == "pe_scaled"].iloc[0].near_chance == 0
    text = markdown("s", table, paired, pd.DataFrame(rows))
    assert "⚠ 2/3 near chance" in text and "5.70" in text
    assert "`pe_scaled` ran with a PE scale of 1" in text
    scaled = [dict(r, init_pe_scale=18.0) for r in rows]
    assert "PE scale of 1" not in markdown("s", *summarize(pd.DataFrame(scaled)), pd.DataFrame(scaled))


def arm_rows(params: dict, accs: dict, seeds=range(5), **fields) -> list[dict]:
    """Trials rows of one configuration: `accs[init](seed)` -> (final test top-1, best val top-1)."""
    rows = []
    for init, acc in accs.items():
        for seed in seeds:
            test, val = acc(seed)
            rows.append(dict(status="TERMINATED", error=None, execution="s-1", trial_id=f"t{len(rows)}",
                             config_key=config_key(params),
                             params=json.dumps(params, sort_keys=True), init=init, seed=seed, final_test_top1=test,
                             test_top1_at_best_val=test, best_val_top1=val, **fields))
    return rows


def test_decomposition_splits_the_gain_into_pe_scale_and_structure():
    """All four arms over 5 seeds: (pe_scaled - base) + (impulse - pe_scaled) = impulse - base in
    the seed mean, base = torch_default where it ran (else default); on the seeds all three share
    when an arm lost one. Every pair is one row of the paired table, with its p and Holm p. Each
    part is named for what differs: the PE scale plus mimetic V/proj where value_proj is mimetic
    (digits), value_proj unrecorded (mnist: a table from before its column)."""
    scores = {"impulse": lambda s: (80.0 + s + 0.5 * s * s, 70.0), "pe_scaled": lambda s: (75.0 + 0.3 * s, 70.0),
            "mimetic": lambda s: (74.0 + s, 70.0), "torch_default": lambda s: (70.0 - 0.7 * s, 70.0),
            "default": lambda s: (60.0, 70.0)}
    rows = arm_rows({"dataset": "digits"}, scores, value_proj="mimetic", init_pe_scale=18.0)
    other = arm_rows({"dataset": "mnist"}, {k: v for k, v in scores.items() if k != "torch_default"})
    other[next(i for i, r in enumerate(other) if r["init"] == "pe_scaled" and r["seed"] == 4)].update(
        status="ERROR", error="NonFiniteLossError", final_test_top1=None)  # pe_scaled lost seed 4 there
    trials = pd.DataFrame(rows + other)
    table, paired = summarize(trials)
    assert not paired.duplicated(["config", "pair"]).any()
    assert {"pe_scaled - torch_default", "pe_scaled - default", "impulse - pe_scaled"} <= set(paired.pair)
    assert paired.p_holm.tolist() == pytest.approx(holm(paired.p).tolist(), nan_ok=True)
    assert (paired.p_holm >= paired.p).all()
    parts = decomposition(arms(trials), paired)
    named = {"dataset=digits": ("PE scale + mimetic V/proj", "Q/K structure"),
             "dataset=mnist": ("PE scale", "structure (value_proj unrecorded: Q/K, maybe V/proj)")}
    for config, base, n in (("dataset=digits", "torch_default", 5), ("dataset=mnist", "default", 4)):
        got = parts[parts.config == config].set_index("pair")
        control, structure, total = f"pe_scaled - {base}", "impulse - pe_scaled", f"impulse - {base}"
        assert set(got.baseline) == {base} and set(got.n) == {n}
        assert tuple(got.loc[[control, structure, total], "part"]) == (*named[config], "total")
        assert got.loc[control, "mean"] + got.loc[structure, "mean"] == pytest.approx(got.loc[total, "mean"])
        seeds = range(n)
        imp, pe, b = ([scores[i](s)[0] for s in seeds] for i in ("impulse", "pe_scaled", base))
        assert got.loc[total, "mean"] == pytest.approx(sum(x - y for x, y in zip(imp, b)) / n)
        assert got.loc[control, "mean"] == pytest.approx(sum(x - y for x, y in zip(pe, b)) / n)
    mnist = parts[parts.config == "dataset=mnist"].set_index("pair")
    assert mnist.loc["impulse - default", "n_paired"] == 5 and mnist.loc["impulse - pe_scaled", "n_paired"] == 4
    row = paired[(paired.config == "dataset=digits") & (paired.pair == "impulse - pe_scaled")].iloc[0]
    structure = parts[(parts.config == "dataset=digits") & (parts.pair == "impulse - pe_scaled")]
    assert structure.p_holm.iloc[0] == row.p_holm
    text = markdown("s", table, paired, trials)
    assert "## Decomposition" in text
    assert "| dataset=digits | torch_default | mimetic | 5 | PE scale + mimetic V/proj: " in text
    assert "| dataset=mnist | default | unrecorded | 4 | PE scale: " in text and "| Q/K structure: " in text
    assert "p (Holm)" in text and "## Per cell" not in text  # no embed_dim/num_heads varied
    metrics, params = summary_metrics(trials)
    digits = "c" + config_key({"dataset": "digits"})[:4]  # the configuration's short id (config.config_ids)
    assert params[f"config.{digits}"] == "dataset=digits"
    assert metrics[f"impulse-pe_scaled/{digits}/p_holm"] == pytest.approx(row.p_holm)


def test_per_cell_picks_the_impulse_setting_by_validation_not_test():
    """Two settings per (embed_dim, num_heads) cell; in the first cell the better-validating setting
    is the worse on test: the pick follows validation. Conditions with k = 7, f = 3."""
    cell = dict(filter_size=3, init_rank_k=7.0, pseudo_input="pe", pe_scale=None, init_pe_scale=18.0)
    rows = []
    for dim, heads, sharp_val, sharp_test in ((32, 2, 60.0, 90.0), (144, 9, 80.0, 70.0)):
        for mass, val, test in ((0.3, 70.0, 80.0), (0.9, sharp_val, sharp_test)):
            params = {"model.embed_dim": dim, "model.num_heads": heads, "init.target_mass": mass}
            rows += arm_rows(params, {"impulse": lambda s, t=test, v=val: (t + s, v + s),
                                      "torch_default": lambda s: (60.0 + s, 50.0)},
                             embed_dim=dim, num_heads=heads, target_mass=mass, **cell)
    trials = pd.DataFrame(rows)
    table, paired = summarize(trials)
    cells = per_cell(arms(trials), table, paired).set_index(["embed_dim", "num_heads"])
    first, second = cells.loc[(32, 2)], cells.loc[(144, 9)]
    assert first.setting == "target_mass=0.3"  # val 70 > 60, test 80 < 90
    assert first.final_test_top1_mean == pytest.approx(82.0) and first.settings == 2
    assert second.setting.startswith("target_mass=0.9") and second.best_val_top1_mean == pytest.approx(82.0)
    assert (first.h_ge_f2, first.head_dim_ge_k) == (False, True)  # 2 < 9 heads; 32 / 2 = 16 >= 7
    assert (second.h_ge_f2, second.head_dim_ge_k) == (True, True) and "h≥f² ✓, D/h≥k ✓" in second.theory
    text = markdown("s", table, paired, trials)
    assert "## Per cell" in text
    line = next(x for x in text.splitlines() if x.startswith("| 32 | 2 |"))
    assert "target_mass=0.3" in line and "impulse - torch_default: 20.00 ± 0.00" in line


@pytest.mark.slow
@pytest.mark.cluster
def test_smoke_study_end_to_end(smoke_study):
    from mlflow.tracking import MlflowClient

    tmp_path, summary = smoke_study["folder"], smoke_study["summary"]
    trials = pd.read_parquet(summary["trials"])
    history = pd.read_parquet(summary["history"])
    assert len(trials) == 3 and set(trials.status) == {"TERMINATED"}
    assert sorted(trials.init) == ["default", "impulse", "mimetic"] and trials.config_key.nunique() == 1
    assert (trials.epochs_done == 2).all() and len(history) == 6
    assert (trials.embed_dim % trials.num_heads == 0).all()

    client = MlflowClient("sqlite:///" + str(tmp_path / "mlflow.db"))
    exp = client.get_experiment_by_name("heads_vs_dim")
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{summary['parent_run_id']}'")
    assert sorted(r.data.tags["init"] for r in children) == ["default", "impulse", "mimetic"]
    assert all(r.info.status == "FINISHED" and r.data.tags["study"] == "heads_vs_dim" for r in children)
    assert set(trials.mlflow_run_id) == {r.info.run_id for r in children}
    assert all(len(client.get_metric_history(r.info.run_id, "val_top1")) == 2 for r in children)
    assert all(len(client.get_metric_history(r.info.run_id, "test_top1")) == 1 for r in children)  # at the end only
    assert summary["dataset_reads"] == 1 and (history.data_from_store == 1).all()  # read once, shared by 3 trials
    assert trials.test_top1_at_best_val.notna().all() and trials.final_test_top1.notna().all()
    attention = pd.read_parquet(summary["attention"])  # measured at the init and the last epoch (no checkpoint between)
    assert attention.groupby("trial_id")["epoch"].unique().map(sorted).to_dict() == {t: [0, 2] for t in trials.trial_id}
    assert all(sorted(m.step for m in client.get_metric_history(r.info.run_id, "attn_distance/b0")) == [0, 2]
               for r in children)  # each block's means, the epochs trained as the step

    rep = smoke_study["report"]
    assert "| embed_dim=" in rep and "impulse - mimetic" in rep and "impulse - default" in rep
    assert (tmp_path / "runs" / "heads_vs_dim" / "report" / "table.csv").exists()
    parent_artifacts = {a.path for a in client.list_artifacts(summary["parent_run_id"], "report")}
    assert "report/report.md" in parent_artifacts and "report/curves.png" in parent_artifacts
    assert "## Attention through training" in rep and "report/attention.png" in parent_artifacts


STUDY_SCRIPTS = sorted((Path(__file__).parent.parent / "studies").glob("*.py"))


def presets(script: Path) -> dict:
    """A study script's PRESETS, imported as `python studies/x.py` would (its __main__ not run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"study_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PRESETS


def test_every_preset_of_every_study_builds():
    """Each preset of each study script, `paper` included, builds its Study (building reads no data:
    `paper`'s /data is only read on GPU workers)."""
    for script in STUDY_SCRIPTS:
        built = {name: build() for name, build in presets(script).items()}
        assert {"smoke", "paper"} <= set(built) and all(isinstance(s, Study) for s in built.values()), script.stem


HELP_PROBE = """
import runpy, sys
for script in sys.argv[1:]:
    sys.argv = [script, "--help"]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        assert e.code == 0, (script, e.code)
    heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "timm", "ray", "mlflow", "pandas", "scipy"})
    print(repr((script, heavy)), file=sys.stderr)
"""


@pytest.mark.slow
def test_a_study_scripts_help_imports_no_torch():
    """`python studies/x.py --help` answers from the declarations alone: no torch, timm, Ray, MLflow,
    pandas or scipy (one interpreter for every script; what one imported would stay imported)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", HELP_PROBE, *map(str, STUDY_SCRIPTS)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    answers = [eval(line) for line in out.stderr.splitlines() if line.startswith("(")]
    assert len(answers) == len(STUDY_SCRIPTS) and all(heavy == [] for _, heavy in answers), answers

@pytest.mark.slow
@pytest.mark.parametrize("script", STUDY_SCRIPTS, ids=[s.stem for s in STUDY_SCRIPTS])
def test_every_preset_passes_its_checks(script):
    """Every preset's space and inits pass check_space, and its splits too where a laptop has the
    data: `paper` (CIFAR-100 in /data) is checked without reading it, its memory left to the GPU
    workers. A preset broken by a change of a footing, a space or an init is caught here, not an
    hour into a study on a GPU cluster."""
    for preset, build in presets(script).items():
        if preset == "paper":
            check_space(build(), bytes_per_parameter=0, samples=16, data=False)
        else:
            check_space(build(), samples=16)


def test_heads_vs_dim_searches_the_impulse_settings_and_pairs_pe_scaled_on_a_learned_pe():
    import importlib.util

    script = Path(__file__).parent.parent / "studies" / "heads_vs_dim.py"
    spec = importlib.util.spec_from_file_location("study_heads_vs_dim", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import optuna

    assert module.PRESETS["cpu"]().name != module.PRESETS["cpu_followup"]().name  # one report per footing
    for preset, learned in (("cpu", False), ("cpu_followup", True)):
        study = module.PRESETS[preset]()
        assert ("pe_scaled" in study.inits) == learned and study.trial.fraction == 0.25
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(0)).ask()
        study.space(trial)
        assert 0.2 <= trial.params["init.target_mass"] <= 0.999
        assert trial.params["init.pseudo_input"] in ("pe", "data")
        assert ("init.pe_scale" in trial.params) == learned
        cfg, _ = trial_config(study, {**trial.params, "model.num_heads": 2, TRIAL_INDEX: 0})
        assert cfg.init.solver == "closed_form" and cfg.init.factor_norm is None


def test_init_comparison_pairs_the_attention_init_baselines_by_seed():
    """init_comparison's cpu and paper presets train conditioned, dct and mimetic_vo beside the
    footing's baseline; each is paired by seed with impulse and with torch_default, and the report
    names what each difference is measured against."""
    import importlib.util

    script = Path(__file__).parent.parent / "studies" / "init_comparison.py"
    spec = importlib.util.spec_from_file_location("study_init_comparison", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for preset in ("cpu", "paper"):
        study = module.PRESETS[preset]()
        assert {"conditioned", "dct", "mimetic_vo", "torch_default"} <= set(study.inits)
        assert "attention" in study.plots
    inits = ("impulse", "pe_scaled", "torch_default", "conditioned", "dct", "mimetic_vo")
    rows = arm_rows({"dataset": "digits"}, {i: (lambda s, k=k: (70.0 + k + s * (k % 2), 70.0)) for k, i in
                                           enumerate(inits)})
    trials = pd.DataFrame(rows)
    table, paired = summarize(trials, module.IMPULSE_PAIRS)
    got = set(paired.pair)
    assert {f"impulse - {b}" for b in ("conditioned", "dct", "mimetic_vo")} <= got
    assert {f"{a} - torch_default" for a in ("conditioned", "dct", "mimetic_vo")} <= got
    assert (paired.n == 5).all()
    text = markdown("s", table, paired, trials)
    assert "- conditioned: conditioned init" in text and "- mimetic_vo: mimetic's V/proj alone" in text
