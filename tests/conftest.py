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
