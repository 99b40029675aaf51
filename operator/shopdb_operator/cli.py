"""The `shopdb-operator` command: run the operator, print the CRD, run maintenance."""

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
