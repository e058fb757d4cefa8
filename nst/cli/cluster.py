"""``make cluster``: a single-node SLURM cluster and an MLflow tracking server on PostgreSQL, on 127.0.0.1.

The team set-up on one machine, for trying ``hydra/launcher=slurm`` with ``tracking=server`` and for the
tests that exercise them: munge, slurmdbd (accounting in a private MariaDB, so ``sacct`` works),
slurmctld and slurmd with one node of this machine's CPUs, and ``mlflow server`` backed by a private
PostgreSQL cluster with artifacts served from the folder. Everything lives in one folder (default
``/tmp/nst-cluster``, ``NST_CLUSTER_DIR``): configs, data, logs, and ``cluster.json``, the list of what was
started, which ``stop`` reads to stop exactly that. It runs as root, since the daemons switch users.

    python -m nst.cli.cluster start|stop|status [--folder DIR]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_FOLDER = Path(os.environ.get("NST_CLUSTER_DIR", "/tmp/nst-cluster"))
STATE = "cluster.json"
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")  # slurmdbd's connections take munge's default socket only
# the Debian package that provides each program the cluster runs
PACKAGES = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "slurmdbd": "slurmdbd",
            "sbatch": "slurm-client", "mariadbd": "mariadb-server", "pg_ctlcluster": "postgresql"}
SBIN = ("/usr/sbin", "/usr/bin")
START_TIMEOUT_S = 120


class ClusterError(RuntimeError):
    """The cluster could not be started or stopped; the message is the one line to show."""


@dataclass
class Cluster:
    """A started cluster as ``cluster.json`` records it: its folder, addresses and the daemons nst started."""

    folder: str
    tracking_uri: str = ""
    database_uri: str = ""
    slurm_conf: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)  # services nst started, in order
    installed: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return Path(self.folder)

    def environment(self) -> dict[str, str]:
        """The variables that point ``nst``, ``sbatch`` and ``sacct`` at this cluster."""
        return {"SLURM_CONF": self.slurm_conf, "MLFLOW_TRACKING_URI": self.tracking_uri}

    def save(self) -> None:
        (self.path / STATE).write_text(json.dumps(asdict(self), indent=2))

    def stop_server(self) -> None:
        """Stop the MLflow server (its process group), leaving its database running."""
        stop_tracking_server(self.path / "mlflow")

    def start_server(self) -> None:
        """Start the MLflow server again on the same port and database; return once it answers."""
        start_tracking_server(self.path / "mlflow", self.database_uri, self.ports["mlflow"])

    def restart_server(self, down_s: float = 0) -> None:
        """Stop the MLflow server, wait ``down_s`` seconds, start it again."""
        self.stop_server()
        time.sleep(down_s)
        self.start_server()


def load(folder: Path = DEFAULT_FOLDER) -> Cluster | None:
    """The cluster recorded in ``folder`` if its MLflow server and SLURM controller are running."""
    state = Path(folder) / STATE
    if not state.is_file():
        return None
    cluster = Cluster(**json.loads(state.read_text()))
    alive = all(_pid_alive(cluster.path / name) for name in ("slurm/slurmctld.pid", "mlflow/server.pid"))
    return cluster if alive else None


# --- the parts ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def install_missing() -> list[str]:
    """Install, with apt-get, the Debian packages of the programs that are missing; return their names."""
    missing = sorted({package for program, package in PACKAGES.items() if not _which(program)})
    if missing:
        print(f"nst cluster: installing {' '.join(missing)} (apt-get)", flush=True)
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
            done = subprocess.run(command, capture_output=True, text=True, env=environment)
            if done.returncode:
                raise ClusterError(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    return missing


def start_database(folder: Path, port: int) -> str:
    """A fresh PostgreSQL cluster in ``folder`` on 127.0.0.1:``port`` with a database ``mlflow``; its URI.

    PostgreSQL refuses to run as root, so it runs as Debian's ``postgres`` user, with trust authentication
    on the loopback address only.
    """
    folder.mkdir(parents=True, exist_ok=True)
    shutil.chown(folder, "postgres")
    folder.chmod(0o700)
    binaries = _postgres_bin()
    _run(["runuser", "-u", "postgres", "--", f"{binaries}/initdb", "-D", str(folder / "data"), "--auth=trust",
          "-U", "postgres", "-E", "UTF8"], folder / "initdb.log")
    _run(["runuser", "-u", "postgres", "--", f"{binaries}/pg_ctl", "-D", str(folder / "data"), "-l",
          str(folder / "postgres.log"), "-o", f"-h 127.0.0.1 -p {port} -k {folder}", "-w", "start"],
         folder / "pg_ctl.log")
    _run(["runuser", "-u", "postgres", "--", f"{binaries}/createdb", "-h", "127.0.0.1", "-p", str(port), "mlflow"],
         folder / "createdb.log")
    return f"postgresql://postgres@127.0.0.1:{port}/mlflow"


def stop_database(folder: Path) -> None:
    if (folder / "data" / "postmaster.pid").is_file():
        subprocess.run(["runuser", "-u", "postgres", "--", f"{_postgres_bin()}/pg_ctl", "-D", str(folder / "data"),
                        "-m", "fast", "-w", "stop"], capture_output=True)


def start_tracking_server(folder: Path, database_uri: str, port: int) -> str:
    """``mlflow server`` on 127.0.0.1:``port`` backed by ``database_uri``, artifacts served from ``folder``;
    returns its address once ``/health`` answers."""
    folder.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    with open(folder / "server.log", "a") as log:
        server = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri", database_uri,
             "--artifacts-destination", str(folder / "artifacts"), "--workers", "2"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    (folder / "server.pid").write_text(str(server.pid))
    uri = f"http://127.0.0.1:{port}"
    from nst.tracking.store import health_problem

    _wait(lambda: server.poll() is None and health_problem(uri, 2) is None, "the MLflow server", folder / "server.log",
          failed=lambda: server.poll() is not None)
    return uri


def stop_tracking_server(folder: Path) -> None:
    """Stop the server ``start_tracking_server`` started in ``folder`` (its process group: uvicorn's workers)."""
    _stop_pidfile(folder / "server.pid", group=True)


def start_munge(folder: Path) -> bool:
    """munged on its default socket with a key of this cluster; False when a munged already answers there."""
    if _munge_answers():
        return False
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    key = folder / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    _run([_which("munged"), f"--key-file={key}", f"--pid-file={folder / 'munged.pid'}",
          f"--log-file={folder / 'munged.log'}", f"--seed-file={folder / 'munged.seed'}", "--force"],
         folder / "start.log")
    _wait(_munge_answers, "munged", folder / "munged.log")
    return True


def start_accounting_database(folder: Path, port: int) -> None:
    """A private MariaDB on 127.0.0.1:``port`` with a ``slurm`` user, for slurmdbd."""
    folder.mkdir(parents=True, exist_ok=True)
    _run(["mariadb-install-db", f"--datadir={folder / 'data'}", "--user=root",
          "--auth-root-authentication-method=normal", "--skip-test-db"], folder / "install.log")
    with open(folder / "mariadb.log", "a") as log:
        subprocess.Popen([_which("mariadbd"), "--no-defaults", f"--datadir={folder / 'data'}",
                          f"--socket={folder / 'mysql.sock'}", f"--port={port}", "--bind-address=127.0.0.1",
                          "--user=root", f"--pid-file={folder / 'mariadb.pid'}", "--skip-name-resolve"],
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    client = ["mariadb", "--no-defaults", f"--socket={folder / 'mysql.sock'}", "-uroot"]
    _wait(lambda: subprocess.run([*client, "-e", "select 1"], capture_output=True).returncode == 0, "MariaDB",
          folder / "mariadb.log")
    _run([*client, "-e", "CREATE USER 'slurm'@'127.0.0.1'; GRANT ALL ON *.* TO 'slurm'@'127.0.0.1';"],
         folder / "install.log")


def write_slurm_configs(folder: Path, ports: dict[str, int]) -> Path:
    """slurm.conf (one node: this machine's CPUs, 80% of its memory; no cgroup plugins) and slurmdbd.conf."""
    for name in ("state", "spool", "log"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    slurm_conf = folder / "slurm.conf"
    slurm_conf.write_text(f"""\
ClusterName=nst
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports['slurmctld']}
SlurmdPort={ports['slurmd']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={folder / 'state'}
SlurmdSpoolDir={folder / 'spool'}
SlurmctldPidFile={folder / 'slurmctld.pid'}
SlurmdPidFile={folder / 'slurmd.pid'}
SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}
SlurmdLogFile={folder / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports['slurmdbd']}
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
KillWait=10
InactiveLimit=0
MinJobAge=300
NodeName=nst-node NodeHostname={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName=nst Nodes=nst-node Default=YES MaxTime=INFINITE State=UP
""")
    dbd_conf = folder / "slurmdbd.conf"
    dbd_conf.write_text(f"""\
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports['slurmdbd']}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports['mariadb']}
StorageUser=slurm
StorageLoc=slurm_acct_db
PidFile={folder / 'slurmdbd.pid'}
LogFile={folder / 'log' / 'slurmdbd.log'}
""")
    dbd_conf.chmod(0o600)  # slurmdbd refuses a config others can read
    return slurm_conf


def start_slurm(folder: Path, slurm_conf: Path) -> None:
    """slurmdbd, the cluster's accounting entry, slurmctld and slurmd; returns once the node is idle."""
    environment = {**os.environ, "SLURM_CONF": str(slurm_conf)}
    _run([_which("slurmdbd")], folder / "log" / "start.log", environment)
    _wait(lambda: subprocess.run(["sacctmgr", "-n", "list", "cluster"], capture_output=True,
                                 env=environment).returncode == 0, "slurmdbd", folder / "log" / "slurmdbd.log")
    _run(["sacctmgr", "-i", "add", "cluster", "nst"], folder / "log" / "start.log", environment)
    _run([_which("slurmctld")], folder / "log" / "start.log", environment)
    _run([_which("slurmd"), "-N", "nst-node"], folder / "log" / "start.log", environment)
    _wait(lambda: subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                 env=environment).stdout.strip() == "idle", "slurmctld and slurmd",
          folder / "log" / "slurmctld.log")


# --- start and stop -------------------------------------------------------------------------------------


def start(folder: Path = DEFAULT_FOLDER) -> Cluster:
    """Start every service in a fresh ``folder`` (or return the cluster already running there)."""
    folder = Path(folder).resolve()
    running = load(folder)
    if running:
        return running
    if os.geteuid() != 0:
        raise ClusterError("make cluster runs as root: it installs Debian packages and starts munge, SLURM's "
                           "daemons and PostgreSQL under their users")
    if (folder / STATE).is_file():
        stop(folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    folder.chmod(0o755)  # PostgreSQL, running as postgres, must reach its folder inside
    cluster = Cluster(folder=str(folder), installed=install_missing(),
                      ports={name: free_port() for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb",
                                                            "postgres", "mlflow")})
    try:
        if start_munge(folder / "munge"):
            cluster.started.append("munge")
        start_accounting_database(folder / "mariadb", cluster.ports["mariadb"])
        cluster.started.append("mariadb")
        cluster.slurm_conf = str(write_slurm_configs(folder / "slurm", cluster.ports))
        cluster.started.append("slurm")
        start_slurm(folder / "slurm", Path(cluster.slurm_conf))
        cluster.started.append("postgres")
        cluster.database_uri = start_database(folder / "postgres", cluster.ports["postgres"])
        cluster.started.append("mlflow")
        cluster.tracking_uri = start_tracking_server(folder / "mlflow", cluster.database_uri, cluster.ports["mlflow"])
    except BaseException:
        cluster.save()
        stop(folder)
        raise
    cluster.save()
    (folder / "env").write_text("".join(f"export {key}={value}\n" for key, value in cluster.environment().items()))
    return cluster


def stop(folder: Path = DEFAULT_FOLDER) -> list[str]:
    """Stop what ``start`` started in ``folder``, the last first; return the names of the services stopped."""
    folder = Path(folder).resolve()
    state = folder / STATE
    if not state.is_file():
        return []
    cluster = Cluster(**json.loads(state.read_text()))
    stops = {
        "mlflow": lambda: stop_tracking_server(folder / "mlflow"),
        "postgres": lambda: stop_database(folder / "postgres"),
        "slurm": lambda: _stop_slurm(folder / "slurm"),
        "mariadb": lambda: _stop_pidfile(folder / "mariadb" / "mariadb.pid"),
        "munge": lambda: _stop_pidfile(folder / "munge" / "munged.pid"),
    }
    for name in reversed(cluster.started):
        stops[name]()
    state.unlink()
    return list(reversed(cluster.started))


def _stop_slurm(folder: Path) -> None:
    """Cancel the cluster's jobs, then stop slurmd, slurmctld and slurmdbd."""
    environment = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    if _pid_alive(folder / "slurmctld.pid"):
        subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True, env=environment)
        _wait_quietly(lambda: not subprocess.run(["squeue", "-h"], capture_output=True, text=True,
                                                 env=environment).stdout.strip(), 30)
    for daemon in ("slurmd", "slurmctld", "slurmdbd"):
        _stop_pidfile(folder / f"{daemon}.pid")


# --- small tools ----------------------------------------------------------------------------------------


def _which(program: str) -> str | None:
    if program == "pg_ctlcluster":  # the server binaries live in a versioned folder
        return program if glob.glob("/usr/lib/postgresql/*/bin/initdb") else None
    return shutil.which(program) or next((f"{d}/{program}" for d in SBIN if os.access(f"{d}/{program}", os.X_OK)),
                                         None)


def _postgres_bin() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        raise ClusterError("PostgreSQL's server is not installed (Debian package postgresql)")
    return str(Path(found[-1]).parent)


def _run(command: list[str], log: Path, environment: dict[str, str] | None = None) -> None:
    """Run ``command``, its output appended to ``log``; a failure raises with the log's last lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=environment,
                              stdin=subprocess.DEVNULL)
    if done.returncode:
        raise ClusterError(f"{Path(command[0]).name} failed (exit {done.returncode}); {log}: {_tail(log)}")


def _wait(ready, what: str, log: Path, failed=lambda: False) -> None:
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline and not failed():
        if ready():
            return
        time.sleep(0.5)
    raise ClusterError(f"{what} did not start within {START_TIMEOUT_S} s; {log}: {_tail(log)}")


def _wait_quietly(ready, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not ready():
        time.sleep(0.5)


def _tail(log: Path) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    except OSError:
        return "(no log)"


def _munge_answers() -> bool:
    if not MUNGE_SOCKET.exists() or not _which("munge"):
        return False
    return subprocess.run(["munge", "-n"], capture_output=True).returncode == 0


def _pid_alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().split()[0]), 0)
        return True
    except (OSError, ValueError, IndexError):
        return False


def _stop_pidfile(pidfile: Path, group: bool = False, timeout: float = 20) -> None:
    """SIGTERM the process (or process group) in ``pidfile``; SIGKILL if it has not ended after ``timeout`` s."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    send = (lambda sig: os.killpg(pid, sig)) if group else (lambda sig: os.kill(pid, sig))
    try:
        send(signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        _reap(pid)
        time.sleep(0.2)
    try:
        send(signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is this process's child (a server restarted by a test)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nst.cli.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help=f"(default {DEFAULT_FOLDER})")
    arguments = parser.parse_args(argv)
    try:
        if arguments.action == "stop":
            stopped = stop(arguments.folder)
            print(f"nst cluster: stopped {', '.join(stopped)}" if stopped else
                  f"nst cluster: nothing was started in {arguments.folder}")
            return 0
        cluster = start(arguments.folder) if arguments.action == "start" else load(arguments.folder)
    except ClusterError as error:
        print(f"nst cluster: error: {error}", file=sys.stderr)
        return 1
    if cluster is None:
        print(f"nst cluster: not running in {arguments.folder}")
        return 1
    print(f"nst cluster: SLURM partition nst (1 node, {os.cpu_count()} CPUs): SLURM_CONF={cluster.slurm_conf}\n"
          f"nst cluster: MLflow server {cluster.tracking_uri} on {cluster.database_uri}\n"
          f"nst cluster: use it with: source {cluster.path / 'env'}; nst -m ... hydra/launcher=slurm tracking=server "
          f"hydra.launcher.cpus_per_task=1\n"
          f"nst cluster: read it with: nst-report --uri {cluster.tracking_uri}; nst-review --tracking-uri "
          f"{cluster.tracking_uri}\n"
          f"nst cluster: stop it with: make cluster-stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
