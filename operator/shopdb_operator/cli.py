"""The `shopdb-operator` command: run the operator, print the CRD, request a switchover,
run maintenance."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from kopf.cli import main as kopf_main  # imported late: `crd` and `maintain` need no kopf

    argv = ["run", "--module", "shopdb_operator.handlers", "--liveness", args.liveness]
    argv += ["--peering", args.peering] if args.peering else ["--standalone"]
    if args.namespace and not args.all_namespaces:
        for namespace in args.namespace:
            argv += ["--namespace", namespace]
    else:
        argv.append("--all-namespaces")
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


def _maintain(args: argparse.Namespace) -> int:
    from . import maintenance

    return maintenance.main(args.rest)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="shopdb-operator", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator (wraps `kopf run`)")
    run.add_argument("--namespace", "-n", action="append", default=[],
                     help="watch this namespace (repeatable); all namespaces when none is given")
    run.add_argument("--all-namespaces", "-A", action="store_true")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                     help="liveness endpoint for the kubelet's probe")
    run.add_argument("--peering", default=None,
                     help="kopf peering name, for more than one operator replica (needs kopf's peering CRDs)")
    run.set_defaults(func=_run)

    crd = sub.add_parser("crd", help="print the CustomResourceDefinition generated from the API models")
    crd.add_argument("--output", "-o", help="write to this file instead of stdout")
    crd.set_defaults(func=_crd)

    switchover = sub.add_parser("switchover", help="move the primary to another instance without data loss "
                                                   "(the same as annotating shopdb.io/switchover-to)")
    switchover.add_argument("name", help="the ShopDatabaseCluster")
    switchover.add_argument("--to", required=True, help="the pool instance to promote, e.g. shop-2")
    switchover.add_argument("--namespace", "-n", default="default")
    switchover.set_defaults(func=_switchover)

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
