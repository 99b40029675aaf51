"""Failover benchmark on the local cluster: N failovers under continuous writes through
PgBouncer, with, for each and as median and maximum:

- detect:  from the fault to the operator starting the failover (status.failover.startedAt)
- promote: from the fault to the promote step recorded (the new primary is writable)
- done:    from the fault to the failover completed (PgBouncer released)
- RTO:     the longest gap between two acknowledged writes through PgBouncer from the fault
           on (from the fault itself when the old primary stops writing at once)
- back:    from the fault to the first acknowledged write on the new primary (after the
           promotion); later than the RTO's end when the old primary went on writing for a
           while (a node cut off from the control plane, until its lease fences it)
- RPO:     acknowledged writes missing afterwards
- rejoin:  from the fault to every instance (the old primary too) streaming again

With `--clients N` (the order rush: N clients writing through PgBouncer, each pausing
`--pause` seconds between its transactions, and `--idle M` clients connected but idle),
also: failed transactions, writer reconnects, how many idle clients still work on their
same connection afterwards, and whether a PgBouncer restarted (pod replaced or container
restarted).

Numbers, not a test: it asserts nothing. Usage (as root, for the local cluster):

    make bench                                   # 5 deleted primary pods
    python tests/bench/failover.py --runs 5 --fault container
    python tests/bench/failover.py --runs 3 --fault node-cut   # the lease's worst case (local cluster only)
    make bench-failover-load   # 500 writers + 100 idle clients, killed and isolated primary, async and sync
    python tests/bench/failover.py --runs 3 --fault isolate --clients 500 --idle 100 --sync
    SHOPDB_KUBECONFIG=... python tests/bench/failover.py   # an existing cluster routed to this host

Brings the local cluster up if it is not (and down again at the end), installs the
operator from this checkout, and creates a cluster in namespace `bench-failover`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))

import yaml  # noqa: E402

from conftest import LOCAL_KUBECONFIG, LOCALKUBE, Images, Kubectl  # noqa: E402
from failovers import KILL_POSTMASTER, FrozenKubelet, control_plane_cut, wall  # noqa: E402
from failovers import PodNetworkCut  # noqa: E402
from load import ClusterView, fail_over_under_load, pgbouncer_pods  # noqa: E402
from support import apply_schema_config_map, example_cluster, install_operator, wait_for  # noqa: E402

NAMESPACE = "bench-failover"
INSTANCES = ["shop-1", "shop-2", "shop-3", "shop-analytics"]


def ensure_cluster() -> tuple[str, bool]:
    explicit = os.environ.get("SHOPDB_KUBECONFIG")
    if explicit:
        return explicit, False
    ready = subprocess.run(["kubectl", "--kubeconfig", LOCAL_KUBECONFIG, "get", "--raw", "/readyz"],
                           capture_output=True)
    if ready.returncode == 0:
        return LOCAL_KUBECONFIG, False
    subprocess.run([str(LOCALKUBE), "build"], check=True, stdout=sys.stderr)
    subprocess.run([str(LOCALKUBE), "up"], check=True, stdout=subprocess.DEVNULL)
    return LOCAL_KUBECONFIG, True


# Cut off from everything but itself: replicas, PgBouncer, the operator and the API server
# all lose it, while its processes run on (only its lease can stop it from writing).
ISOLATION = [["INPUT", "!", "-i", "lo", "-j", "DROP"], ["OUTPUT", "!", "-o", "lo", "-j", "DROP"]]


def create_cluster(kubectl: Kubectl, images: Images, sync: bool, clients: int) -> ClusterView:
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", timeout=300)
    kubectl("create", "namespace", NAMESPACE)
    apply_schema_config_map(kubectl, NAMESPACE)
    cluster = example_cluster(images, NAMESPACE)
    spec = cluster["spec"]
    if sync:
        spec["postgres"]["synchronous"] = {"enabled": True, "number": 1}
    if clients > 1:
        # the demo's 100m PgBouncers would measure their CPU limit, not the failover
        spec["pgbouncer"]["resources"] = {"cpu": "300m", "memory": "256Mi"}
        spec["postgres"]["resources"] = {"primary": {"cpu": "400m", "memory": "1Gi"},
                                         "replica": {"cpu": "200m", "memory": "512Mi"}}
    kubectl.apply(yaml.safe_dump(cluster))
    wait_for(lambda: (kubectl.json("-n", NAMESPACE, "get", "sdc", "shop").get("status") or {}).get("phase")
             == "Ready", 600, "the cluster to become Ready", interval=5)
    view = ClusterView(kubectl.kubeconfig, NAMESPACE)
    wait_for(lambda: view.all_replicas_stream(INSTANCES), 300, "every replica streaming")
    return view


def one_failover(kubectl: Kubectl, view: ClusterView, fault: str, run: int, clients: int = 1, idle: int = 0,
                 pause: float = 0.1) -> dict:
    history = view.history()
    bouncers = pgbouncer_pods(view.kubeconfig, view.namespace, view.name)
    before = history[-1]["startedAt"] if history else None
    kubelet, cuts = (FrozenKubelet() if fault == "node-cut" else None), []

    def inject(old: str) -> None:
        if fault == "pod":
            kubectl("-n", NAMESPACE, "delete", "pod", f"{old}-0", "--wait=false")
        elif fault == "container":
            kubectl("-n", NAMESPACE, "exec", f"{old}-0", "-c", "postgres", "--", "bash", "-c", KILL_POSTMASTER)
        elif fault == "isolate":
            cuts.append(PodNetworkCut(kubectl, NAMESPACE, f"{old}-0", "instance-agent", ISOLATION))
            cuts[0].cut()
        else:  # the node cut off from the control plane: only the primary lease can end its mandate
            cuts.append(control_plane_cut(kubectl, NAMESPACE, f"{old}-0", from_operator=True))
            assert kubelet is not None
            kubelet.freeze()
            cuts[0].cut()

    def heal_after_the_failover() -> None:
        if fault not in ("node-cut", "isolate"):
            return
        try:
            wait_for(lambda: (h := view.history()) and h[-1]["startedAt"] != before, 180,
                     "the failover, the kubelet frozen", interval=0.3)
        finally:
            heal()

    def heal() -> None:
        for cut in cuts:
            cut.heal()
        if kubelet is not None:
            kubelet.thaw()

    try:
        r = fail_over_under_load(view, f"bench-{int(time.time())}-{run}", inject, INSTANCES,
                                 after_fault=heal_after_the_failover, clients=clients, idle=idle, pause=pause)
        kept, broken = r.writer.check_idle() if idle else (0, 0)
    finally:
        heal()
    entry, fault_wall = r.entry, r.fault_wall
    started = wall(entry["startedAt"])
    promoted = wall(entry["startedAt"]) + sum(seconds for step, seconds in entry["stepSeconds"].items()
                                               if step in ("choose", "fence", "promote"))
    back = r.writer.first_ack_after(r.fault_at + promoted - fault_wall)
    return {"from": r.old, "to": r.new, "detect": started - fault_wall, "promote": promoted - fault_wall,
            "done": wall(entry["finishedAt"]) - fault_wall, "rto": r.longest_gap(),
            "back": promoted - fault_wall + (back if back is not None else float("nan")),
            "rpo": len(r.writer.lost()), "errors": len(r.writer.failures), "rejoin": r.rejoined_after,
            "reconnects": getattr(r.writer, "reconnects", 0), "idle_kept": kept, "idle_lost": broken,
            "acked": len(r.writer.acked),
            "bouncer_restarts": int(pgbouncer_pods(view.kubeconfig, view.namespace, view.name) != bouncers),
            "steps": entry["stepSeconds"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fault", choices=["pod", "container", "isolate", "node-cut"], default="pod",
                        help="delete the primary's pod, kill its PostgreSQL (SIGQUIT to the postmaster), cut its "
                             "pod off the network (everything but loopback dropped inside it), or cut its node off "
                             "from the control plane (kubelet frozen, API server and operator traffic dropped in "
                             "its pod)")
    parser.add_argument("--clients", type=int, default=1, help="writers through PgBouncer (1: one every 20 ms)")
    parser.add_argument("--idle", type=int, default=0, help="clients connected through PgBouncer, idle")
    parser.add_argument("--pause", type=float, default=0.1, help="seconds each of --clients waits between writes")
    parser.add_argument("--sync", action="store_true", help="synchronous replication (ANY 1)")
    parser.add_argument("--keep", action="store_true", help="keep the namespace (and a cluster brought up)")
    args = parser.parse_args()

    kubeconfig, started_cluster = ensure_cluster()
    kubectl, images = Kubectl(kubeconfig), Images.from_env()
    try:
        install_operator(kubectl, images)
        view = create_cluster(kubectl, images, args.sync, args.clients)
        results = []
        columns = ("detect", "promote", "done", "rto", "back", "rpo", "errors", "rejoin")
        if args.clients > 1:
            columns += ("acked", "reconnects", "idle_kept", "idle_lost", "bouncer_restarts")
        print(f"fault {args.fault}, {'sync' if args.sync else 'async'}, {args.clients} writer(s), {args.idle} idle")
        print(f"{'run':>3} {'from':>8} {'to':>8} " + " ".join(f"{c:>8}" for c in columns) + "  steps (s)")
        for run in range(1, args.runs + 1):
            r = one_failover(kubectl, view, args.fault, run, args.clients, args.idle, args.pause)
            results.append(r)
            print(f"{run:>3} {r['from']:>8} {r['to']:>8} "
                  + " ".join(f"{r[c]:>8.2f}" if isinstance(r[c], float) else f"{r[c]:>8}" for c in columns)
                  + "  " + json.dumps(r["steps"]), flush=True)
        for name, pick in (("median", statistics.median), ("max", max)):
            print(f"{name:>21} " + " ".join(f"{pick([r[c] for r in results]):>8.2f}" for c in columns))
    finally:
        if not args.keep:
            kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
            if started_cluster:
                subprocess.run([str(LOCALKUBE), "down"], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
