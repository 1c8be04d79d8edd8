"""The Ray cluster: which one to attach to (or start), how much it can hold or scale to, what a
trial driver holds there, and the checks only a cluster can answer. Plain values in and out; the
one module that reads Ray's private lookups (`ray._private`)."""
from __future__ import annotations

import math
import os
import socket

from structinit.validate import check

DRIVER = "trial_driver"  # custom resource that trial drivers hold
BOOTSTRAP = "~/ray_bootstrap_config.yaml"  # the autoscaling config `ray up` leaves on the head
PROBE_S = 3.0  # how long check_address waits for a cluster's port to accept a connection


def check_address(address: str | None) -> None:
    """None (then RAY_ADDRESS, if set, is checked), 'local', 'auto', HOST:PORT or ray://HOST:PORT,
    where something must accept a connection within PROBE_S and, at HOST:PORT, answer as a Ray
    cluster's GCS (`check_gcs`): ray.init would wait minutes, or for ever, on anything else."""
    import re

    name = "address" if address is not None else "RAY_ADDRESS"
    address = address if address is not None else os.environ.get("RAY_ADDRESS")
    if address == "auto":  # ray.init would fail after the run's records were made
        from ray._private.services import canonicalize_bootstrap_address

        try:
            found = canonicalize_bootstrap_address("auto")
        except (ConnectionError, ValueError):
            found = None
        check(name, address, "'auto' where a Ray cluster runs on this machine (none found: `ray start --head`, or "
              "leave the address out for a new local one)", found is not None)
    if address is None or address in ("local", "auto"):
        return
    check(name, address, "HOST:PORT, ray://HOST:PORT, 'auto' or 'local'",
          re.fullmatch(r"(ray://)?[\w.\-\[\]:]+:\d{1,5}", address) is not None)
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_S).close()
    except (OSError, OverflowError) as err:  # OverflowError: a port beyond 65535
        check(name, address, f"a Ray cluster answering there (`ray start --head`): connecting failed ({err})", False)
    if not address.startswith("ray://"):  # a Ray Client server is not a GCS
        check_gcs(name, address)


def check_gcs(name: str, address: str) -> None:
    """What accepts connections at HOST:PORT answers Ray's GCS call GetClusterId (the first one
    ray.init makes) within PROBE_S, on the channel Ray itself opens to a GCS (its TLS and token
    settings). A refusal of the call (e.g. UNAUTHENTICATED) is still a GCS answering: ray.init
    says the rest. Imports Ray: only once something listens there."""
    import grpc
    from ray._private.gcs_utils import create_gcs_channel
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = create_gcs_channel(address)
    try:
        gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
            gcs_service_pb2.GetClusterIdRequest(), timeout=PROBE_S)
    except grpc.RpcError as err:
        silent = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED)
        check(name, address, f"a Ray cluster answering there (`ray start --head`): something listens there but "
              f"does not answer as a Ray GCS within {PROBE_S:g} s ({err.code().name})", err.code() not in silent)
    finally:
        channel.close()


def starts_local(address: str | None) -> bool:
    """Whether `connect(address)` starts a new local cluster (see there)."""
    from ray._private.services import canonicalize_bootstrap_address  # ray.init's own lookup

    return address == "local" or (address is None and canonicalize_bootstrap_address(None) is None)


def starts_here(address: str | None) -> bool:
    """Whether this process would start a new local cluster: it is attached to none yet, and
    `connect(address)` starts one (`starts_local`)."""
    import ray

    return not ray.is_initialized() and starts_local(address)


def shown(gpus: float):
    """A GPU count as given: 1, not 1.0; 0.25 as it is."""
    return int(gpus) if float(gpus).is_integer() else gpus


def check_local_gpus(address: str | None, gpus: float, name: str = "gpus_per_trial", value=None) -> None:
    """Where `connect(address)` would start a new local cluster for trials of `gpus` GPUs, this
    machine must have them (checked before anything starts); refused naming the flag `name` and its
    `value` (default: `gpus`)."""
    if gpus and starts_here(address):
        import torch

        here = torch.cuda.device_count()
        check(name, shown(gpus) if value is None else value, f"a cluster with GPUs: this machine has {here} (attach "
              "to a GPU cluster with --address or RAY_ADDRESS)", here >= gpus)


def fits(workers: int, cpus_per_worker: int, gpus_per_worker: float, have: dict, where: str,
         name: str = "workers") -> None:
    """A trial of `workers` Train workers, each of `cpus_per_worker` CPUs and `gpus_per_worker`
    GPUs, fits in the resources `have` (CPU, GPU) of `where`: Ray would otherwise wait for them for
    ever, retrying the worker group. Refused naming the flag `name`."""
    cpus, gpus = workers * cpus_per_worker, workers * gpus_per_worker
    check(name, workers, f"workers x cpus_per_worker = {workers} x {cpus_per_worker} = {cpus} CPUs within the "
          f"{have.get('CPU', 0):g} of {where}", cpus <= have.get("CPU", 0))
    if gpus:
        check(name, workers, f"workers x gpu_share = {workers} x {gpus_per_worker:g} = {gpus:g} GPUs within the "
              f"{have.get('GPU', 0):g} of {where}", gpus <= have.get("GPU", 0) + 1e-9)


def local_resources() -> dict:
    """What a local cluster started here has: this machine's CPUs and the GPUs torch sees."""
    import torch

    return {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}


def check_resources(workers: int, cpus_per_worker: int, gpus_per_worker: float, name: str = "workers") -> None:
    """A trial of this shape fits in what the connected cluster has or can scale to (`capacity`)."""
    fits(workers, cpus_per_worker, gpus_per_worker, capacity(), "the Ray cluster (what it has or can scale to)", name)


def connect(address: str | None, num_cpus: int, num_gpus: int | None = None, resources: dict | None = None):
    """Attach to a Ray cluster, or start a local one of this size (`start_local`: isolated from
    any other on this machine); returns ray.init's context.

    address None: RAY_ADDRESS, else the cluster `ray start` runs on this machine (the head of a
    `ray up` cluster, where `ray submit` runs studies; studies that should share one machine's
    resources attach to one such cluster), else a new local cluster. "local": always a new local
    cluster. Anything else ("HOST:PORT", "ray://..."): that cluster."""
    import ray

    check_address(address)
    if starts_local(address):
        return start_local(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources)
    return ray.init(address=address or "auto")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def start_local(**init):
    """A new local cluster (ray.init's `init` arguments; its dashboard on 127.0.0.1, Ray's default)
    that no Ray component of another cluster on this machine can be confused with, nor it with them.

    Ray components that look a cluster up without being told its address (the State API, used
    inside the cluster by Train's PlacementGroupCleaner and its state actor) take RAY_ADDRESS, else
    the address file of the last `ray start`, else the one GCS process running here; with two local
    clusters they fail ("Found multiple active Ray instances") or, after a `ray start`, ask the
    wrong cluster. So the GCS gets a port chosen here (RAY_GCS_SERVER_PORT, read by Ray's head) and
    its address is in RAY_ADDRESS while ray.init starts the cluster's processes: every raylet,
    worker and actor inherits it. This process's environment is restored afterwards (a later
    ray.init here must not attach to this cluster once it is gone); it passes the address itself."""
    import ray
    from ray.util import get_node_ip_address

    saved = {k: os.environ.get(k) for k in ("RAY_GCS_SERVER_PORT", "RAY_ADDRESS")}
    for attempt in (1, 2):
        port = _free_port()
        os.environ.update(RAY_GCS_SERVER_PORT=str(port), RAY_ADDRESS=f"{get_node_ip_address()}:{port}")
        try:
            return ray.init(address="local", **init)  # "local": RAY_ADDRESS does not redirect it
        except RuntimeError as err:  # the port was taken between the probe and the GCS binding it
            ray.shutdown()
            if attempt == 2 or "Failed to start GCS" not in str(err):
                raise
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def driver_resources() -> dict:
    """What a trial driver (the Tune trainable that runs `fit`) holds: one unit of the custom
    resource DRIVER where the cluster has it (a local cluster, the head of the cloud configs: it
    pins drivers to a safe node and leaves every CPU to Train workers), else a sliver of a CPU."""
    import ray

    return {"CPU": 0, DRIVER: 1} if ray.cluster_resources().get(DRIVER) else {"CPU": 0.1}


def scalable(path: str) -> dict:
    """The resources an autoscaling config's worker node types can add at most."""
    import yaml

    path = os.path.expanduser(path)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        cfg = yaml.safe_load(f)
    out: dict = {}
    for name, node in cfg.get("available_node_types", {}).items():
        if name != cfg.get("head_node_type"):
            count = min(node.get("max_workers", 0), cfg.get("max_workers", math.inf))
            for key, value in node.get("resources", {}).items():
                out[key] = out.get(key, 0) + count * value
    return out


def capacity() -> dict:
    """The most of each resource the cluster can hold: what it has now or, under an autoscaler,
    what its worker types can scale to: the cluster config the autoscaler reports to the GCS (v2,
    KubeRay; Ray Train reads it the same way), else the autoscaling YAML on this head
    (STRUCTINIT_AUTOSCALING_CONFIG, default the one `ray up` writes)."""
    import ray
    from ray._private.state import state

    now = ray.cluster_resources()
    limits = (state.get_max_resources_from_cluster_config()
              or scalable(os.environ.get("STRUCTINIT_AUTOSCALING_CONFIG", BOOTSTRAP)))
    return {k: max(now.get(k, 0), limits.get(k, 0)) for k in {*now, *limits}}


def concurrency(workers: int, cpus_per_worker: int, gpus_per_worker: float) -> int:
    """Trials at once: what the cluster can hold or scale to (GPUs for GPU trials, else CPUs),
    for trials of `workers` Train workers; a share of a GPU each (0.25) packs that many more."""
    most = capacity()
    if gpus_per_worker:
        return max(1, int(most.get("GPU", 0) / (workers * gpus_per_worker) + 1e-9))
    return max(1, int(most.get("CPU", 1) // (workers * cpus_per_worker)))


def check_cluster(gpus: int, checkpoints: str) -> None:
    """What only the connected cluster can tell, before any trial starts: trials of `gpus` GPUs
    need GPUs it has or can scale to; on several machines, `checkpoints` must be storage every
    node reaches (a URI)."""
    import ray

    if gpus:
        most = capacity().get("GPU", 0)
        check("gpus_per_trial", shown(gpus), f"a cluster with GPUs (this one has or can scale to {most})", most >= gpus)
    hosts = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    check("checkpoints", checkpoints,
          f"a URI (s3://..., gs://...) or a shared folder: this cluster spans {len(hosts)} machines",
          len(hosts) == 1 or "://" in checkpoints)


def placement_groups_left(timeout: float = 60.0) -> int | None:
    """How many placement groups this job (this driver and the actors it started: Tune's trials,
    Train's controllers) still holds on the connected cluster, asked through the State API at this
    cluster's own address; waits up to `timeout` s for them to go (Train's PlacementGroupCleaner
    removes those of a controller that died, checking every second). None: the State API did not
    answer (a cluster without the dashboard)."""
    import time

    import ray
    from ray.util.state import list_placement_groups
    from ray.util.state.exception import RayStateApiException

    context = ray.get_runtime_context()
    mine = [("creator_job_id", "=", context.get_job_id()), ("state", "!=", "REMOVED")]
    deadline = time.monotonic() + timeout
    while True:
        try:
            left = list_placement_groups(address=context.gcs_address, filters=mine, raise_on_missing_output=False)
        except (RayStateApiException, ConnectionError):
            return None
        if not left or time.monotonic() > deadline:
            return len(left)
        time.sleep(1)
