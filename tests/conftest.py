import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture
def ray_local():
    """A real local Ray cluster, small enough for a 2-core machine: started by the first test
    that asks, shared by the next ones (tests that need another cluster shut it down first).
    Started as a study starts its own (cluster.start_local): its components find it, not another
    cluster running on this machine."""
    import ray

    from structinit.cluster import start_local

    if not ray.is_initialized():
        start_local(num_cpus=4, include_dashboard=True, log_to_driver=False)
    return ray


@pytest.fixture(scope="session", autouse=True)
def _stop_ray():
    yield
    import ray

    ray.shutdown()


@pytest.fixture
def two_nodes(request):
    """A head with one CPU and the trial-driver resource, and a second node: by default two CPUs
    and one fake GPU, else the resources given by indirect parametrization. Yields (cluster, node)."""
    import ray
    from ray.cluster_utils import Cluster

    from structinit.cluster import DRIVER

    ray.shutdown()  # the shared local cluster, if a test started it
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {DRIVER: 100}})
    node = cluster.add_node(**getattr(request, "param", {"num_cpus": 2, "num_gpus": 1}))
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, node
    ray.shutdown()
    cluster.shutdown()


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    """The heads-vs-dim smoke study run once, as a user runs it (its script, then `structinit
    report`), in a fresh folder with a SQLite MLflow store; shared by every test that reads its
    records. Returns {"folder", "summary": the study's JSON line, "study_output": the study's stdout before it,
    "report": the report's stdout}."""
    folder = tmp_path_factory.mktemp("smoke_study")
    out = subprocess.run([sys.executable, str(ROOT / "studies" / "heads_vs_dim.py"), "--preset", "smoke"],
                         capture_output=True, text=True, timeout=900, cwd=folder)
    assert out.returncode == 0, out.stderr[-4000:]
    rep = subprocess.run([str(Path(sys.executable).parent / "structinit"), "report", "heads_vs_dim"],
                         capture_output=True, text=True, timeout=300, cwd=folder)
    assert rep.returncode == 0, rep.stderr[-2000:]
    *printed, summary = out.stdout.strip().splitlines()
    return {"folder": folder, "summary": json.loads(summary), "study_output": "\n".join(printed), "report": rep.stdout}
