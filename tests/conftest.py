import os

import pytest

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster for the session, small enough for a 2-core machine."""
    import ray

    ray.init(num_cpus=4, include_dashboard=True, log_to_driver=False)
    yield ray
    ray.shutdown()
