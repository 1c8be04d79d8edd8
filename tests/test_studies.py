"""The study scripts in studies/: every preset built and checked, a study script's --help
imports no torch, the smoke study end to end on real Ray, Optuna storage and MLflow, and
what each study pairs."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from structinit.report import markdown, summarize
from structinit.study import TRIAL_INDEX, Study, check_space, trial_config
from tests.helpers import arm_rows

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


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



@pytest.mark.slow
@pytest.mark.cluster
def test_convmixer_filter_study_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "studies" / "convmixer_filters.py"), "--preset", "smoke"],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    trials = pd.read_parquet(summary["trials"])
    assert sorted(trials.init) == ["frozen_box", "frozen_impulse", "frozen_random", "learned"]
    assert set(trials.status) == {"TERMINATED"} and (trials.kernel_size == 3).all() and (trials.embed_dim == 16).all()
    assert (trials.init_rank_k >= 1).all() and (trials.init_width_ratio > 0).all()
    rep = subprocess.run([str(BIN / "structinit"), "report", "convmixer_filters"], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert "frozen_impulse - learned" in rep.stdout and "D/(k f²)=" in rep.stdout
    assert (tmp_path / "runs" / "convmixer_filters" / "report" / "filter_gap.png").exists()

