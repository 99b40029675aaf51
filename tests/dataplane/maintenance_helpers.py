"""Running `maintain ...` against the session cluster's primary, as the CronJob does."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from shopdb_operator.maintenance import main


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def libpq_env(instance, password: str | None = None) -> dict[str, str]:
    """The connection env the maintenance CronJob gets: the owner role on the primary."""
    return {
        "PGHOST": "127.0.0.1",
        "PGPORT": str(instance.port),
        "PGDATABASE": "shop",
        "PGUSER": "shop",
        "PGPASSWORD": password if password is not None else instance.credentials.owner,
        "PGCONNECT_TIMEOUT": "5",
    }


def maintain(instance, *args: str, password: str | None = None, today: str | None = None) -> Run:
    """`shopdb-operator maintain ...` in a child process: exit status and output as a Job sees them."""
    env = {**os.environ, **libpq_env(instance, password)}
    env.pop("SHOPDB_TODAY", None)
    if today:
        env["SHOPDB_TODAY"] = today
    result = subprocess.run([sys.executable, "-m", "shopdb_operator.maintenance", *args],
                            env=env, capture_output=True, text=True, timeout=120)
    return Run(result.returncode, result.stdout, result.stderr)


def maintain_in_process(monkeypatch, instance, *args: str) -> int:
    """The same command in this process (for concurrency tests: no interpreter start-up)."""
    for name, value in libpq_env(instance).items():
        monkeypatch.setenv(name, value)
    return main(list(args))
