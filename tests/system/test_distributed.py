"""Ray cluster + MLflow tracking server (on PostgreSQL) scenarios (tests/system/cluster_scenarios.py), run where only the
loopback interface exists.

Ray 2.x binds its GCS, raylet and object-manager ports to every interface and has no setting to
narrow them; inside a fresh network namespace (``unshare --net``, as root) loopback is the
only interface, so everything the scenarios start is reachable from this machine alone.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow
SCENARIOS = Path(__file__).with_name("cluster_scenarios.py")


@pytest.mark.timeout(1500)
def test_ray_and_tracking_server_scenarios_on_a_loopback_only_network():
    missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"needs {' and '.join(missing)} (util-linux, iproute2) to isolate the Ray cluster")
    inner = (f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider -m slow "
             f"-o python_files=cluster_scenarios.py -s {SCENARIOS}")
    if os.geteuid() != 0:
        pytest.fail("needs root: the scenarios' PostgreSQL runs as Debian's postgres user inside the namespace")
    done = subprocess.run(["unshare", "--net", "sh", "-c", inner], capture_output=True,
                          text=True, timeout=1500, cwd=REPO)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert "2 passed" in done.stdout
    print(next((line for line in done.stdout.splitlines() if "killed Ray worker" in line), ""))
