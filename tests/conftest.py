import os

import pytest

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture
def ray_local():
    """A real local Ray cluster, small enough for a 2-core machine: started by the first test
    that asks, shared by the next ones (tests that need another cluster shut it down first)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=True, log_to_driver=False)
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
