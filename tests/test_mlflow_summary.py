"""What a study execution's parent run says, built from trials rows (no Ray, no server): metric keys
a person can read (init or pair first, then a configuration's short id its trial runs carry), the
description that answers the study within MLflow's limit, the plots named to come first, and
plots that compare inits on one colour scale."""
import json
import re

import pandas as pd
import pytest
from mlflow.utils.validation import validate_param_and_metric_name

from structinit import report, tracking
from structinit.config import config_ids, config_key

PAIRS = (("impulse", "mimetic"), ("impulse", "default"))


def trials(proposals=((64, 0.5), (64, 0.9), (32, 0.5)), seeds=range(5)) -> pd.DataFrame:
    """Rows of an execution of (embed_dim, target_mass) proposals x impulse, mimetic x `seeds`:
    mimetic reads no target_mass, so its trials on one embed_dim (one base) are the same models."""
    rows = []
    for dim, mass in proposals:
        params = {"model.embed_dim": dim, "init.target_mass": mass}
        for init in ("impulse", "mimetic"):
            setting = {"target_mass": mass} if init == "impulse" else {}
            for seed in seeds:
                acc = (80.0 + 10 * mass + seed) if init == "impulse" else 75.0 + dim / 64 + 0.5 * seed
                rows.append(dict(study="s", execution="s-1", trial_id=f"t{len(rows)}", status="TERMINATED",
                                 dataset="digits", config_key=config_key(params),
                                 params=json.dumps(params, sort_keys=True), init=init,
                                 seed=seed, final_test_top1=acc, test_top1_at_best_val=acc - 1, best_val_top1=acc,
                                 base_key=f"b{dim}", setting_key=json.dumps(setting), setting=json.dumps(setting),
                                 identity=f"{dim}/{init}/{json.dumps(setting)}/{seed}", embed_dim=dim,
                                 reused_from=None))
    return pd.DataFrame(rows)


def test_a_configuration_id_is_its_config_keys_head_whatever_else_ran():
    keys = [config_key({"model.embed_dim": d}) for d in (32, 64, 96)]
    assert config_ids(keys[:2]) == {k: "c" + k[:4] for k in keys[:2]}  # resume, sync: the same ids
    assert config_ids(keys[:2]) == {k: v for k, v in config_ids(keys).items() if k in keys[:2]}
    assert config_ids(["abcd111111", "abcd222222", "ef01234567"]) == {  # a collision: the whole key
        "abcd111111": "cabcd111111", "abcd222222": "cabcd222222", "ef01234567": "cef01"}


def test_parent_keys_are_init_or_pair_first_then_the_configuration_id():
    rows = trials()
    metrics, params = report.summary_metrics(rows, PAIRS)
    ids = config_ids(rows.config_key)
    a, b, c = (ids[config_key({"model.embed_dim": d, "init.target_mass": m})] for d, m in ((64, 0.5), (64, 0.9),
                                                                                            (32, 0.5)))
    assert {params[f"config.{i}"] for i in (a, b, c)} == {
        "embed_dim=64 target_mass=0.5", "embed_dim=64 target_mass=0.9", "embed_dim=32 target_mass=0.5"}
    assert metrics[f"impulse/{b}/final_test_top1"] == pytest.approx(91.0)  # 80 + 9, + seeds 0..4 averaged
    assert metrics[f"mimetic/{a}/final_test_top1"] == metrics[f"mimetic/{b}/final_test_top1"] == pytest.approx(77.0)
    assert metrics[f"impulse-mimetic/{b}/mean"] == pytest.approx(14.0)  # one mimetic arm on base 64, both ids
    assert metrics[f"impulse-mimetic/{c}/ci95_low"] < metrics[f"impulse-mimetic/{c}/mean"] < metrics[
        f"impulse-mimetic/{c}/ci95_high"]
    assert f"impulse-mimetic/{c}/p_holm" in metrics and not any(k.endswith(("/n", "/p")) for k in metrics)
    assert (metrics["configurations_finished"], metrics["configurations_stopped"]) == (3, 0)
    assert len(metrics) == 5 + 2 + 3 * 2 * 2 + 3 * 4  # trials_*, configurations_*; 3 ids x 2 inits x 2; 3 diffs x 4
    assert max(map(len, metrics)) <= 40 and all(validate_param_and_metric_name(k) for k in [*metrics, *params])
    assert {k.split("/")[0] for k in metrics if "/" in k} == {"impulse", "mimetic", "impulse-mimetic"}
    for t in rows.to_dict("records"):  # each trial run carries its configuration's id
        assert tracking.trial_run("s", t, ids)[1]["config"] == ids[t["config_key"]]
    fewer, _ = report.summary_metrics(rows[rows.embed_dim == 64], PAIRS)  # an execution without c's proposal
    assert set(fewer) == {k for k in metrics if c not in k}  # the same keys for the others
    assert all(fewer[k] == metrics[k] for k in fewer if not k.startswith(("trials_", "configurations_"))
               and "p_holm" not in k)
    assert report.pair_key("impulse target_mass=0.9 - target_mass=0.5") == "impulse-reference"


def description(rows, compare=15):
    cells, diffs, names = report.by_config(rows, *report.summarize(rows, PAIRS), PAIRS)
    links = {"trials": "#/t", "report": "#/r", "images": {p: f"get-artifact?path={p}" for p in report.SUMMARY_PLOTS},
             "compare": {c: tracking.compare_path("1", [f"{i:032x}" for i in range(compare)]) for c in names}}
    return report.overview("s", rows, cells, diffs, names, PAIRS, links), names


def test_the_description_holds_the_tables_and_why_a_pair_was_not_formed():
    text, names = description(trials())
    assert len(text) <= tracking.NOTE_LIMIT
    assert "- **impulse − mimetic**: +10.00 to +14.00 pp over 3 configurations; p (Holm) < 0.05 in" in text
    row = next(line for line in text.splitlines() if line.startswith("| c") and "embed_dim=32" in line)
    cells = [c.strip("\u2003\u200b ") for c in row.strip("|").split("|")]
    assert cells == [config_ids(trials().config_key)[config_key({"model.embed_dim": 32, "init.target_mass": 0.5})],
                     "embed_dim=32 target_mass=0.5", "87.00 ± 1.96 (5)", "76.50 ± 0.98 (5)"]
    assert "- impulse − default: default did not run" in text
    assert description(trials().iloc[::-1].reset_index(drop=True))[0] == text  # whatever order the trials ended in
    assert all(f"[{c}](#/compare-runs?runs=[%22" in text for c in names)
    assert text.index(report.SUMMARY_PLOTS[0]) < text.index("| id") < text.index(report.SUMMARY_PLOTS[1])


def test_an_execution_whose_trials_all_failed_still_says_so():
    rows = trials(proposals=((64, 0.5),)).assign(status="ERROR", final_test_top1=None)
    metrics, params = report.summary_metrics(rows, PAIRS)
    assert metrics["trials_failed"] == 10 and not any("/" in k for k in metrics) and len(params) == 3  # objective
    assert (metrics["configurations_finished"], metrics["configurations_stopped"]) == (0, 0)
    text, _ = description(rows)
    assert "10 trials (10 error" in text and "- impulse − mimetic: no trial of impulse and mimetic finished" in text
    assert report.summary_plots("/nonexistent", *report.by_config(rows, *report.summarize(rows, PAIRS), PAIRS)) == []


@pytest.mark.slow
def test_a_long_description_gives_way_to_the_printed_links_then_to_the_report():
    big = trials(proposals=[(dim, mass) for dim in (32, 64, 96, 128) for mass in (0.3, 0.5, 0.7, 0.9, 0.95)])
    text, names = description(big)
    assert len(text) <= tracking.NOTE_LIMIT and 0 < text.count("compare-runs") < len(names)  # the first ones
    assert "the others: `structinit report s` prints them" in text and "| … |" not in text
    text, _ = description(trials(proposals=[(d, m / 100) for d in (32, 64, 96) for m in range(30, 60)]))
    assert len(text) <= tracking.NOTE_LIMIT and "compare-runs" not in text
    assert "Compare a configuration's runs (its inits and seeds): `structinit report s` prints a link for each" in text
    assert re.search(r"\| … \| \d+ more: report/report.md", text)


def test_the_summary_plots_are_drawn_and_named_to_come_first(tmp_path):
    rows = trials()
    made = report.summary_plots(str(tmp_path), *report.by_config(rows, *report.summarize(rows, PAIRS), PAIRS))
    assert [p.rsplit("/", 1)[1] for p in made] == list(report.SUMMARY_PLOTS) == sorted(report.SUMMARY_PLOTS)
    assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in made)
    assert sorted([*report.SUMMARY_PLOTS, "init", "report"])[:2] == list(report.SUMMARY_PLOTS)


def test_the_heatmap_colours_every_init_on_one_scale(tmp_path, monkeypatch):
    rows = trials(proposals=((32, 0.5), (64, 0.5))).assign(
        num_heads=lambda t: t.embed_dim // 16, filter_size=3, init_rank_k=7.0, kernel_size=None)
    scales = []
    monkeypatch.setattr(report, "_save", lambda fig, path: scales.extend(
        (im.norm.vmin, im.norm.vmax) for ax in fig.axes for im in ax.images) or path)
    assert report.plots(str(tmp_path), rows, pd.DataFrame(), pd.DataFrame(), {}, ("heads_vs_dim",))
    assert len(scales) == 2 and len(set(scales)) == 1  # two inits, one scale
    assert scales[0] == pytest.approx((76.5, 87.0))  # from the lowest cell of any init to the highest
