"""Security: services the project starts listen on loopback, the cluster configs open only SSH and
carry Ray's auth token to every node, checkpoints never unpickle code, no credentials anywhere."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from structinit import tracking
from structinit.checkpoint import load_state

ROOT = Path(__file__).resolve().parents[1]
CLOUD = [ROOT / "cluster" / "gpu.yaml", ROOT / "cluster" / "gcp.yaml"]


def listening(port: int) -> set[str]:
    """The addresses a TCP port listens on, from the kernel's tables (/proc/net/tcp, tcp6)."""
    import ipaddress

    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            ip, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(ip)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # host-order words
                out.add(str(ipaddress.ip_address(words)))
    return out


class Payload:
    """What a tampered checkpoint on shared storage could hold: unpickling it runs a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def tampered(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "state.pt"
    torch.save({"model": {}, "epoch": Payload(marker)}, path)
    return path, marker


def test_a_tampered_checkpoint_is_refused_not_run(tampered):
    path, marker = tampered
    with pytest.raises(ValueError, match=r"checkpoint='.*state.pt' is not allowed: expected a state.pt of tensors"):
        load_state(str(path), "cpu")
    assert not marker.exists()


@pytest.mark.slow
def test_rank_cli_refuses_a_tampered_checkpoint(tampered):
    path, marker = tampered
    out = subprocess.run([str(Path(sys.executable).parent / "structinit"), "rank", "--checkpoint", str(path),
                          "--model", "vit_nano_patch2_8"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr[-2000:]
    assert "weights_only" in out.stderr and not marker.exists()


@pytest.mark.slow
@pytest.mark.cluster
def test_a_local_cluster_serves_its_dashboard_on_loopback_only():
    import ray

    from structinit.cluster import connect

    ray.shutdown()  # the shared local cluster, if a test started it: this one is started the project's way
    context = connect("local", num_cpus=1)
    try:
        port = int(context.dashboard_url.rsplit(":", 1)[1])
        assert listening(port) == {"127.0.0.1"}
    finally:
        ray.shutdown()


@pytest.mark.parametrize("path", CLOUD, ids=[p.name for p in CLOUD])
def test_cloud_configs_open_only_ssh_and_carry_the_auth_token(path):
    cfg = yaml.safe_load(path.read_text())
    group = cfg["provider"].get("security_group", {})
    opened = {p.get("FromPort") for p in group.get("IpPermissions", [])}
    assert opened <= {22}  # Ray's own rules add SSH and traffic inside the group; nothing else from outside
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"  # every node holds the token
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert sum("RAY_AUTH_MODE=token ray start" in c for c in starts) == 2  # head and workers require it
    assert any("export RAY_AUTH_MODE=token" in c for c in cfg["setup_commands"])  # and every client on a node
    mlflow = next(c for c in cfg["head_start_ray_commands"] if "mlflow server" in c)
    assert "--allowed-hosts" in mlflow  # MLflow answers only to its own names (no DNS rebinding)


SECRETS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret key": r"aws_secret_access_key\s*[=:]\s*\S{20,}",
    "private key": r"-----BEGIN (RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----",
    "GCP service-account key": r'"private_key"\s*:\s*"-----BEGIN',
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36}\b",
    "Slack token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    "password in a URI": r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"*]+@(?!\{)",
}


def test_no_credentials_in_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert len(files) > 50
    found = []
    for name in files:
        text = (ROOT / name).read_text(errors="ignore") if (ROOT / name).is_file() else ""
        found += [f"{name}: {kind}" for kind, pattern in SECRETS.items() if re.search(pattern, text)]
    assert not found, found


def test_the_scan_would_find_them():
    planted = ("AKIA" + "ABCDEFGHIJKLMNOP", "-----BEGIN RSA " + "PRIVATE KEY-----",  # split: this file is scanned
               "postgresql://bob:" + "hunter2@db/x", "ghp_" + "a" * 36)
    assert all(any(re.search(p, text) for p in SECRETS.values()) for text in planted)


def test_messages_never_print_a_uri_password():
    uri = "http://alice:" + "s3cret@127.0.0.1:9"
    assert tracking.shown(uri) == "http://alice:***@127.0.0.1:9"
    with pytest.raises(ValueError) as err:
        tracking.check(uri)
    assert "s3cret" not in str(err.value) and "alice:***@" in str(err.value)
