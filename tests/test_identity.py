"""A trial is what made it (config.identity): the inits' declared reads, identities of real
inits, arms that merge settings of identical models, reports that pool one base only, and a
study that trains each model once (real Ray, MLflow and Optuna storage)."""
import dataclasses
import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from structinit.config import make, trained, weights_digest, with_overrides
from structinit.inits import INITS, READS, InitConfig, apply_init, setting
from structinit.models import create
from structinit.report import select, summarize
from structinit.stats import arms, decomposition, per_cell

# A valid other value for every InitConfig field an init might not read (on a model with an 8x8 grid).
OTHER = dict(base="torch", filter_size=5, offsets="random", pseudo_input="uniform", data_images=32,
             solver="gradient", target_mass=0.5, qk="shared", value_proj="mimetic", pe_scale=3.0, rank_rtol=0.05,
             damping=0.2, solver_steps=5, solver_lr=1e-3, alpha_qk=0.3, beta_qk=0.2, alpha_vo=0.3, beta_vo=0.2,
             target_shape="box", blob=5, blob_sigma=2.0, mix="noise", mix_ratio=0.5, distinct_filters=2)
CONVMIXER = {"learned", "frozen_random", "frozen_impulse", "frozen_box"}


def weights(name: str, **fields) -> str:
    model = create("convmixer_64_4_p1", embed_dim=16, depth=1) if name in CONVMIXER else create(
        "vit_nano_patch2_8", img_size=16, depth=2, pos_embed="learn")
    apply_init(model, InitConfig(name=name, **fields), seed=3)
    return weights_digest(model)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(INITS))
def test_an_init_reads_no_field_but_those_it_declares(name):
    """Every field an init does not declare leaves its weights bit for bit as they were: the
    declaration (`inits.register(reads=...)`) is what `setting` and the pairing of arms trust."""
    base = weights(name)
    declared = set(READS[name](InitConfig(name=name)))
    unread = [f for f in OTHER if f not in declared and not (f == "solver" and name == "impulse")]
    changed = [f for f in unread if weights(name, **{f: OTHER[f]}) != base]
    assert not changed, f"{name} reads {changed} but does not declare them"


def test_impulse_declares_what_its_options_read():
    """What impulse reads depends on its options: the gradient solver's steps, a data pseudo
    input's batch, mimetic V/proj's alpha and beta."""
    closed = setting(InitConfig())
    assert "solver_steps" not in closed and "data_images" not in closed and "alpha_vo" not in closed
    other = setting(InitConfig(solver="gradient", target_mass=None, value_proj="mimetic"))
    assert {"solver_steps", "solver_lr", "alpha_vo", "beta_vo"} <= other.keys() and "damping" not in other
    assert "data_images" in setting(InitConfig(pseudo_input="data"))


def test_trained_leaves_out_where_and_how_fast_and_unread_init_fields():
    cfg = make("digits", recipe_overrides=dict(epochs=2, warmup_epochs=0), init=InitConfig(name="mimetic"))
    same = dataclasses.replace(cfg, data_root="/elsewhere", eval_batch_size=7, checkpoint_every=1, cpus_per_worker=2,
                               init=dataclasses.replace(cfg.init, target_mass=0.3, filter_size=5))
    assert trained(same) == trained(cfg)
    assert trained(dataclasses.replace(cfg, seed=1)) != trained(cfg)
    assert trained(with_overrides(cfg, {"init.alpha_vo": 0.1})) != trained(cfg)


def heads_vs_dim():
    spec = importlib.util.spec_from_file_location("heads_vs_dim", Path(__file__).parents[1] / "studies" /
                                                  "heads_vs_dim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PRESETS["cpu"]()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:target_mass")
def test_masses_a_cell_cannot_express_are_one_trial():
    """heads_vs_dim's cell D = 64, h = 16 (head dim 4) solved on training images: masses 0.8
    and 0.999 are beyond what the heads can express, so the solve gives both the same, largest
    mass: bit-identical weights, one identity; 0.5 is within reach and another trial."""
    from structinit.train import trial_identity

    study = heads_vs_dim()
    cell = {"model.embed_dim": 64, "model.num_heads": 16, "init.pseudo_input": "data"}
    ids = {m: trial_identity(with_overrides(study.trial, {**cell, "init.target_mass": m}))[0]
           for m in (0.5, 0.8, 0.999)}
    assert ids[0.8] == ids[0.999] != ids[0.5]


def rows(base: str, study_base: str, execution: str, arms_: dict, seeds=range(3), **fields) -> list[dict]:
    """Trial rows: `arms_[(init, setting JSON)] = (identity prefix, accuracy of seed s)`."""
    out = []
    for (init, asked), (ident, acc) in arms_.items():
        for s in seeds:
            out.append(dict(study="s", status="TERMINATED", error=None, execution=execution,
                            trial_id=f"{execution}-{init}-{ident}-{s}", config_key="k", init=init, seed=s,
                            params=json.dumps({"model.embed_dim": 64, "init.target_mass": json.loads(asked).get(
                                "target_mass", 0.9)}), identity=f"{ident}-{s}", base_key=base,
                            setting_key=f"{init}{asked}", setting=asked, study_base=study_base, reused_from=None,
                            final_test_top1=acc(s), test_top1_at_best_val=acc(s), best_val_top1=acc(s),
                            **{"embed_dim": 64, "num_heads": 16, "filter_size": 3, **fields}))
    return out


def test_settings_that_gave_the_same_models_are_one_arm():
    """Two asked masses with the same identities seed by seed are one arm, named by both and by
    the mass it realised; the per-cell table counts it once; mimetic pairs with each arm."""
    arms_ = {("impulse", '{"target_mass": 0.8}'): ("a", lambda s: 80.0 + s),
             ("impulse", '{"target_mass": 0.999}'): ("a", lambda s: 80.0 + s),
             ("impulse", '{"target_mass": 0.5}'): ("b", lambda s: 70.0 + s),
             ("mimetic", "{}"): ("m", lambda s: 75.0)}
    narrow = {("impulse", '{"target_mass": 0.5}'): ("n", lambda s: 60.0)}  # another cell: a heads-vs-dim grid
    trials = pd.DataFrame(rows("B", "S", "e1", arms_, init_mass_data=0.6, init_mass_pseudo=0.7)
                          + rows("B2", "S", "e1", narrow, embed_dim=32, init_mass_data=0.6, init_mass_pseudo=0.7))
    done = arms(trials[trials.base_key == "B"])
    assert done.groupby("init")["arm"].nunique().to_dict() == {"impulse": 2, "mimetic": 1}
    assert set(done[done.init == "impulse"]["label"]) == {
        "target_mass=0.8|0.999 → mass 0.60 (asked mass out of reach)", "target_mass=0.5 → mass 0.60"}
    table, paired = summarize(trials, (("impulse", "mimetic"),))
    assert len(table) == 4 and (table.n == 3).all()
    assert sorted(paired["mean"]) == pytest.approx([-4.0, 6.0])  # each impulse arm against the one mimetic arm
    cells = per_cell(arms(trials), table, paired).set_index("embed_dim")
    assert cells.settings.to_dict() == {32: 1, 64: 2} and cells.setting[64].startswith("target_mass=0.8|0.999")


def test_a_report_pools_one_base_and_pairs_nothing_across_bases():
    """Executions of two bases (a smoke and a cpu preset: other epochs) under one study name and
    the same labels: the report of the latest covers its base only and names the other; the
    pairs hold one base's seeds; an identity trained in two executions counts once."""
    arms_ = {("impulse", "{}"): ("i", lambda s: 90.0 + s), ("mimetic", "{}"): ("m", lambda s: 80.0)}
    short = {("impulse", "{}"): ("si", lambda s: 10.0), ("mimetic", "{}"): ("sm", lambda s: 20.0 + s)}
    trials = pd.DataFrame(rows("cpu", "CPU", "s-1", arms_) + rows("smoke", "SMOKE", "s-2", short)
                          + rows("cpu", "CPU", "s-3", arms_))
    history = pd.DataFrame({"trial_id": trials.trial_id, "epoch": 0})
    mine, epochs, note = select(trials, history, "s-3")
    assert set(mine.execution) == {"s-1", "s-3"} and "s-2" in note and set(epochs.trial_id) == set(mine.trial_id)
    table, paired = summarize(mine, (("impulse", "mimetic"),))
    assert table.n.tolist() == [3, 3] and paired["mean"].tolist() == pytest.approx([11.0])
    smoke, _, note = select(trials, history)  # the latest is s-3: cpu again; s-2 by name
    assert set(smoke.execution) == {"s-1", "s-3"}
    smoke, _, _ = select(trials, history, "s-2")
    assert summarize(smoke, (("impulse", "mimetic"),))[1]["mean"].tolist() == pytest.approx([-11.0])


def test_a_comparison_counts_the_seeds_it_lost():
    """A seed whose mimetic trial was stopped early cannot pair: the comparison uses its complete
    pairs and says how many it lost."""
    arms_ = {("impulse", "{}"): ("i", lambda s: 90.0), ("mimetic", "{}"): ("m", lambda s: 80.0)}
    trials = pd.DataFrame(rows("B", "S", "e", arms_, seeds=range(4)))
    trials.loc[(trials.init == "mimetic") & (trials.seed == 3), ["status", "final_test_top1"]] = ["STOPPED", None]
    _, paired = summarize(trials, (("impulse", "mimetic"),))
    assert paired[["n", "lost"]].values.tolist() == [[3, 1]]


@pytest.mark.slow
@pytest.mark.cluster
def test_a_study_trains_each_model_once(ray_local, tmp_path):
    """Three executions of init_comparison's smoke preset in one storage: a base, another base
    (one more epoch), the first base again. The third trains nothing: every trial reuses the
    first's (reused_from, the MLflow tag), and the searcher still gets its value. The report of
    the latest covers the first base only, never pairing rows of the other."""
    from mlflow.tracking import MlflowClient

    from structinit import results
    from structinit.report import report
    from structinit.runner import run

    spec = importlib.util.spec_from_file_location("init_comparison", Path(__file__).parents[1] / "studies" /
                                                  "init_comparison.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    first = dataclasses.replace(module.PRESETS["smoke"](), storage=str(tmp_path / "runs"), tracking_uri=uri,
                                inits=("impulse", "mimetic"))
    other = dataclasses.replace(first, trial=with_overrides(first.trial, {"recipe.epochs": 3}))
    summaries = [run(s) for s in (first, other, first)]
    assert [(s["trained"], s["reused"]) for s in summaries] == [(2, 0), (2, 0), (0, 2)]
    trials, history = results.load(first.paths.folder)
    again = trials[trials.execution == summaries[2]["execution"]]
    origin = trials[trials.execution == summaries[0]["execution"]]
    assert set(again.reused_from) == set(origin.trial_id) and set(again.identity) == set(origin.identity)
    assert again.set_index("identity").final_test_top1.sort_index().tolist() == origin.set_index(
        "identity").final_test_top1.sort_index().tolist()  # the same results, whatever order the trials ran in
    assert not history.trial_id.isin(again.trial_id).any()  # trained nothing: no epochs of its own
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(first.name).experiment_id],
                              filter_string="tags.reused_from != ''")
    assert {r.data.tags["reused_from"] for r in runs} == set(origin.trial_id)
    text = report(first.name, storage=first.storage, tracking_uri=uri)
    assert "2 trained, 2 reused" in text and summaries[1]["execution"] in text.split("left out")[1]
    table = pd.read_csv(first.paths.report + "/table.csv")
    assert (table.n == 1).all() and len(table) == 2  # each model once, the other base's not among them


def test_the_decomposition_reads_each_part_from_its_own_arms_row():
    """impulse at two settings and one pe_scaled arm (it reads none of impulse's knobs): the
    decomposition's first part is the paired table's pe_scaled − baseline row, whose label is
    pe_scaled's, not impulse's."""
    scores = {("impulse", '{"pseudo_input": "pe"}'): ("p", lambda s: 87.0 + s),
              ("impulse", '{"pseudo_input": "data"}'): ("d", lambda s: 91.0 - s),
              ("pe_scaled", "{}"): ("c", lambda s: 90.0 + s * s), ("torch_default", "{}"): ("b", lambda s: 60.0 + s)}
    trials = pd.DataFrame(rows("B", "S", "e", scores, seeds=range(6), init_pe_scale=18.0, value_proj="mimetic"))
    table, paired = summarize(trials, (("impulse", "pe_scaled"), ("pe_scaled", "torch_default")))
    parts = decomposition(arms(trials), paired)
    control = paired[paired.pair == "pe_scaled - torch_default"].iloc[0]
    first = parts[parts.pair == "pe_scaled - torch_default"]
    assert len(first) == 2 and (first.n_paired == 6).all() and (first.p_holm == control.p_holm).all()
