"""``make cluster`` / ``make cluster-stop`` (``nst.cli.cluster``): the configs it writes, the line it refuses
with, and (slow) a second cluster started and stopped beside the running one, leaving nothing behind."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from nst.cli import cluster as team


def read_conf(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and " " not in line)


def test_the_slurm_configs_name_one_node_of_this_machine_on_the_chosen_ports(tmp_path):
    ports = {"slurmctld": 40001, "slurmd": 40002, "slurmdbd": 40003, "mariadb": 40004}
    slurm_conf = team.write_slurm_configs(tmp_path, ports)
    conf = read_conf(slurm_conf)
    assert (conf["SlurmctldPort"], conf["SlurmdPort"], conf["AccountingStoragePort"]) == ("40001", "40002", "40003")
    node = next(line for line in slurm_conf.read_text().splitlines() if line.startswith("NodeName="))
    assert f"CPUs={os.cpu_count()}" in node and "NodeAddr=127.0.0.1" in node
    memory_mb = int(node.split("RealMemory=")[1].split()[0])
    assert 0 < memory_mb < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20  # slurmd checks it
    assert conf["ProctrackType"] == "proctrack/linuxproc" and conf["TaskPlugin"] == "task/none"  # no cgroups
    dbd = tmp_path / "slurmdbd.conf"
    assert read_conf(dbd)["StoragePort"] == "40004"
    assert dbd.stat().st_mode & 0o777 == 0o600  # slurmdbd refuses a config others can read
    assert all(Path(conf[key]).parent == tmp_path for key in ("SlurmctldPidFile", "SlurmdPidFile"))


def test_stop_without_a_cluster_stops_nothing_and_status_says_not_running(tmp_path, capsys):
    assert team.stop(tmp_path) == []
    assert team.main(["status", "--folder", str(tmp_path)]) == 1
    assert capsys.readouterr().out == f"nst cluster: not running in {tmp_path}\n"


def test_a_user_other_than_root_is_told_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert team.main(["start", "--folder", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nst cluster: error: make cluster runs as root") and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


def processes_naming(folder: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-af", str(folder)], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_second_cluster_starts_runs_a_job_and_stops_leaving_the_first_running(cluster):
    folder = Path(tempfile.mkdtemp(prefix="nst-cluster-second-", dir="/tmp"))
    try:
        second = team.start(folder)
        assert team.start(folder) == second  # already running: the same cluster, nothing started again
        environment = {**os.environ, **second.environment()}
        job = subprocess.run(["sbatch", "--parsable", "--wait", "-o", str(folder / "job.out"), "--wrap",
                              "echo on $SLURMD_NODENAME"], capture_output=True, text=True, env=environment,
                             timeout=120)
        assert job.returncode == 0, job.stderr
        assert (folder / "job.out").read_text() == "on nst-node\n"
        state = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job.stdout.strip()],
                               capture_output=True, text=True, env=environment).stdout.strip()
        assert state == "COMPLETED"
        assert "munge" not in second.started  # the first cluster's munged serves both
    finally:
        stopped = team.stop(folder)
    assert stopped == list(reversed(second.started))
    assert processes_naming(folder) == []
    assert team.load(folder) is None
    # the first cluster still answers
    first = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                           env={**os.environ, **cluster.environment()})
    assert first.stdout.strip() in ("idle", "mixed", "allocated"), first.stderr
    subprocess.run(["rm", "-rf", str(folder)])
