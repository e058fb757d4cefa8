"""The `nst-review` command (nst/cli/nst_review.py): 127.0.0.1 only, and no sweep or a busy port in one line."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nst.cli import nst_review
from nst.tracking import store


def _listening(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = [raw[k:k + 4][::-1] for k in range(0, len(raw), 4)]  # little-endian words
                found.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, b"".join(words)))
    return found


def _outside_address() -> str | None:
    """This machine's address on its network, if it has one (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.slow  # a process of its own: MLflow's import alone is seconds
def test_the_server_listens_on_127_0_0_1_only(review_world):
    # the console script: `nst-review` is installed and starts
    nst_review_script = Path(sys.executable).with_name("nst-review")
    server = subprocess.Popen([str(nst_review_script), "--tracking-uri", review_world["uri"], "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, line = time.monotonic() + 120, ""
        while "open http://" not in line and time.monotonic() < deadline:
            line = server.stdout.readline()
            assert line or server.poll() is None, "nst-review ended before it listened"
        host, port = re.search(r"open http://([\d.]+):(\d+)/", line).groups()
        assert host == "127.0.0.1"
        assert _listening(int(port)) == {"127.0.0.1"}
        with socket.create_connection(("127.0.0.1", int(port)), timeout=5):
            pass
        outside = _outside_address()
        if outside is not None:  # reached from the network's side: refused
            with pytest.raises(OSError):
                socket.create_connection((outside, int(port)), timeout=5).close()
        server.terminate()
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()


def test_no_sweep_and_a_busy_port_are_one_line_each(review_world, tmp_path, capsys):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    store.open_store(empty, create=True)
    assert nst_review.main(["--tracking-uri", empty]) == 2
    assert capsys.readouterr().err.strip() == "nst-review: error: no sweep in experiment 'nst'"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert nst_review.main(["--tracking-uri", review_world["uri"], "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nst-review: error: cannot listen on 127.0.0.1:{port}") and "\n" not in err


def test_no_store_names_nst_reviews_own_option(tmp_path, capsys):
    """The line names --tracking-uri, nst-review's option (nst-report's is --uri)."""
    missing = tmp_path / "nowhere" / "mlflow.db"
    assert nst_review.main(["--tracking-uri", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nst-review: error: no MLflow store at {missing}") and "\n" not in err
    assert "--tracking-uri" in err and "--uri" not in err.replace("--tracking-uri", "")
    assert not missing.parent.exists()  # nothing created


def test_a_pareto_front_too_small_to_review_is_one_line(review_world, capsys):
    """The synthetic sweep has no style distances: its front is empty, and the line says it was the
    front."""
    argv = ["--tracking-uri", review_world["uri"], "--sweep", review_world["parent"], "--pareto"]
    assert nst_review.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nst-review: error: a review compares at least two FINISHED runs; "
                          "the Pareto front")
    assert err.endswith("has 0") and "\n" not in err
