"""`shopdb-operator instance-agent`: the sidecar of every database pod.

It renews the cluster's primary lease while the lease names this instance, writes how long
the primary may write into the lease file (the `run` volume it shares with the database
container), and fences a primary past that time: SIGINT to the postmaster, a fast shutdown
that refuses new connections and ends every session at once. The database container's
fence.sh does the same from the same file, so neither a crashed agent nor a dead watcher
leaves a primary writable past its deadline; instance.sh starts a primary only after a
renewal stored since it began waiting.

Standard library only (no Kubernetes client): it starts in a fraction of a second on a few
millicores. The API server is reached with the pod's projected ServiceAccount token, which
may read and renew this one Lease and nothing else.
"""

from __future__ import annotations

import datetime
import http.client
import json
import logging
import os
import signal
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import agent
from .lease import API_VERSION, Timing, holder, parse_time, renew_time, renewal_patch, wanted_timing

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TICK_SECONDS = 0.5
DEFAULT_TIMING = Timing(duration=8, margin=2, skew=1)

log = logging.getLogger("shopdb.instance-agent")


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True)
class Settings:
    instance: str
    namespace: str
    lease: str
    lease_file: Path
    pgdata: Path
    api_host: str
    api_port: int

    @classmethod
    def from_env(cls, env=os.environ) -> "Settings":
        missing = [k for k in ("SHOPDB_INSTANCE", "POD_NAMESPACE", "SHOPDB_PRIMARY_LEASE", "SHOPDB_LEASE_FILE",
                               "PGDATA", "KUBERNETES_SERVICE_HOST") if not env.get(k)]
        if missing:
            raise SystemExit(f"instance-agent: environment variables missing: {', '.join(missing)}")
        return cls(env["SHOPDB_INSTANCE"], env["POD_NAMESPACE"], env["SHOPDB_PRIMARY_LEASE"],
                   Path(env["SHOPDB_LEASE_FILE"]), Path(env["PGDATA"]), env["KUBERNETES_SERVICE_HOST"],
                   int(env.get("KUBERNETES_SERVICE_PORT", "443")))


class ApiServer:
    """GET and merge-PATCH of one Lease over one kept-alive TLS connection (CA verified)."""

    def __init__(self, settings: Settings, account: Path = SERVICE_ACCOUNT):
        self.settings, self.account = settings, account
        self.path = f"/apis/{API_VERSION}/namespaces/{settings.namespace}/leases/{settings.lease}"
        self._conn: http.client.HTTPSConnection | None = None

    def _connection(self, timeout: float) -> http.client.HTTPSConnection:
        if self._conn is None:
            context = ssl.create_default_context(cafile=str(self.account / "ca.crt"))
            self._conn = http.client.HTTPSConnection(self.settings.api_host, self.settings.api_port,
                                                     context=context, timeout=timeout)
        self._conn.timeout = timeout
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)
        return self._conn

    def request(self, method: str, body: dict | None, timeout: float) -> tuple[int, dict]:
        token = (self.account / "token").read_text().strip()  # the kubelet rotates it
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        payload = None
        if body is not None:
            headers["Content-Type"] = "application/merge-patch+json"
            payload = json.dumps(body)
        try:
            conn = self._connection(timeout)
            conn.request(method, self.path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        return response.status, (json.loads(data) if data else {})

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def attempt(api: ApiServer, me: str, timeout: float) -> agent.Attempt:
    """Read the lease; renew it if it names this instance."""
    sent = boottime()
    try:
        status, lease = api.request("GET", None, timeout)
        if status != 200:
            return agent.Attempt(sent, agent.NO_ANSWER, error=f"GET lease: HTTP {status}")
        owner = holder(lease)
        if owner != me:
            renewed = renew_time(lease)
            silent = (datetime.datetime.now(datetime.timezone.utc) - parse_time(renewed)).total_seconds() \
                if renewed else None
            return agent.Attempt(sent, agent.OTHER_HOLDER, holder=owner or "nobody", holder_silent_for=silent)
        timing = wanted_timing(lease, DEFAULT_TIMING)
        sent = boottime()  # the deadline counts from the renewal itself
        now = datetime.datetime.now(datetime.timezone.utc)
        status, _ = api.request("PATCH", renewal_patch(lease, timing, now), timeout)
        if status == 200:
            return agent.Attempt(sent, agent.STORED, timing=timing, holder=me)
        return agent.Attempt(sent, agent.NO_ANSWER, error=f"renewal: HTTP {status}")  # 409: read again next time
    except (OSError, http.client.HTTPException, ValueError) as err:
        return agent.Attempt(sent, agent.NO_ANSWER, error=type(err).__name__)


class Postmaster:
    """The database container's server, seen through the data volume (read-only here)."""

    def __init__(self, pgdata: Path):
        self.pgdata = pgdata

    def pid(self) -> int | None:
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if cmdline.split(b"\0", 1)[0].endswith(b"postgres") else None

    def primary_pid(self) -> int | None:
        """The postmaster's PID when it runs on data that is not a standby's."""
        if (self.pgdata / "standby.signal").exists():
            return None
        return self.pid()


def read_lease_file(path: Path, state: agent.AgentState) -> agent.AgentState:
    """Resume from what an earlier agent of this pod wrote: a restarted agent does not fence
    a primary whose lease it renewed moments ago."""
    try:
        renewed, until = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return state
    if renewed <= 0 or until <= 0:
        return state
    return agent.AgentState(state.me, renewed_at=renewed / 100, writable_until=until / 100, holder=state.me)


def write_lease_file(path: Path, state: agent.AgentState) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(agent.lease_file_line(state))
    os.replace(tmp, path)


def fence_file(settings: Settings) -> Path:
    return settings.lease_file.with_name("fenced")


def run(settings: Settings, api: ApiServer, postmaster: Postmaster, stop: list[bool]) -> None:
    state = read_lease_file(settings.lease_file, agent.AgentState(settings.instance))
    next_attempt = 0.0
    interval = DEFAULT_TIMING.renew_interval
    last_error = ""
    while not stop:
        now = boottime()
        if now >= next_attempt:
            result = attempt(api, settings.instance, timeout=0.75 * interval)
            state = agent.after(state, result)
            if result.timing is not None:
                interval = result.timing.renew_interval
            next_attempt = result.sent_at + agent.next_attempt_in(result, interval)
            write_lease_file(settings.lease_file, state)
            if state.error != last_error:  # one line per change, not one per attempt
                if state.error:
                    log.warning("cannot renew the primary lease: %s", state.error)
                last_error = state.error
        pid = postmaster.primary_pid()
        state, action, line = agent.verdict(state, boottime(), pid is not None)
        if line:
            log.log(logging.WARNING if action == "fence" else logging.INFO, line)
        if action == "fence" and pid is not None:
            if line:
                fence_file(settings).write_text(state.fenced + "\n")
            try:
                os.kill(pid, signal.SIGINT)
            except OSError:
                pass
        time.sleep(TICK_SECONDS)


def main() -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s instance-agent %(levelname)s: %(message)s")
    settings = Settings.from_env()
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    log.info("renewing %s/%s while it names %s", settings.namespace, settings.lease, settings.instance)
    run(settings, ApiServer(settings), Postmaster(settings.pgdata), stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
