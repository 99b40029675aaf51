"""Real PostgreSQL instances and PgBouncer on loopback, started through the shipped scripts.

Each instance gets what its pod would get: the scripts ConfigMap (instance_scripts()), a
config dir with the rendered postgresql.conf and pg_hba.conf, and the env contract. Only
listen address, ports and directories differ, through the env overrides the scripts offer.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from shopdb_operator import postgres
from shopdb_operator.api.spec import ClusterSpec, ComputeResources
from shopdb_operator.builders import config_files
from shopdb_operator.scripts import instance_scripts

PG_BIN = Path(os.environ.get("SHOPDB_PG_BIN", "/usr/lib/postgresql/15/bin"))
REPO = Path(__file__).resolve().parents[2]
# The local cluster's PgBouncer version (Debian trixie's package in its image); tests/bootstrap.sh
# builds the same source for the host and links it into the venv's bin (run.sh exports it).
PGBOUNCER_VERSION = re.search(r"^PGBOUNCER_TRIXIE_DEB=([0-9.]+)-",
                              (REPO / "tests" / "cluster" / "lib" / "versions.sh").read_text(), re.M)[1]
_VENV_PGBOUNCER = Path(sys.executable).parent / "pgbouncer"
PGBOUNCER = Path(os.environ.get("SHOPDB_PGBOUNCER")
                 or (str(_VENV_PGBOUNCER) if _VENV_PGBOUNCER.exists() else None)
                 or shutil.which("pgbouncer") or "/usr/sbin/pgbouncer")
SHOP_SCHEMA = REPO / "manifests" / "examples" / "shop-schema.sql"
RUN_AS = "postgres"  # PostgreSQL and PgBouncer refuse to run as root
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_binaries(*paths: str | Path) -> None:
    """Skip locally, fail in CI, when a binary the data-plane tests need is missing."""
    missing = [str(p) for p in paths if not (Path(p).is_file() or shutil.which(str(p)))]
    if missing:
        message = f"data-plane tests need {', '.join(missing)} (PostgreSQL 15 server, pgbouncer)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _user_ids() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(RUN_AS)
    except KeyError:
        pytest.fail(f"running as root, the data-plane tests need an OS user {RUN_AS!r} "
                    "(PostgreSQL refuses to run as root)", pytrace=False)
    return entry.pw_uid, entry.pw_gid


def _give_away(path: Path) -> None:
    ids = _user_ids()
    if ids:
        os.chown(path, *ids)


def private_dir(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir(parents=True, exist_ok=True)
    _give_away(path)
    return path


def run_as_postgres(args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    ids = _user_ids()
    if ids:
        kwargs.update(user=ids[0], group=ids[1], extra_groups=[])
    return subprocess.Popen(args, env=env, **kwargs)


def make_spec(**postgres_fields) -> ClusterSpec:
    return ClusterSpec.model_validate({
        "postgres": {
            "allowedCIDRs": ["127.0.0.1/32"],
            "parameters": {"max_connections": "60"},
            "storage": {"size": "2Gi"},
            **postgres_fields,
        }
    })


TEST_RESOURCES = ComputeResources(cpu="1", memory="256Mi")


def _password() -> str:
    # Quotes, backslashes and colons: what SQL literals, pgpass and userlist must escape.
    return secrets.token_urlsafe(18) + "'\\:\""


@dataclass
class Credentials:
    superuser: str = field(default_factory=_password)
    replication: str = field(default_factory=_password)
    owner: str = field(default_factory=_password)


class Instance:
    """One database container: its dirs, its env, its process."""

    def __init__(self, root: Path, name: str, spec: ClusterSpec, credentials: Credentials,
                 scripts: Path, analytics: bool = False, init_sql: Path | None = None):
        self.name = name
        self.slot = name.replace("-", "_")
        self.port = free_port()
        self.spec = spec
        self.credentials = credentials
        self.scripts = scripts
        self.analytics = analytics
        self.dir = private_dir(root, name)
        self.config_dir = private_dir(self.dir, "config")
        self.run_dir = self.dir / "run"  # created by instance.sh, like an emptyDir would be
        self.data_root = private_dir(self.dir, "data")
        self.pgdata = self.data_root / "pgdata"
        self.log_path = self.dir / "instance.log"
        self.init_sql = init_sql
        self.process: subprocess.Popen | None = None
        self.role = "replica"
        self.primary_port: int | None = None
        self.peer_slots: list[str] = []
        self.extra_env: dict[str, str] = {}
        self.render_config()

    def render_config(self) -> None:
        files = {
            "postgresql.conf": config_files.postgresql_conf(self.spec, TEST_RESOURCES, self.analytics),
            "pg_hba.conf": config_files.pg_hba_conf(self.spec),
        }
        for filename, content in files.items():
            (self.config_dir / filename).write_text(content)

    def env(self) -> dict[str, str]:
        env = {
            "PATH": f"{PG_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.dir),
            "LANG": "C.UTF-8",
            "PGDATA": str(self.pgdata),
            "SHOPDB_CLUSTER": "shop",
            "SHOPDB_INSTANCE": self.name,
            "POD_NAMESPACE": "dataplane",
            "SHOPDB_ROLE": self.role,
            "SHOPDB_PRIMARY_HOST": "127.0.0.1",
            "SHOPDB_PRIMARY_PORT": str(self.primary_port or self.port),
            "SHOPDB_PORT": str(self.port),
            "SHOPDB_LISTEN": "127.0.0.1",
            "SHOPDB_SLOT": self.slot,
            "SHOPDB_PEER_SLOTS": ",".join(self.peer_slots),
            "SHOPDB_DATABASE": self.spec.postgres.database,
            "SHOPDB_OWNER": self.spec.postgres.owner,
            "SHOPDB_OWNER_PASSWORD": self.credentials.owner,
            "SHOPDB_SUPERUSER_PASSWORD": self.credentials.superuser,
            "SHOPDB_REPLICATION_USER": config_files.REPLICATION_USER,
            "SHOPDB_REPLICATION_PASSWORD": self.credentials.replication,
            "SHOPDB_READY_MAX_LAG_BYTES": str(16 * 1024 * 1024),
            "SHOPDB_ANALYTICS": "true" if self.analytics else "false",
            "SHOPDB_CONFIG_DIR": str(self.config_dir),
            "SHOPDB_RUN_DIR": str(self.run_dir),
            "SHOPDB_INIT_SQL": str(self.init_sql or self.dir / "no-init.sql"),
            "SHOPDB_PRIMARY_WAIT_SECONDS": "60",
        }
        env.update(self.extra_env)
        return env

    # --- process ------------------------------------------------------------------------

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, f"{self.name} already runs"
        log = open(self.log_path, "ab")
        log.write(f"\n===== start as {self.role} (primary port {self.primary_port}) =====\n".encode())
        log.flush()
        # Its own process group, like a container: crash() can kill all of it at once.
        self.process = run_as_postgres(["bash", str(self.scripts / "instance.sh")], self.env(),
                                       stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                                       start_new_session=True)
        log.close()

    def stop(self, timeout: float = 60) -> None:
        """What the pod's stop does: a fast shutdown (SIGINT to postgres, PID 1)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def crash(self) -> None:
        """What an OOM kill or a node failure does: every process of the instance, SIGKILL."""
        assert self.process is not None and self.process.poll() is None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        time.sleep(0.5)  # let the orphaned backends notice and release shared memory

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- probes and SQL -----------------------------------------------------------------

    def probe(self, kind: str, **extra_env: str) -> subprocess.CompletedProcess:
        env = {**self.env(), **extra_env}
        process = run_as_postgres(["bash", str(self.scripts / "probe.sh"), kind], env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = process.communicate(timeout=30)
        return subprocess.CompletedProcess(process.args, process.returncode, out, "")

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            result = self.probe("ready")
            if result.returncode == 0:
                return
            last = result.stdout
            time.sleep(0.3)
        raise AssertionError(f"{self.name} not ready after {timeout}s ({last.strip()}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def dsn(self, user: str = "postgres", dbname: str = "postgres") -> dict:
        password = {"postgres": self.credentials.superuser,
                    self.spec.postgres.owner: self.credentials.owner}[user]
        return dict(host="127.0.0.1", port=self.port, user=user, password=password, dbname=dbname)

    def connect(self, user: str = "postgres", dbname: str = "postgres", **kwargs) -> psycopg.Connection:
        return postgres.connect(**self.dsn(user, dbname), **kwargs)

    def query(self, statement: str, params: tuple = (), dbname: str = "postgres", user: str = "postgres"):
        with self.connect(user, dbname) as conn:
            return conn.execute(statement, params).fetchall()


def make_root(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(root, 0o755)
    return root


def install_scripts(root: Path) -> Path:
    """The scripts ConfigMap, as the pod sees it."""
    scripts = private_dir(root, "scripts")
    for filename, content in instance_scripts().items():
        (scripts / filename).write_text(content)
    return scripts


def wait_until(condition, timeout: float = 20, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (psycopg.Error, AssertionError) as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last error: {last_error})")


def stop_all(instances) -> None:
    for instance in instances:
        instance.stop(timeout=30)
