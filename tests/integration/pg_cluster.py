"""The local PostgreSQL cluster for tests that restart or stop it (Debian's pg_ctlcluster, as root).

``restartable_cluster`` (a fixture: import it into the test module, use it with ``usefixtures``)
skips a test unless it may restart the local cluster, and leaves the cluster running afterwards,
whatever happened.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.waiting import eventually_sync

CLUSTER = ("15", "main")


def cluster_cmd(action: str) -> list[str]:
    return ["pg_ctlcluster", "--skip-systemctl-redirect", *CLUSTER, action]


def _pg_ready() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], check=False,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=15).returncode == 0


def ensure_cluster_running(timeout: float = 60.0) -> None:
    """Start the cluster if it is down, and wait (``pg_isready``) until it accepts connections."""
    if _pg_ready():
        return
    if subprocess.run(["pg_lsclusters", "-h", *CLUSTER], check=False, capture_output=True,
                      text=True, timeout=15).stdout.split()[3:4] != ["online"]:
        subprocess.run(cluster_cmd("start"), check=False, capture_output=True, timeout=60)
    try:
        eventually_sync(_pg_ready, "PostgreSQL to accept connections", timeout, poll_s=0.1)
    except AssertionError:
        raise RuntimeError(f"PostgreSQL cluster {' '.join(CLUSTER)} is not accepting connections {timeout}s "
                           f"later; start it: {' '.join(cluster_cmd('start'))}") from None


@pytest.fixture
def restartable_cluster() -> Iterator[None]:
    """Skip unless this test may restart the local cluster; leave it running afterwards, whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs root (pg_ctlcluster)")
    for tool in ("pg_ctlcluster", "pg_isready", "pg_lsclusters"):
        if shutil.which(tool) is None:
            pytest.skip(f"restarting PostgreSQL needs {tool} (Debian's postgresql-common)")
    if os.environ.get("DURO_PG_URL") and "127.0.0.1:5432" not in os.environ["DURO_PG_URL"]:
        pytest.skip("DURO_PG_URL names another server than the local cluster this test restarts")
    try:
        yield
    finally:
        ensure_cluster_running()
