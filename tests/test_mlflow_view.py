"""What a researcher sees in MLflow, on the smoke study's real records: experiments of the kind
that opens on training runs, the parent run carrying the study's answer (description, plots,
summary metrics keyed by init or pair and a configuration id its trial runs carry), provenance
and the dataset on every run, MLflow's system metrics on training runs, and the UI itself,
rendered by headless Chromium from a real `mlflow server` over the study's store."""
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from structinit import tracking
from structinit.config import config_ids
from structinit.report import SUMMARY_PLOTS, pair_key
from tests.helpers import free_port, stop

pytestmark = [pytest.mark.slow, pytest.mark.cluster]  # each reads the smoke study (its own Ray cluster)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"  # git-ignored; CI keeps what the tests leave here
PACKAGES = ("python", "structinit", "torch", "torchvision", "timm", "ray", "optuna", "mlflow")


def records(smoke_study):
    """(client, experiment, parent run, child runs) of the smoke study."""
    client = MlflowClient("sqlite:///" + str(smoke_study["folder"] / "mlflow.db"))
    exp = client.get_experiment_by_name("heads_vs_dim")
    parent = client.get_run(smoke_study["summary"]["parent_run_id"])
    return client, exp, parent, tracking.children(client, parent.info.run_id)


def git(*args) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10).stdout


def test_the_experiment_is_of_the_kind_that_opens_on_training_runs(smoke_study):
    _, exp, parent, _ = records(smoke_study)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    trials = f"#/experiments/{exp.experiment_id}/runs?viewStateShareKey=trials-{parent.info.run_id}&workflowType="
    assert f"{trials}machine_learning" in smoke_study["report"]  # the trials of the execution reported
    printed = [line for line in (smoke_study["report"] + smoke_study["study_output"]).splitlines()
               if line.startswith(("MLflow: ", "  compare "))]  # by each: the trials, a compare link per configuration
    links = [u for line in printed for u in re.findall(r"http://\S+", line)]
    assert len(links) == 4 and all(u.endswith("workflowType=machine_learning") for u in links)


def test_the_parent_run_carries_the_reports_summary(smoke_study):
    """The parent's metrics are the report's table (table.csv, paired.csv), value for value, keyed
    init or pair first, then the configuration's id, which its trial runs carry as tag `config`."""
    _, _, parent, kids = records(smoke_study)
    metrics, params = parent.data.metrics, parent.data.params
    report = smoke_study["folder"] / "runs" / "heads_vs_dim" / "report"
    table, paired = pd.read_csv(report / "table.csv"), pd.read_csv(report / "paired.csv")
    assert len(table) == 3 and len(paired) == 2  # one configuration x 3 inits; impulse - mimetic, - default
    (key,) = set(table.configs)
    cid = config_ids([key])[key]
    assert {r.data.tags["config"] for r in kids} == {cid} and {r.data.tags["config_key"] for r in kids} == {key}
    for r in table.itertuples():
        assert metrics[f"{r.init}/{cid}/final_test_top1"] == pytest.approx(r.final_test_top1_mean)
        assert metrics[f"{r.init}/{cid}/test_top1_at_best_val"] == pytest.approx(r.test_top1_at_best_val_mean)
    for r in paired.itertuples():
        at = f"{pair_key(r.pair)}/{cid}"
        assert metrics[f"{at}/mean"] == pytest.approx(r.mean)
        assert math.isnan(r.ci95) and f"{at}/ci95_low" not in metrics  # one seed: no interval, none logged
    assert (metrics["trials_finished"], metrics["trials_failed"]) == (3, 0)
    assert (metrics["configurations_finished"], metrics["configurations_stopped"]) == (1, 0)
    assert params["objective"] == "mean of val_top1"  # one configuration: no importance over configurations
    assert len(metrics) == 5 + 2 + 3 * 2 + 2 and not any(k.endswith("/n") for k in metrics)  # seeds: a param
    assert max(map(len, metrics)) <= 40 and params["seeds"] == "0"
    assert params["pairs"].startswith("impulse - mimetic, impulse - default")
    assert re.fullmatch(r"embed_dim=(32|64) num_heads=(2|4)", params[f"config.{cid}"])
    note = parent.data.tags["mlflow.note.content"]
    assert f"| {cid}\u2003\u200b | {params[f'config.{cid}']}" in note  # the table, in the run's description
    assert "- impulse − torch_default: torch_default did not run" in note


def test_every_run_says_where_it_came_from(smoke_study):
    import torch

    from structinit.data import fingerprint, load_splits

    _, _, parent, kids = records(smoke_study)
    commit, dirty = git("rev-parse", "HEAD").strip(), str(bool(git("status", "--porcelain").strip())).lower()
    assert len(commit) == 40
    digest = fingerprint("digits", None, load_splits("digits", None)[0])
    for run in [parent, *kids]:
        tags = run.data.tags
        assert (tags["mlflow.source.git.commit"], tags["mlflow.source.git.dirty"]) == (commit, dirty)
        assert (tags["mlflow.source.name"], tags["mlflow.source.type"]) == ("studies/heads_vs_dim.py", "LOCAL")
        assert all(tags[f"version.{p}"] not in ("", "unknown") for p in PACKAGES), tags
        assert tags["hostname"] == socket.gethostname()
        inputs = run.inputs.dataset_inputs
        assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("digits", digest)]
        assert json.loads(inputs[0].dataset.profile) == {"pool": 898, "test": 899, "classes": 10}
    assert not {"PATH", "HOME", "RAY_AUTH_MODE"} & set(parent.data.tags)  # no environment dump
    assert {t.key: t.value for t in parent.inputs.dataset_inputs[0].tags} == {
        "mlflow.data.context": "study", "fraction": "1.0", "seeds": "0"}
    for run in kids:  # what the training worker adds: the device, CUDA/cuDNN, the splits it drew
        tags = run.data.tags
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        assert tags["device"] == "cpu" and tags["version.cuda"] == (torch.version.cuda or "none")
        assert tags["version.cudnn"] == (str(cudnn) if cudnn else "none")
        drew = {t.key: t.value for t in run.inputs.dataset_inputs[0].tags}
        assert drew == {"mlflow.data.context": "training", "train": "808", "val": "90", "test": "899",
                        "fraction": "1.0", "val_fraction": "0.1", "val_size": "500", "seed": "0"}


def test_training_runs_have_mlflows_system_metrics(smoke_study):
    client, _, parent, kids = records(smoke_study)
    for run in kids:
        cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        memory = client.get_metric_history(run.info.run_id, "system/system_memory_usage_megabytes")
        assert cpu and memory and all(0 <= m.value <= 100 for m in cpu)
        assert memory[0].value > 0
    assert not any(k.startswith("system/") for k in parent.data.metrics)  # the study's driver trains nothing


@pytest.fixture(scope="module")
def mlflow_server(smoke_study):
    """A real `mlflow server` on 127.0.0.1 over the smoke study's store (one worker, no job
    runner), shared by this module's browser tests: yields its URL; stopped (its process group)
    afterwards."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                               "sqlite:///" + str(smoke_study["folder"] / "mlflow.db"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        yield url
    finally:
        stop(server)


def chromium(*args: str) -> str:
    """Headless Chromium's stdout for `args` (the page rendered after up to 15 s of virtual time)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "the browser check needs Chromium: apt-get install chromium (.ci/run installs it)"
    out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--virtual-time-budget=15000", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def page(url: str) -> tuple[str, str, str]:
    """(title, visible text, DOM) of a page as Chromium renders it in a window wide enough for every
    column of a runs table (its grid renders only the columns in view)."""
    dom = chromium("--window-size=2400,1400", "--dump-dom", url)
    title = re.search(r"<title>(.*?)</title>", dom, re.S).group(1)
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S))
    return title, " ".join(text.split()), dom


def shot(url: str, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    chromium(f"--screenshot={ARTIFACTS / name}", "--window-size=1600,1000", url)
    assert (ARTIFACTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_printed_link_lists_the_trials_by_final_accuracy(smoke_study, mlflow_server):
    """The link the study and report print opens the execution's trial runs flat (not its parent),
    with the final test top-1 column, best first."""
    _, exp, parent, kids = records(smoke_study)
    printed = re.search(r"MLflow: .*?(http://127\.0\.0\.1:5000/(\S+))", smoke_study["report"]).group(2)
    assert printed in smoke_study["study_output"]  # the study printed it too
    link = f"{mlflow_server}/{printed}"
    title, text, _ = page(link)
    assert title.startswith("Runs - Experiment"), title
    assert "3 matching runs" in text and text.count("Hide run") == 3  # the trials, not their parent
    header = text[text.index("Run Name"):text.index("Hide run")]
    assert "final_test_top1" in header and "config" in header and "Version" in header  # the view's columns
    final = {r.info.run_name: r.data.metrics["final_test_top1"] for r in kids}
    best_first = sorted(final, key=final.get, reverse=True)
    assert sorted(best_first, key=text.index) == best_first  # listed best first
    assert all(f"{v}" in text for v in final.values())  # the column's values
    shot(link, "mlflow-study-runs.png")


def test_the_parents_overview_shows_the_table_and_the_forest_plot_is_its_artifact(smoke_study, mlflow_server):
    _, exp, parent, _ = records(smoke_study)
    report = smoke_study["folder"] / "runs" / "heads_vs_dim" / "report"
    table = pd.read_csv(report / "table.csv")
    cid = config_ids(table.configs)[table.configs[0]]
    run_page = f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}"
    _, text, dom = page(f"{run_page}?workflowType=machine_learning")
    note = dom[dom.index('data-testid="note-editor-preview-content"'):]
    rows = [[" ".join(re.sub(r"<[^>]+>", " ", c).replace("\u200b", "").split())
             for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", note[:note.index("</table>")], re.S)]  # its first table's cells
    assert rows[0] == ["id", "configuration", "impulse", "mimetic", "default"]  # the table, rendered
    by_init = table.set_index("init")
    assert rows[1] == [cid, parent.data.params[f"config.{cid}"], *(
        f"{by_init.final_test_top1_mean[i]:.2f} (1)" for i in ("impulse", "mimetic", "default"))]
    forest = f"get-artifact?path={SUMMARY_PLOTS[0]}&amp;run_uuid={parent.info.run_id}"
    assert f'<img src="{forest}"' in note and "impulse − mimetic" in text  # the forest plot, in the Overview
    shot(f"{run_page}?workflowType=machine_learning", "mlflow-study-overview.png")
    _, text, _ = page(f"{run_page}/artifacts?workflowType=machine_learning")
    assert all(name in text for name in SUMMARY_PLOTS)  # listed in the parent's artifacts
    assert text.index("report") < text.index(SUMMARY_PLOTS[0]) < text.index(SUMMARY_PLOTS[1])  # the first files
    png = urllib.request.urlopen(f"{mlflow_server}/{forest.replace('&amp;', '&')}", timeout=30).read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_renders_under_the_parents_artifacts(smoke_study, mlflow_server):
    _, exp, parent, _ = records(smoke_study)
    run_page = f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}"
    _, text, _ = page(f"{run_page}/artifacts/report/report.md")
    assert "report/report.md" in text and "3 trials: 3 terminated" in text  # the report, rendered from the server
    report = urllib.request.urlopen(f"{mlflow_server}/get-artifact?path=report/report.md&run_uuid="
                                    f"{parent.info.run_id}", timeout=30).read().decode()
    assert report == (smoke_study["folder"] / "runs" / "heads_vs_dim" / "report" / "report.md").read_text()
