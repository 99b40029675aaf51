"""Cluster contexts for builder tests."""

from shopdb_operator.api.spec import ClusterSpec
from shopdb_operator.builders import ClusterContext
from shopdb_operator.topology import plan_topology


def make_context(spec: dict | None = None, name: str = "shop", namespace: str = "shop",
                 recorded: dict | None = None) -> ClusterContext:
    parsed = ClusterSpec.model_validate(spec or {})
    return ClusterContext(name=name, namespace=namespace, uid="uid-1234", spec=parsed,
                          topology=plan_topology(name, parsed, recorded), operator_image="shopdb/operator:test")