"""Cluster: the launcher configs pass Ray's own schema, a GPU trial lands on a (fake) GPU node of a
two-node cluster, and the fake-GPU autoscaler adds nodes for GPU trials and removes them when idle."""
import copy
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from structinit.cluster import DRIVER
from structinit.config import make
from structinit.runner import run
from structinit.study import Study, heads_and_dims
from tests.helpers import free_port, stop

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "cluster").glob("*.yaml"))


def prepared(cfg: dict) -> dict:
    """Ray's own `prepare_config` (merge the provider's defaults, fill node type limits). The
    wheel lacks the defaults file of the fake_multinode provider, so for it the config, which
    spells out every key, stands in as its own defaults."""
    from ray.autoscaler._private import providers
    from ray.autoscaler._private.util import prepare_config

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(cfg, f)
        f.flush()
        with mock.patch.dict(providers._DEFAULT_CONFIGS, {"fake_multinode": lambda: f.name}):
            return prepare_config(copy.deepcopy(cfg))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_cluster_config_passes_rays_schema(path):
    from ray.autoscaler._private.util import validate_config

    cfg = yaml.safe_load(path.read_text())
    validate_config(prepared(cfg))
    workers = [t for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]]
    assert all(t.get("min_workers", 0) == 0 for t in workers)  # GPU nodes scale from zero
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"][DRIVER] > 0  # trial drivers pinned


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
@pytest.mark.parametrize("breakage", ["misspelt key", "min above max"])
def test_broken_cluster_config_is_rejected(path, breakage):
    from ray.autoscaler._private.util import validate_config

    cfg = yaml.safe_load(path.read_text())
    worker = next(n for n in cfg["available_node_types"] if n != cfg["head_node_type"])
    if breakage == "misspelt key":
        node = cfg["available_node_types"][worker]
        node["min_workerz"] = node.pop("min_workers")
        match = "min_workerz"
    else:
        cfg["available_node_types"][worker]["min_workers"] = cfg["max_workers"] + 1
        match = "max_workers"
    with pytest.raises(Exception, match=match):
        validate_config(prepared(cfg))


def gpu_study(tmp_path, name, **kw) -> Study:
    trial = make("digits", recipe_overrides=dict(epochs=1, warmup_epochs=0), model_overrides=dict(depth=2),
                 gpu=True, backend="gloo")  # fake GPUs: torch sees no CUDA, so gloo and the CPU
    return Study(name, trial, partial(heads_and_dims, dims=[32], heads=[2]), num_configs=1, inits=("impulse",),
                 seeds=(0,), storage=str(tmp_path / "runs"),
                 tracking_uri="sqlite:///" + str(tmp_path / "mlflow.db"), **kw)


def child_tags(uri: str, study: str, parent: str) -> list[dict]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    return [r.data.tags | {"status": r.info.status} for r in runs]


@pytest.mark.slow
@pytest.mark.cluster
def test_gpu_trial_runs_on_the_gpu_node(two_nodes, tmp_path):
    _, gpu_node = two_nodes
    study = gpu_study(tmp_path, "two_nodes")
    out = run(study)
    trials = pd.read_parquet(out["trials"])
    assert list(trials.status) == ["TERMINATED"] and (trials.epochs_done == 1).all()
    (tags,) = child_tags(study.tracking_uri, study.name, out["parent_run_id"])
    assert tags["node_id"] == gpu_node.node_id and tags["status"] == "FINISHED"
    assert tags["device"] == "cpu"  # the fake GPU has no CUDA behind it: the worker fell back, loudly


@pytest.mark.slow
@pytest.mark.cluster
def test_trials_with_a_share_of_a_gpu_are_packed_on_one(two_nodes, tmp_path):
    """gpu_share 0.5: two one-worker trials train at once on the node's one (fake) GPU."""
    import dataclasses

    from structinit import cluster

    _, gpu_node = two_nodes
    study = gpu_study(tmp_path, "shared_gpu")
    study = dataclasses.replace(study, inits=("impulse", "default"),
                                trial=dataclasses.replace(study.trial, gpu_share=0.5))
    assert cluster.concurrency(1, 1, 0.5) == 2 and cluster.concurrency(1, 1, 1.0) == 1
    out = run(study)
    trials = pd.read_parquet(out["trials"])
    assert sorted(trials.status) == ["TERMINATED"] * 2
    client = MlflowClient(study.tracking_uri)
    exp = client.get_experiment_by_name(study.name)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{out['parent_run_id']}'")
    assert {r.data.tags["node_id"] for r in runs} == {gpu_node.node_id}
    assert max(r.info.start_time for r in runs) < min(r.info.end_time for r in runs)  # they overlapped


@pytest.mark.slow
@pytest.mark.cluster
def test_gpu_study_needs_a_cluster_with_gpus(ray_local, tmp_path):
    with pytest.raises(ValueError, match=r"gpus_per_trial=1 is not allowed: expected a cluster with GPUs"):
        run(gpu_study(tmp_path, "no_gpus"))
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was recorded


WATCH = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
while True:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    print(json.dumps({"t": time.time(), "nodes": {n["NodeID"]: n["Resources"].get("GPU", 0) for n in nodes}}),
          flush=True)
    time.sleep(1)
"""


@pytest.mark.slow
@pytest.mark.cluster
def test_autoscaler_adds_fake_gpu_nodes_for_gpu_trials_and_removes_them(tmp_path):
    """`ray start --head --autoscaling-config cluster/local-fake-gpu.yaml` (no GPU on the head); a
    smoke study asks for GPU trials; the autoscaler adds fake GPU nodes, the trials train there,
    and the nodes go after the config's idle timeout (0.2 min)."""
    bin_dir = Path(sys.executable).parent
    from ray.util import get_node_ip_address

    temp = tempfile.mkdtemp(prefix="rf", dir="/tmp")  # its own temp dir: its address file stays there
    port = free_port()
    address = f"{get_node_ip_address()}:{port}"
    config = tmp_path / "local-fake-gpu.yaml"  # the shipped config, with the head on a free port
    cfg = yaml.safe_load((ROOT / "cluster" / "local-fake-gpu.yaml").read_text())
    cfg["provider"]["gcs_address"] = address
    config.write_text(yaml.safe_dump(cfg))
    token = tmp_path / "auth_token"  # token auth, as the cloud configs should run it: every client holds the token
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = {**os.environ, **auth, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", f"--port={port}", f"--temp-dir={temp}",
         f"--autoscaling-config={config}", "--num-cpus=1", "--num-gpus=0",
         f"--resources={json.dumps({DRIVER: 100})}", f"--dashboard-port={free_port()}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    watch = intruder = None
    try:
        watch = subprocess.Popen([sys.executable, "-c", WATCH, address], stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, **auth}, start_new_session=True)
        first = json.loads(next(line for line in watch.stdout if line.startswith('{"t"')))  # the head answers
        assert sum(first["nodes"].values()) == 0  # no GPU anywhere yet
        intruder = subprocess.Popen(  # a client with the wrong token, while the study runs
            [sys.executable, "-c", f"import ray; ray.init(address='{address}'); print('CONNECTED')"],
            env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        study = subprocess.run(
            [sys.executable, str(ROOT / "studies" / "heads_vs_dim.py"), "--preset", "smoke", "--inits", "impulse,default",
             "--epochs", "1", "--gpus-per-trial", "1", "--set", 'backend="gloo"'],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,  # attaches through RAY_ADDRESS, as `ray submit` would find its head
            env={**os.environ, **auth, "RAY_ADDRESS": address, "STRUCTINIT_AUTOSCALING_CONFIG": str(config)})
        assert study.returncode == 0, study.stderr[-4000:]
        ended = time.time()
        refused = intruder.communicate(timeout=120)[0]
        assert intruder.returncode != 0 and "CONNECTED" not in refused  # token auth keeps it out
        secret = token.read_text()
        assert secret not in study.stdout + study.stderr + (tmp_path / "head.log").read_text()  # never logged
        summary = json.loads(study.stdout.strip().splitlines()[-1])
        seen, gpu_nodes, gone = [], set(), None
        for line in watch.stdout:  # follow the cluster until the GPU nodes are gone
            if not line.startswith('{"t"'):  # the driver also prints the autoscaler's events
                continue
            seen.append(json.loads(line))
            gpu_nodes |= {n for n, g in seen[-1]["nodes"].items() if g}
            if seen[-1]["t"] > ended and not any(seen[-1]["nodes"].values()):
                gone = seen[-1]["t"] - ended
                break
            if seen[-1]["t"] - ended > 120:
                break
        assert gone is not None, f"GPU nodes still up 120 s after the study: {seen[-1]}"
        tags = child_tags("sqlite:///" + str(tmp_path / "mlflow.db"), "heads_vs_dim", summary["parent_run_id"])
        assert len(tags) == 2 and all(t["status"] == "FINISHED" for t in tags)
        assert {t["node_id"] for t in tags} <= gpu_nodes  # both trials trained on autoscaled GPU nodes
        assert len(gpu_nodes) == 2  # concurrency followed the 2 GPUs the config can scale to
        print(f"GPU nodes used: {len(gpu_nodes)}; all gone {gone:.1f} s after the study ended")
    finally:
        for proc in (intruder, watch, head):
            if proc is not None:
                stop(proc)
        log.close()
