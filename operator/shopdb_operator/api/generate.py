"""Writes every artifact generated from the API models; `--check` fails when one drifted.

    python -m shopdb_operator.api.generate [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..monitoring.rules import prometheus_rule_yaml, rules_file_yaml
from .crd import crd_yaml

REPO = Path(__file__).resolve().parents[3]
CRD_FILE = REPO / "crds" / "shopdatabaseclusters.shopdb.io.yaml"
CHART_CRD_FILE = REPO / "helm" / "shopdb-operator" / "templates" / "crd.yaml"
# The alert rules with the default thresholds: a plain rules file and a PrometheusRule.
RULES_FILE = REPO / "manifests" / "monitoring" / "prometheus-rules.yaml"
PROMETHEUS_RULE_FILE = REPO / "manifests" / "monitoring" / "prometheus-rule.yaml"


def chart_crd_yaml() -> str:
    """The CRD as a chart template: upgraded by `helm upgrade`, kept by `helm uninstall`."""
    body = crd_yaml().replace(
        "metadata:\n  name: shopdatabaseclusters.shopdb.io\n",
        "metadata:\n  name: shopdatabaseclusters.shopdb.io\n"
        "  annotations:\n    helm.sh/resource-policy: keep\n",
        1,
    )
    return "{{- if .Values.crds.install }}\n" + body + "{{- end }}\n"


def artifacts() -> dict[Path, str]:
    return {CRD_FILE: crd_yaml(), CHART_CRD_FILE: chart_crd_yaml(),
            RULES_FILE: rules_file_yaml(), PROMETHEUS_RULE_FILE: prometheus_rule_yaml()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report files that differ")
    args = parser.parse_args(argv)
    stale = []
    for path, text in artifacts().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(("stale: " if args.check else "wrote: ") + str(path.relative_to(REPO)))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
