"""The database container's side of the primary lease, with real PostgreSQL processes:
instance.sh starts a primary only after a renewal stored since it began waiting, and
fence.sh stops a primary whose lease file runs out (a fast shutdown: the open session ends,
new connections are refused), with one log line and the probes saying why; a standby is
never fenced.

The lease file is written here by hand, in the format the instance-agent writes it
(fencing/agent.py lease_file_line): this is the protocol between the two containers. The
agent itself, against a real API server, is in tests/e2e/test_fencing.py.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import psycopg
import pytest

from harness import (PG_BIN, Credentials, Instance, install_scripts, make_root, make_spec, require_binaries,
                     stop_all, wait_until)


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def write_lease(path: Path, renewed: float, until: float) -> None:
    """What the instance-agent writes after a stored renewal (hundredths of CLOCK_BOOTTIME)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{int(renewed * 100)} {int(until * 100)}\n")
    os.replace(tmp, path)


def execute(instance: Instance, statement: str) -> None:
    with instance.connect() as conn:
        conn.execute(statement)


def refused(instance: Instance) -> bool:
    try:
        instance.query("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


@pytest.fixture(scope="module")
def root():
    require_binaries(PG_BIN / "postgres", PG_BIN / "pg_basebackup")
    path = make_root("shopdb-fencing-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_primary_starts_only_with_the_lease_and_fences_itself_when_it_runs_out(root):
    scripts = install_scripts(root)
    spec, credentials = make_spec(), Credentials()
    a = Instance(root, "fence-1", spec, credentials, scripts)
    b = Instance(root, "fence-2", spec, credentials, scripts)
    a.role, a.peer_slots, b.primary_port = "primary", [b.slot], a.port
    lease_a, lease_b = a.run_dir / "primary-lease", b.run_dir / "primary-lease"
    a.extra_env["SHOPDB_LEASE_FILE"] = str(lease_a)
    b.extra_env["SHOPDB_LEASE_FILE"] = str(lease_b)
    try:
        # no lease: the new primary waits before initdb, and nothing listens
        a.start()
        wait_until(lambda: "waiting for the instance-agent" in a.log_text(), 30, message="the lease wait")
        time.sleep(1)
        assert refused(a) and a.process.poll() is None and not a.pgdata.exists()
        write_lease(lease_a, boottime(), boottime() + 600)
        a.wait_ready()
        execute(a, "CREATE TABLE t (id int)")

        # a standby is never fenced, whatever its lease file says
        b.start()
        b.wait_ready()
        write_lease(lease_b, 0, 0)
        time.sleep(2)
        assert b.probe("ready").returncode == 0 and b.query("SELECT pg_is_in_recovery()") == [(True,)]

        # the lease runs out while a session writes: it ends, and so does the server
        session = a.connect()
        session.execute("BEGIN")
        session.execute("INSERT INTO t VALUES (1)")
        deadline = boottime() + 1
        write_lease(lease_a, boottime(), deadline)
        wait_until(lambda: refused(a), 10, interval=0.05, message="the fence")
        fenced_after = boottime() - deadline
        with pytest.raises(psycopg.OperationalError):
            session.execute("COMMIT")
        print(f"\nfenced {fenced_after:.2f} s after the lease file ran out")
        assert fenced_after < 1.5  # fence.sh looks every 0.5 s
        a.wait_exit(30)  # the fast shutdown ends the container
        assert a.log_text().count("fencing this primary") == 1
        probe = a.probe("ready")
        assert probe.returncode != 0 and "fenced" in probe.stdout
        assert b.query("SELECT count(*) FROM t") == [(0,)]  # the open write never committed

        # restarted (the kubelet would): a renewal from before the restart does not count
        write_lease(lease_a, boottime() - 1, boottime() + 600)
        a.start()
        wait_until(lambda: a.log_text().count("waiting for the instance-agent") == 2, 30, message="the second wait")
        time.sleep(1.5)
        assert refused(a)
        startup = a.probe("startup")  # (the only probe the kubelet runs while it waits)
        assert startup.returncode != 0 and "fenced" in startup.stdout
        write_lease(lease_a, boottime(), boottime() + 600)  # the lease is held again: the fence lifts
        a.wait_ready()
        execute(a, "INSERT INTO t VALUES (2)")
        assert not (a.run_dir / "fenced").exists()
    finally:
        stop_all([b, a])
