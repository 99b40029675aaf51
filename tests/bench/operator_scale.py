"""Operator-scale benchmark on the local cluster: what the operator itself costs as clusters
multiply. It creates N small clusters (a primary and one promotable replica each, PgBouncer
1 instance, Redis off, tiny resources), waits until every one is Ready, and measures:

- the operator process's RSS and its CPU (% of one core, from /proc over an idle window)
  with 0 clusters and with N, and the cost per cluster;
- the latency from a spec edit to its effect: `work_mem` changed on one cluster (a reloadable
  parameter), until every instance's `SHOW work_mem` returns it ("show"), and until
  status.configuration.parameters records it ("status").

Numbers, not a test: only `--smoke` asserts, and only that each measurement was made.

    make bench-operator-scale                         # N=50 (or the most this node schedules)
    python tests/bench/operator_scale.py --clusters 8 --idle-seconds 60
    python tests/bench/operator_scale.py --smoke      # N=1, short windows: does it work

Every cluster's pods request CPU (requests are the limits, Guaranteed QoS, and every database
pod has its instance-agent's 10m too). When N clusters do not fit the node's allocatable CPU
or its pod limit, the largest N that does is measured instead (said in the output; `--strict`
refuses), and the per-cluster cost is extrapolated to N.

The operator process is found through its pod's cgroup (the local cluster runs containers on
this host), so run it as root on the local cluster's host. Installs the operator from this
checkout (tests/e2e/support.py install_operator), brings the local cluster up if it is not,
and removes what it created, also on Ctrl-C or a failure (the operator too, if it was not
installed before). Hold the shared lock while it runs:

    flock /tmp/shopdb-e2e.lock make bench-operator-scale
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))

import yaml  # noqa: E402

from conftest import LOCALKUBE, Images, Kubectl  # noqa: E402
from load import instance_addresses, query, secret  # noqa: E402
import support  # noqa: E402
from failover import ensure_cluster  # noqa: E402  (tests/bench/failover.py)
from support import OPERATOR_NAMESPACE, REPO, example_cluster, install_operator, wait_for  # noqa: E402

NAMESPACE = "bench-scale"
OPERATOR_LABEL = "app.kubernetes.io/name=shopdb-operator"
AGENT_CPU_MILLI = 10  # builders/agent.py RESOURCES: every database pod's sidecar
PODS_PER_CLUSTER = 3  # two database pods, one PgBouncer
TARGET_CPU_PERCENT = 5.0
TARGET_RSS_MIB = 200.0


# --- the operator process --------------------------------------------------------------------

def operator_pid(kubectl: Kubectl) -> int:
    """The PID (on this host) of the operator's `shopdb-operator run`, found through its pod's
    cgroup: /proc/PID/cgroup names pod<uid> (or pod<uid with underscores> under systemd)."""
    pods = [p for p in kubectl.json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l", OPERATOR_LABEL)["items"]
            if not p["metadata"].get("deletionTimestamp") and (p.get("status") or {}).get("phase") == "Running"]
    if len(pods) != 1:
        raise AssertionError(f"expected one running operator pod, found {len(pods)}")
    uid = pods[0]["metadata"]["uid"]
    marks = (f"pod{uid}", f"pod{uid.replace('-', '_')}")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroup = (entry / "cgroup").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(m in cgroup for m in marks) and "shopdb-operator" in cmdline and " run" in cmdline:
            found.append(int(entry.name))
    if not found:
        raise AssertionError(f"no `shopdb-operator run` process in the cgroup of pod {uid} on this host "
                             f"(run this on the local cluster's host, as root)")
    return min(found)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host (/proc/stat), every core."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass
class Sample:
    clusters: int
    cpu_percent: float  # of one core, over the window
    rss_mib: float  # at the end of the window
    rss_max_mib: float
    seconds: float
    host_busy_percent: float  # of all the host's cores: how contended the window was


def measure_idle(pid: int, clusters: int, seconds: float) -> Sample:
    """CPU and RSS of the operator over `seconds` of doing nothing but its checks."""
    start_cpu, start, host_start = cpu_seconds(pid), time.monotonic(), host_cpu()
    peak = rss_mib(pid)
    while time.monotonic() - start < seconds:
        time.sleep(min(5.0, max(0.0, seconds - (time.monotonic() - start))))
        peak = max(peak, rss_mib(pid))
    elapsed = time.monotonic() - start
    used = cpu_seconds(pid) - start_cpu
    rss = rss_mib(pid)
    host_end = host_cpu()
    busy = 100 * (host_end[0] - host_start[0]) / max(1, host_end[1] - host_start[1])
    return Sample(clusters, 100 * used / elapsed, rss, max(peak, rss), elapsed, busy)


def api_requests(kubectl: Kubectl) -> dict[tuple[str, str], float]:
    """The API server's request counters by (verb, resource[/subresource]): every client's,
    the operator's above all (the agents' lease reads and the kubelet's status writes too)."""
    counts: dict[tuple[str, str], float] = {}
    for line in kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, value = line[len("apiserver_request_total{"):].rsplit("} ", 1)
        fields = dict(part.split("=", 1) for part in labels.split('",') if "=" in part)
        fields = {k: v.strip('"') for k, v in fields.items()}
        if fields.get("verb") in ("WATCH", "CONNECT") or not fields.get("resource"):
            continue
        resource = fields["resource"] + (f"/{fields['subresource']}" if fields.get("subresource") else "")
        key = (fields["verb"], resource)
        counts[key] = counts.get(key, 0) + float(value)
    return counts


def request_rates(before: dict, after: dict, seconds: float) -> list[tuple[float, str]]:
    rates = [((after[k] - before.get(k, 0)) / seconds, f"{k[0]} {k[1]}") for k in after]
    return sorted((r for r in rates if r[0] >= 0.05), reverse=True)


# --- what fits -------------------------------------------------------------------------------

def milli(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def cluster_cpu_milli(args) -> int:
    return 2 * (milli(args.postgres_cpu) + AGENT_CPU_MILLI) + milli(args.pgbouncer_cpu)


def node_room(kubectl: Kubectl) -> tuple[int, int, str]:
    """(CPU millicores, pods) still free on the node (single-node cluster), and the node."""
    node = kubectl.json("get", "nodes")["items"][0]
    allocatable = node["status"]["allocatable"]
    cpu, pods = milli(allocatable["cpu"]), int(allocatable["pods"])
    running = [p for p in kubectl.json("get", "pods", "-A")["items"]
               if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    requested = 0
    for pod in running:
        for container in pod["spec"].get("containers") or []:
            requested += milli(((container.get("resources") or {}).get("requests") or {}).get("cpu", "0"))
    return cpu - requested, pods - len(running), node["metadata"]["name"]


def clusters_that_fit(kubectl: Kubectl, args, wanted: int) -> tuple[int, str]:
    free_cpu, free_pods, node = node_room(kubectl)
    per_cluster = cluster_cpu_milli(args)
    by_cpu = int(free_cpu * 0.97) // per_cluster  # a little slack for Jobs and the operator's restart
    by_pods = (free_pods - 2) // PODS_PER_CLUSTER
    fits = min(by_cpu, by_pods)
    why = (f"node {node}: {free_cpu}m CPU and {free_pods} pods free; one cluster requests {per_cluster}m "
           f"(2 x ({args.postgres_cpu} postgres + {AGENT_CPU_MILLI}m agent) + {args.pgbouncer_cpu} PgBouncer) "
           f"and {PODS_PER_CLUSTER} pods: room for {by_cpu} by CPU, {by_pods} by pods")
    return min(wanted, fits), why


# --- the clusters ----------------------------------------------------------------------------

def small_cluster(images: Images, name: str, args) -> dict:
    """cluster-small.yaml's shape (tests/e2e/support.py example_cluster), cut to two instances."""
    cluster = example_cluster(images, NAMESPACE, name)
    spec = cluster["spec"]
    spec["postgres"].pop("initSQL", None)
    spec["postgres"]["resources"] = {"primary": {"cpu": args.postgres_cpu, "memory": args.postgres_memory},
                                     "replica": {"cpu": args.postgres_cpu, "memory": args.postgres_memory}}
    spec["replicas"] = [{"name": "orders", "purpose": "bench", "poolSize": 5, "promotable": True}]
    spec["pgbouncer"].update({"instances": 1, "resources": {"cpu": args.pgbouncer_cpu, "memory": "32Mi"}})
    spec["redis"] = {"enabled": False, "image": images.redis}
    spec.pop("maintenance", None)
    spec["failover"] = {"enabled": True}
    spec["reclaimPolicy"] = "Delete"
    return cluster


def phases(kubectl: Kubectl) -> dict[str, str]:
    items = kubectl.json("-n", NAMESPACE, "get", "shopdatabaseclusters")["items"]
    return {c["metadata"]["name"]: (c.get("status") or {}).get("phase") or "-" for c in items}


def create_clusters(kubectl: Kubectl, images: Images, count: int, args) -> float:
    """Create `count` clusters, `args.batch` at a time (each batch Ready before the next: a
    2-core node starting 50 PostgreSQL at once mostly waits); returns the seconds it took."""
    started = time.monotonic()
    names = [f"c{i}" for i in range(1, count + 1)]
    for first in range(0, count, args.batch):
        batch = names[first:first + args.batch]
        kubectl.apply(yaml.safe_dump_all([small_cluster(images, n, args) for n in batch]))

        last = [""]

        def ready() -> bool:
            seen = phases(kubectl)
            waiting = [n for n in names[:first + len(batch)] if seen.get(n) != "Ready"]
            summary = ", ".join(f"{n}={seen.get(n)}" for n in waiting[:8])
            if waiting and summary != last[0]:
                print(f"  not Ready yet ({time.monotonic() - started:.0f}s): {summary}", flush=True)
                last[0] = summary
            return not waiting
        wait_for(ready, args.ready_timeout, f"clusters {batch[0]}..{batch[-1]} Ready", interval=5)
        print(f"{first + len(batch)}/{count} clusters Ready after {time.monotonic() - started:.0f}s", flush=True)
    return time.monotonic() - started


def spec_edit_latency(kubectl: Kubectl, cluster: str, timeout: float) -> tuple[float, float]:
    """Seconds from a work_mem edit of `cluster` until every instance's new sessions show it,
    and until status.configuration.parameters records it (every instance loaded it)."""
    password = secret(kubectl.kubeconfig, NAMESPACE, f"{cluster}-superuser")
    addresses = instance_addresses(kubectl.kubeconfig, NAMESPACE, cluster)
    assert len(addresses) == 2, f"{cluster}: expected 2 database pods with addresses, got {addresses}"
    current = {query(ip, password, "SHOW work_mem")[0][0] for ip in addresses.values()}
    value = "5MB" if current != {"5MB"} else "6MB"
    started = time.monotonic()
    kubectl("-n", NAMESPACE, "patch", "shopdatabasecluster", cluster, "--type", "merge", "-p",
            f'{{"spec": {{"postgres": {{"parameters": {{"work_mem": "{value}"}}}}}}}}')
    shown = recorded = None
    while (shown is None or recorded is None) and time.monotonic() - started < timeout:
        if shown is None:
            try:
                if all(query(ip, password, "SHOW work_mem")[0][0] == value for ip in addresses.values()):
                    shown = time.monotonic() - started
            except Exception:  # noqa: BLE001 (a refused connection is "not yet")
                pass
        if recorded is None:
            status = kubectl.json("-n", NAMESPACE, "get", "shopdatabasecluster", cluster).get("status") or {}
            if ((status.get("configuration") or {}).get("parameters") or {}).get("work_mem") == value:
                recorded = time.monotonic() - started
        time.sleep(0.2)
    if shown is None or recorded is None:
        raise AssertionError(f"work_mem={value} on {cluster} not in effect after {timeout:.0f}s "
                             f"(shown: {shown}, recorded: {recorded})")
    return shown, recorded


def delete_clusters(kubectl: Kubectl) -> None:
    """Clusters first, while the operator runs to release their finalizers, then the namespace."""
    if kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        return
    print(f"deleting namespace {NAMESPACE} and its clusters", flush=True)
    kubectl("-n", NAMESPACE, "delete", "shopdatabaseclusters", "--all", "--wait=true", "--timeout=600s",
            check=False, timeout=660)
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=300s",
            check=False, timeout=360)


def uninstall_operator(kubectl: Kubectl) -> None:
    """What the e2e `operator` fixture does at its end (Helm tests refuse a kubectl-made CRD)."""
    kubectl("delete", "-f", str(REPO / "crds"), "--ignore-not-found", "--wait=true", "--timeout=120s", check=False,
            timeout=180)
    kubectl("delete", "-f", str(REPO / "manifests"), "--ignore-not-found", "--wait=true", check=False, timeout=300)


def install(kubectl: Kubectl, images: Images, tree: str | None) -> None:
    """install_operator(), from `tree` (another checkout, e.g. `git archive REV | tar -x -C DIR`,
    to compare two revisions: its image, CRD and manifests) instead of this one when given."""
    if not tree:
        install_operator(kubectl, images)
        return
    tree_path = Path(tree).resolve()
    proc = subprocess.run([str(LOCALKUBE), "image", "operator", str(tree_path)], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"building the operator image from {tree} failed:\n{proc.stderr[-4000:]}"
    support._operator_image_built = True  # install_operator() then installs that image as it is
    saved, support.REPO = support.REPO, tree_path  # and that tree's crds/ and manifests/
    try:
        install_operator(kubectl, images)
    finally:
        support.REPO = saved


# --- the report ------------------------------------------------------------------------------

def table(idle: Sample, loaded: Sample | None, latency: tuple[float, float] | None, wanted: int) -> str:
    lines = [f"{'clusters':>8} {'pods':>5} {'RSS MiB':>8} {'max RSS':>8} {'CPU % core':>10} {'window s':>8} "
             f"{'host busy %':>11}"]
    for s in (idle, loaded):
        if s is not None:
            lines.append(f"{s.clusters:>8} {s.clusters * PODS_PER_CLUSTER:>5} {s.rss_mib:>8.1f} {s.rss_max_mib:>8.1f} "
                         f"{s.cpu_percent:>10.2f} {s.seconds:>8.0f} {s.host_busy_percent:>11.0f}")
    if loaded is not None and loaded.clusters:
        cpu_each = (loaded.cpu_percent - idle.cpu_percent) / loaded.clusters
        rss_each = (loaded.rss_mib - idle.rss_mib) / loaded.clusters
        lines.append(f"per cluster: {cpu_each:.3f} % of a core, {rss_each:.2f} MiB")
        for n in sorted({wanted, 50, 100}):
            cpu, rss = idle.cpu_percent + n * cpu_each, idle.rss_mib + n * rss_each
            measured = " (measured)" if n == loaded.clusters else ""
            lines.append(f"  {n:>3} clusters: {cpu:6.2f} % of a core, {rss:6.1f} MiB{measured}"
                         + (f"   target: < {TARGET_CPU_PERCENT:g} %, < {TARGET_RSS_MIB:g} MiB" if n == 50 else ""))
    if latency is not None:
        lines.append(f"spec edit -> effect (work_mem): every instance shows it after {latency[0]:.1f}s, "
                     f"status.configuration records it after {latency[1]:.1f}s")
    return "\n".join(lines)


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, default=50, help="N (default 50)")
    parser.add_argument("--smoke", action="store_true",
                        help="N=1 and short windows: asserts every measurement works, not how fast")
    parser.add_argument("--idle-seconds", type=float, default=60, help="CPU/RSS window (default 60)")
    parser.add_argument("--settle-seconds", type=float, default=30,
                        help="wait after the last cluster is Ready (or the operator started) before measuring")
    parser.add_argument("--batch", type=int, default=12, help="clusters created at a time (default 12)")
    parser.add_argument("--ready-timeout", type=float, default=600, help="seconds for a batch to become Ready")
    parser.add_argument("--postgres-cpu", default="50m",
                        help="each instance's CPU (request = limit; at 20m the exec probes time out)")
    parser.add_argument("--postgres-memory", default="128Mi")
    parser.add_argument("--pgbouncer-cpu", default="20m")
    parser.add_argument("--strict", action="store_true", help="fail when N clusters do not fit the node")
    parser.add_argument("--operator-tree", metavar="DIR",
                        help="build the operator image from this checkout of another revision instead")
    parser.add_argument("--keep", action="store_true", help="leave the clusters (and the operator) in place")
    args = parser.parse_args()
    if args.smoke:
        args.clusters, args.idle_seconds, args.settle_seconds = 1, min(args.idle_seconds, 10), min(
            args.settle_seconds, 5)

    kubeconfig, started_cluster = ensure_cluster()
    kubectl, images = Kubectl(kubeconfig), Images.from_env()
    signal.signal(signal.SIGTERM, _interrupted)  # a killed make or a timeout cleans up like Ctrl-C
    support.finish_crd_deletion(kubectl)  # an interrupted earlier run's
    installed_before = kubectl("get", "crd", support.CRD, check=False).returncode == 0
    if kubectl("get", "namespace", NAMESPACE, check=False).returncode == 0:
        raise SystemExit(f"namespace {NAMESPACE} exists (an earlier run left it?): "
                         f"kubectl delete sdc --all -n {NAMESPACE}; kubectl delete ns {NAMESPACE}")
    try:
        started = time.monotonic()
        install(kubectl, images, args.operator_tree)
        print(f"operator installed from {args.operator_tree or 'this checkout'} in "
              f"{time.monotonic() - started:.0f}s", flush=True)
        others = kubectl.json("get", "shopdatabaseclusters", "-A")["items"]
        if others:
            print(f"note: {len(others)} other clusters exist and count in every measurement: "
                  + ", ".join(f"{c['metadata']['namespace']}/{c['metadata']['name']}" for c in others), flush=True)
        count, why = clusters_that_fit(kubectl, args, args.clusters)
        print(why, flush=True)
        if count < args.clusters:
            if args.strict or count < 1:
                raise SystemExit(f"{args.clusters} clusters do not fit ({why})")
            print(f"measuring {count} clusters instead of {args.clusters}; the cost per cluster is extrapolated",
                  flush=True)

        time.sleep(args.settle_seconds)
        pid = operator_pid(kubectl)
        idle = measure_idle(pid, 0, args.idle_seconds)
        print(f"0 clusters: {idle.cpu_percent:.2f} % of a core, RSS {idle.rss_mib:.1f} MiB", flush=True)

        kubectl("create", "namespace", NAMESPACE)
        took = create_clusters(kubectl, images, count, args)
        print(f"{count} clusters Ready in {took:.0f}s; settling {args.settle_seconds:.0f}s", flush=True)
        time.sleep(args.settle_seconds)
        if operator_pid(kubectl) != pid:
            raise AssertionError("the operator restarted during the run")
        requests_before = api_requests(kubectl)
        loaded = measure_idle(pid, count, args.idle_seconds)
        rates = request_rates(requests_before, api_requests(kubectl), loaded.seconds)
        latency = spec_edit_latency(kubectl, "c1", timeout=120)
        print()
        print(table(idle, loaded, latency, args.clusters))
        print(f"API requests/s while idle with {count} clusters (all clients; operator, agents, kubelet): "
              f"{sum(r for r, _ in rates):.1f}: " + ", ".join(f"{what} {rate:.2f}" for rate, what in rates[:12]))
        if args.smoke:
            assert idle.rss_mib > 0 and loaded.rss_mib > 0 and loaded.cpu_percent >= 0, (idle, loaded)
            assert latency[0] > 0 and latency[1] > 0, latency
            print("smoke: ok")
    finally:
        if not args.keep:
            delete_clusters(kubectl)
            if not installed_before:
                uninstall_operator(kubectl)
            if started_cluster:
                subprocess.run([str(LOCALKUBE), "down"], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
