"""What the repository promises beyond any one module: its servers listen on loopback, its configs
instantiate nothing but nst's own classes."""

import subprocess

from tests.helpers import REPO


def test_servers_bind_loopback():
    done = subprocess.run(["make", "-n", "ui"], capture_output=True, text=True, cwd=REPO, check=True)
    assert "--host 127.0.0.1" in done.stdout


def test_configs_name_no_instantiate_target_outside_nst():
    targets = [line.split(":", 1)[1].strip() for path in (REPO / "conf").rglob("*.yaml")
               for line in path.read_text().splitlines() if line.strip().startswith("_target_")]
    # nst's own classes, and the launcher Hydra only accepts under hydra_plugins (a subclass of nst's)
    assert targets and all(t.startswith(("nst.", "hydra_plugins.nst_launcher.")) for t in targets)
    for path in (REPO / "nst").rglob("*.py"):
        assert "instantiate(" not in path.read_text(), path
