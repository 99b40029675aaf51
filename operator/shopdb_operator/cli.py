"""The `shopdb-operator` command: run the operator, print the CRD, request a switchover or a
backup, list backups, run maintenance, run a database pod's instance-agent."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from kopf.cli import main as kopf_main  # imported late: `crd` and `maintain` need no kopf

    from . import metrics
    from .kube.cache import WATCH_SCOPE_ENV

    if args.metrics_address:
        metrics.serve(args.metrics_address)  # a daemon thread, up before kopf starts
    argv = ["run", "--module", "shopdb_operator.handlers", "--liveness", args.liveness]
    argv += ["--peering", args.peering] if args.peering else ["--standalone"]
    if args.namespace and not args.all_namespaces:
        for namespace in args.namespace:
            argv += ["--namespace", namespace]
        os.environ[WATCH_SCOPE_ENV] = "namespace"  # the RBAC may allow watches in these namespaces only
    else:
        argv.append("--all-namespaces")
        os.environ[WATCH_SCOPE_ENV] = "cluster"
    return kopf_main(argv, standalone_mode=False) or 0


def _crd(args: argparse.Namespace) -> int:
    from .api.crd import crd_yaml

    text = crd_yaml()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _switchover(args: argparse.Namespace) -> int:
    from kubernetes.config import ConfigException

    from .failover.adapters import request_switchover
    from .kube.client import Kube

    try:
        request_switchover(Kube(), args.namespace, args.name, args.to)
    except (LookupError, ValueError, ConfigException) as err:
        print(f"shopdb-operator switchover: {err}", file=sys.stderr)
        return 2
    print(f"switchover of {args.namespace}/{args.name} to {args.to} requested; "
          f"follow it with: kubectl -n {args.namespace} get sdc {args.name} -o jsonpath='{{.status.failover}}'")
    return 0


def _backup(args: argparse.Namespace) -> int:
    from kubernetes.config import ConfigException

    from . import GROUP, KIND, VERSION
    from .kube.client import Kube

    annotations = {f"{GROUP}/backup-now": args.type, f"{GROUP}/backup-repository": args.repository}
    try:
        kube = Kube()
        body = kube.get(f"{GROUP}/{VERSION}", KIND, args.namespace, args.name)
        if body is None:
            raise LookupError(f"ShopDatabaseCluster {args.namespace}/{args.name} not found")
        repositories = [r["name"] for r in ((body.get("spec") or {}).get("backup") or {}).get("repositories") or []]
        if not repositories:
            raise ValueError(f"{args.name} has no spec.backup.repositories")
        if args.repository and args.repository not in repositories:
            raise ValueError(f"no repository {args.repository} (repositories: {', '.join(repositories)})")
        kube.merge_patch(f"{GROUP}/{VERSION}", KIND, args.namespace, args.name, {"metadata": {"annotations": annotations}})
    except (LookupError, ValueError, ConfigException) as err:
        print(f"shopdb-operator backup: {err}", file=sys.stderr)
        return 2
    print(f"{args.type} backup of {args.namespace}/{args.name} requested; follow it with: "
          f"shopdb-operator backups {args.name} -n {args.namespace}")
    return 0


def backups_table(status: dict) -> str:
    """What each repository holds, as status.backup records it (from pgbackrest info)."""
    backup = status.get("backup") or {}
    lines = []
    for repo, held in sorted((backup.get("repositories") or {}).items()):
        lines.append(f"repository {repo}: recoverable from {held.get('firstRecoverabilityPoint') or '-'}; "
                     f"WAL {' .. '.join(held.get('walRange') or ['-'])}")
        failed = held.get("lastFailedBackup")
        if failed:
            lines.append(f"  last failure: {failed.get('at')} {failed.get('type')}: {failed.get('reason')}")
        lines.append(f"  {'LABEL':<34} {'TYPE':<5} {'FINISHED':<21} {'SECONDS':>7} {'SIZE':>12} {'STORED':>12}")
        for b in held.get("backups") or []:
            lines.append(f"  {b.get('label') or '':<34} {b.get('type') or '':<5} {b.get('finishedAt') or '':<21} "
                         f"{b.get('durationSeconds') or 0:>7} {b.get('sizeBytes') or 0:>12} "
                         f"{b.get('repositorySizeBytes') or 0:>12}")
    archiving = backup.get("archiving") or {}
    if archiving:
        lines.append(f"WAL archiving: last {archiving.get('lastArchivedWal')} at {archiving.get('lastArchivedAt')}; "
                     f"last failure {archiving.get('lastFailedWal') or '-'} at {archiving.get('lastFailedAt') or '-'}")
        for failing in archiving.get("failingRepositories") or []:
            lines.append(f"  failing: {failing.get('repository') or 'every repository'}: {failing.get('error')}")
    return "\n".join(lines) if lines else "no backup recorded yet"


def _backups(args: argparse.Namespace) -> int:
    from kubernetes.config import ConfigException

    from . import GROUP, KIND, VERSION
    from .kube.client import Kube

    try:
        body = Kube().get(f"{GROUP}/{VERSION}", KIND, args.namespace, args.name)
    except ConfigException as err:
        print(f"shopdb-operator backups: {err}", file=sys.stderr)
        return 2
    if body is None:
        print(f"shopdb-operator backups: ShopDatabaseCluster {args.namespace}/{args.name} not found", file=sys.stderr)
        return 2
    print(backups_table(body.get("status") or {}))
    return 0


def _instance_agent(args: argparse.Namespace) -> int:
    from .fencing.agent_main import main as agent_main  # standard library only: starts in a blink

    return agent_main()


def _maintain(args: argparse.Namespace) -> int:
    from . import maintenance

    return maintenance.main(args.rest)


def _address(text: str) -> str:
    """host:port, or "" (off)."""
    if text:
        from .metrics import parse_address

        try:
            parse_address(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{err} (e.g. 0.0.0.0:9560)") from None
    return text


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="shopdb-operator", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator (wraps `kopf run`)")
    run.add_argument("--namespace", "-n", action="append", default=[],
                     help="watch this namespace (repeatable); all namespaces when none is given")
    run.add_argument("--all-namespaces", "-A", action="store_true")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                     help="liveness endpoint for the kubelet's probe")
    run.add_argument("--metrics-address", default="0.0.0.0:9560", type=_address,
                     help="host:port of the operator's Prometheus /metrics endpoint; an empty string turns it off")
    run.add_argument("--peering", default=None,
                     help="kopf peering name, for more than one operator replica (needs kopf's peering CRDs)")
    run.set_defaults(func=_run)

    crd = sub.add_parser("crd", help="print the CustomResourceDefinition generated from the API models")
    crd.add_argument("--output", "-o", help="write to this file instead of stdout")
    crd.set_defaults(func=_crd)

    switchover = sub.add_parser("switchover", aliases=["promote"],
                                help="move the primary to another instance without data loss (the same as "
                                     "annotating shopdb.io/switchover-to); also the go-ahead a supervised "
                                     "rolling update waits for at the primary's turn")
    switchover.add_argument("name", help="the ShopDatabaseCluster")
    switchover.add_argument("--to", required=True, help="the pool instance to promote, e.g. shop-2")
    switchover.add_argument("--namespace", "-n", default="default")
    switchover.set_defaults(func=_switchover)

    backup = sub.add_parser("backup", help="take a backup now (the same as annotating shopdb.io/backup-now)")
    backup.add_argument("name", help="the ShopDatabaseCluster")
    backup.add_argument("--type", choices=["full", "diff", "incr"], default="full")
    backup.add_argument("--repository", "--repo", default=None, help="one repository (all when not given)")
    backup.add_argument("--namespace", "-n", default="default")
    backup.set_defaults(func=_backup)

    backups = sub.add_parser("backups", help="what each repository holds, the recoverability window, WAL archiving")
    backups.add_argument("name", help="the ShopDatabaseCluster")
    backups.add_argument("--namespace", "-n", default="default")
    backups.set_defaults(func=_backups)

    agent = sub.add_parser("instance-agent", help="the database pods' sidecar: renews the primary lease and "
                                                  "fences a primary that lost it (environment from the pod)")
    agent.set_defaults(func=_instance_agent)

    maintain = sub.add_parser("maintain", help="maintenance the CronJobs run (partitions, views)",
                              add_help=False)
    maintain.add_argument("rest", nargs=argparse.REMAINDER)
    maintain.set_defaults(func=_maintain)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
