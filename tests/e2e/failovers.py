"""What the failover tests share: the module's database clusters (one at a time), a fault
under load with what every failover must show, and faults made from this host (the local
cluster's node): pods deleted, PostgreSQL killed or frozen in its container, the operator's
own network cut.
"""

from __future__ import annotations

import datetime
import subprocess
import time
from pathlib import Path
from typing import Callable

import psycopg
import yaml
from shopdb_operator.failover import decide

from load import ClusterView, FailoverRun, kubectl_json, fail_over_under_load
from support import OPERATOR_NAMESPACE, apply_schema_config_map, example_cluster, wait_for

PRIMARY_CPU, REPLICA_CPU = "500m", "250m"  # sized()
READY_TIMEOUT = 600
FAILOVER_TIMEOUT = 180
REJOIN_TIMEOUT = 300
ANALYTICS = "shop-analytics"
INSTANCES = ["shop-1", "shop-2", "shop-3", ANALYTICS]
STEPS = list(decide.STEPS)  # in order


def sized(cluster: dict) -> dict:
    """Enough CPU that a primary under the test's writes, rewinds and clones answers its
    health checks in time (requests are limits: 100m starved it into a false failover)."""
    spec = cluster["spec"]
    spec["postgres"]["resources"] = {"primary": {"cpu": PRIMARY_CPU, "memory": "512Mi"},
                                     "replica": {"cpu": REPLICA_CPU, "memory": "256Mi"}}
    # PgBouncer carries a few hundred clients in test_synchronous_failover_under_load
    spec["pgbouncer"]["resources"] = {"cpu": "150m", "memory": "64Mi"}
    spec["redis"]["resources"] = {"cpu": "50m", "memory": "64Mi"}
    return cluster


class Clusters:
    """The module's database clusters, one at a time (two would not fit two cores): asking
    for `sync` deletes `async` first."""

    def __init__(self, kubectl, images):
        self.kubectl, self.images = kubectl, images
        self.views: dict[str, ClusterView] = {}

    def __getitem__(self, kind: str) -> ClusterView:
        if kind not in self.views:
            for other in list(self.views):
                self.delete(other)
            self.views[kind] = self.create(kind)
        return self.views[kind]

    def create(self, kind: str) -> ClusterView:
        kubectl = self.kubectl
        namespace = f"e2e-failover-{kind}-{int(time.time()) % 100000}"
        kubectl("create", "namespace", namespace)
        apply_schema_config_map(kubectl, namespace)
        cluster = sized(example_cluster(self.images, namespace))
        if kind == "sync":
            cluster["spec"]["postgres"]["synchronous"] = {"enabled": True, "number": 1}
        kubectl.apply(yaml.safe_dump(cluster))
        wait_for(lambda: (kubectl.json("-n", namespace, "get", "sdc", "shop").get("status") or {}).get("phase")
                 == "Ready", READY_TIMEOUT, f"the {kind} cluster to become Ready", interval=3)
        view = ClusterView(kubectl.kubeconfig, namespace)
        wait_for(lambda: view.all_replicas_stream(INSTANCES), 180, f"every {kind} replica to stream")
        return view

    def delete(self, kind: str) -> None:
        view = self.views.pop(kind)
        self.kubectl("delete", "namespace", view.namespace, "--wait=true", "--ignore-not-found", timeout=300,
                     check=False)


def report(run: FailoverRun, what: str) -> str:
    sampler = run.sampler
    return (f"{what}: {run.old} -> {run.new} in {run.entry['durationSeconds']} s "
            f"(steps {run.entry['stepSeconds']}); longest write gap {run.longest_gap():.1f} s; "
            f"acked {len(run.writer.acked)}, failed {len(run.writer.failures)}, lost {len(run.lost)}; "
            f"{sampler.samples} writability samples, {len(sampler.overlaps)} with two writable")


def failover_since(view: ClusterView, previous: str | None, step: str) -> dict | None:
    """status.failover once a failover started after `previous` (the startedAt recorded
    before the fault) has recorded `step`; None before (the old record still shows)."""
    state = view.status().get("failover") or {}
    return state if state.get("startedAt") != previous and step in (state.get("steps") or {}) else None


def under_load(view: ClusterView, run: str, fault: Callable[[str], None], kind: str = "failover",
               after_fault: Callable[[], None] | None = None, clients: int = 1, idle: int = 0) -> FailoverRun:
    """load.fail_over_under_load, then what every failover must show."""
    outcome = fail_over_under_load(view, run, fault, INSTANCES, after_fault, FAILOVER_TIMEOUT, REJOIN_TIMEOUT,
                                   clients=clients, idle=idle, pause=0.2)
    outcome.lost = outcome.writer.lost()
    print("\n" + report(outcome, run))
    entry, old = outcome.entry, outcome.old
    assert entry["kind"] == kind and entry["from"] == old
    recorded = view.status()["failover"]
    assert all(at >= recorded["startedAt"] for at in recorded["steps"].values()), f"stale steps: {recorded}"
    # one step after the other, each recorded once, in order
    times = [recorded["steps"][step] for step in STEPS]
    assert set(recorded["steps"]) == set(STEPS) and times == sorted(times), recorded["steps"]
    # the repoint step recorded every other instance, streaming from the new primary or not yet
    others = set(INSTANCES) - {old, entry["to"]}
    assert set(recorded["streaming"]) | set(recorded["notStreaming"]) == others, recorded
    assert outcome.new != old and outcome.new != ANALYTICS and view.primary() == outcome.new
    # (asked until it answers: once, right after it streamed, its address refused a connection)
    wait_for(lambda: sql_or_none(view, old, "SELECT pg_is_in_recovery()") == [(True,)], 60,
             f"{old} answering read-only", interval=1)
    assert outcome.sampler.overlaps == [], f"two writable instances at once: {outcome.sampler.overlaps}"
    # every template asks for its instance's new role's resources, and the old primary's pod,
    # recreated right after the fence, came up with a replica's (a stale template gave some
    # replicas a primary's CPU, until after a few failovers one pod no longer fit the node)
    expected = {i: PRIMARY_CPU if i == outcome.new else REPLICA_CPU for i in INSTANCES}
    assert template_cpu(view) == expected
    old_pod = kubectl_json(view.kubeconfig, "-n", view.namespace, "get", "pod", f"{old}-0")
    assert postgres_container(old_pod["spec"])["resources"]["requests"]["cpu"] == REPLICA_CPU
    # sampled from before the fault until the failover was over
    assert outcome.sampler.first_at < outcome.fault_at < outcome.fault_at + 1 < outcome.sampler.last_at
    return outcome


def postgres_container(pod_spec: dict) -> dict:
    return next(c for c in pod_spec["containers"] if c["name"] == "postgres")


def template_cpu(view: ClusterView) -> dict[str, str]:
    """Instance -> the CPU its StatefulSet's pod template requests."""
    return {i: postgres_container(kubectl_json(view.kubeconfig, "-n", view.namespace, "get", "statefulset", i)
                                  ["spec"]["template"]["spec"])["resources"]["requests"]["cpu"] for i in INSTANCES}


def sql_or_none(view: ClusterView, instance: str, statement: str) -> list[tuple] | None:
    try:
        return view.sql(instance, statement)
    except psycopg.Error:
        return None


def assert_lost_writes_are_the_newest(outcome: FailoverRun) -> None:
    """Without synchronous replication acknowledged writes may be lost, but only the last
    ones before the fault (WAL is one stream): never a hole."""
    if outcome.lost:
        acked = [i for i, _ in outcome.writer.acked]
        first = acked.index(outcome.lost[0])
        assert outcome.lost == acked[first:first + len(outcome.lost)], "lost writes are not one run"
        assert all(i not in outcome.lost for i in acked[first + len(outcome.lost):] if i > outcome.lost[-1])


def delete_pod(kubectl, namespace: str) -> Callable[[str], None]:
    return lambda instance: kubectl("-n", namespace, "delete", "pod", f"{instance}-0", "--wait=false")


# The postmaster's PID is the first line of postmaster.pid: PID 1 of its container, or not
# when the pod shares one PID namespace (clusters with backups).
KILL_POSTMASTER = "kill -QUIT $(head -1 /var/lib/postgresql/data/pgdata/postmaster.pid)"


def kill_postgres(kubectl, namespace: str) -> Callable[[str], None]:
    """SIGQUIT to the postmaster: immediate shutdown, the container exits."""
    return lambda instance: kubectl("-n", namespace, "exec", f"{instance}-0", "-c", "postgres", "--",
                                    "bash", "-c", KILL_POSTMASTER)



def operator_pods(kubectl) -> list[dict]:
    pods = kubectl.json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/name=shopdb-operator")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def lease_holder(kubectl) -> str:
    lease = kubectl.json("-n", OPERATOR_NAMESPACE, "get", "lease", "shopdb-operator")
    return lease["spec"].get("holderIdentity", "")


def freeze_walreceivers(kubectl, view: ClusterView, instances: list[str], signal: str) -> None:
    """SIGSTOP / SIGCONT the walreceivers of these instances (they stop receiving WAL)."""
    for instance in instances:
        kubectl("-n", view.namespace, "exec", f"{instance}-0", "-c", "postgres", "--", "bash", "-c",
                f"kill -{signal} $(ps -eo pid,args | awk '/postgres: walreceiver/ && !/awk/ {{print $1}}')")


# --- faults made from the node (the test host is the local cluster's node, as root) ----------

def container_processes(kubectl, namespace: str, pod: str, container: str) -> list[int]:
    """Host PIDs of every process of a running container, read from its cgroup."""
    status = kubectl.json("-n", namespace, "get", "pod", pod)["status"]
    state = next(s for s in status.get("containerStatuses") or [] if s["name"] == container)
    container_id = (state.get("containerID") or "").split("://")[-1]
    assert container_id and "running" in state["state"], f"{pod}/{container} is not running: {state['state']}"
    pids = []
    for cgroup in Path("/proc").glob("[0-9]*/cgroup"):
        try:
            if container_id in cgroup.read_text():
                pids.append(int(cgroup.parent.name))
        except OSError:  # the process ended meanwhile
            continue
    assert pids, f"no process of container {container_id} found under /proc"
    return pids


def signal_processes(pids: list[int], signal: str) -> None:
    subprocess.run(["kill", f"-{signal}", *map(str, pids)], capture_output=True, timeout=10)  # gone ones: fine


class Stopped:
    """Processes stopped with SIGSTOP by freeze() and continued by thaw()."""

    def __init__(self, pids: list[int]):
        self.pids, self.frozen = pids, False

    def freeze(self) -> None:
        signal_processes(self.pids, "STOP")
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            signal_processes(self.pids, "CONT")
            self.frozen = False


class Freezer(Stopped):
    """Every process of a container stopped, as a primary hung on its storage or starved of
    CPU: TCP handshakes still complete (the kernel answers them), nothing else does. A
    fenced (deleted) pod is still killed: SIGKILL ends stopped processes."""

    def __init__(self, kubectl, namespace: str, pod: str, container: str = "postgres"):
        super().__init__(container_processes(kubectl, namespace, pod, container))


def in_pod_network(kubectl, namespace: str, pod: str, container: str, *command: str) -> None:
    """Run a host command (iptables) inside a pod's network namespace."""
    pid = container_processes(kubectl, namespace, pod, container)[0]
    proc = subprocess.run(["nsenter", "-t", str(pid), "-n", *command], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{' '.join(command)} in {pod}: {proc.stderr}"


# --- a node cut off from the control plane (the primary lease, fencing/) ----------------------

LOCALKUBE_POD_LOGS = Path("/var/lib/shopdb-localkube/log/pods")  # the local cluster's kubelet podLogsDir


def api_server_addresses(kubectl) -> list[tuple[str, int]]:
    """Where a pod reaches the API server: the `kubernetes` Service and its endpoints."""
    service = kubectl.json("-n", "default", "get", "service", "kubernetes")["spec"]
    addresses = [(service["clusterIP"], service["ports"][0]["port"])]
    for subset in kubectl.json("-n", "default", "get", "endpoints", "kubernetes").get("subsets") or []:
        for port in subset.get("ports") or []:
            addresses += [(a["ip"], port["port"]) for a in subset.get("addresses") or []]
    return addresses


class PodNetworkCut:
    """iptables rules in one pod's network namespace (entered through a container that lives
    as long as the pod), removed by heal(); a pod deleted meanwhile took them with it."""

    def __init__(self, kubectl, namespace: str, pod: str, container: str, rules: list[list[str]]):
        self.pid = container_processes(kubectl, namespace, pod, container)[0]
        self.rules, self.applied = rules, []

    def _iptables(self, action: str, rule: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.pid), "-n", "iptables", action, *rule],
                              capture_output=True, text=True, timeout=30)

    def cut(self) -> None:
        for rule in self.rules:
            proc = self._iptables("-I", rule)
            assert proc.returncode == 0, f"iptables -I {' '.join(rule)}: {proc.stderr}"
            self.applied.append(rule)

    def heal(self) -> None:
        while self.applied:
            self._iptables("-D", self.applied.pop())  # fails once the pod is gone: nothing left to heal


def control_plane_cut(kubectl, namespace: str, pod: str, from_operator: bool) -> PodNetworkCut:
    """The pod loses the API server (and, with `from_operator`, the operator loses the pod),
    while its replicas and clients still reach it: a node cut off from the control plane."""
    rules = [["OUTPUT", "-p", "tcp", "-d", ip, "--dport", str(port), "-j", "DROP"]
             for ip, port in api_server_addresses(kubectl)]
    if from_operator:
        rules += [["INPUT", "-s", p["status"]["podIP"], "-j", "DROP"] for p in operator_pods(kubectl)]
    return PodNetworkCut(kubectl, namespace, pod, "instance-agent", rules)


class FrozenKubelet(Stopped):
    """The node's kubelet, to be stopped (this host is the local cluster's node): pods keep
    running, but nothing reports them, probes them, or carries out their deletion."""

    def __init__(self):
        proc = subprocess.run(["pgrep", "-x", "kubelet"], capture_output=True, text=True, timeout=10)
        pids = [int(p) for p in proc.stdout.split()]
        assert pids, "no kubelet process on this host (the local cluster's node)"
        super().__init__(pids)


def node_log_lines(namespace: str, pod: str, uid: str, container: str, needle: str) -> list[tuple[float, str]]:
    """(wall time, text) of the lines of a container's log (every run) containing `needle`,
    read from the node's log files: there even while the kubelet cannot serve `kubectl logs`."""
    found = []
    for path in sorted((LOCALKUBE_POD_LOGS / f"{namespace}_{pod}_{uid}" / container).glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            stamp, _, rest = line.partition(" ")
            if needle in rest:
                found.append((_rfc3339(stamp), rest.split(" ", 2)[-1]))
    return found


def _rfc3339(stamp: str) -> float:
    """containerd's nanosecond timestamps, to seconds since the epoch."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.timezone.utc).timestamp()
    return seconds + float(f"0.{fraction or 0}")


def wall(status_time: str) -> float:
    """A status timestamp (UTC) in seconds since the epoch."""
    return datetime.datetime.fromisoformat(status_time.replace("Z", "+00:00")).timestamp()
