"""The templates a fence applies: every instance's StatefulSet and ConfigMap for the new
topology, with the resources of each one's new role (imported through the handlers package,
as the failover daemon does)."""

from shopdb_operator.handlers import failover as handler
from shopdb_operator.handlers.reconcile import instance_templates

SPEC = {"postgres": {"resources": {"primary": {"cpu": "500m", "memory": "512Mi"},
                                   "replica": {"cpu": "250m", "memory": "256Mi"}}}}
APPLIED = {"applied": {"postgresVersion": 15, "storageSize": "1Ti", "storageClassName": ""}}


def cpu(statefulset: dict) -> str:
    container = next(c for c in statefulset["spec"]["template"]["spec"]["containers"] if c["name"] == "postgres")
    return container["resources"]["requests"]["cpu"]


def test_each_instance_gets_the_resources_and_labels_of_its_new_role():
    topology = {"currentPrimary": "shop-2", "pool": ["shop-1", "shop-2", "shop-3"],
                "routes": {"search": "shop-1", "orders": "shop-3", "analytics": "shop-analytics"}}
    objects = handler.instance_templates("shop", "shop", "uid-1", SPEC, APPLIED, topology)
    sets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "StatefulSet"}
    assert sorted(sets) == ["shop-1", "shop-2", "shop-3", "shop-analytics"]
    assert {n: cpu(s) for n, s in sets.items()} == {"shop-1": "250m", "shop-2": "500m", "shop-3": "250m",
                                                    "shop-analytics": "250m"}
    roles = {n: s["spec"]["template"]["metadata"]["labels"]["shopdb.io/role"] for n, s in sets.items()}
    assert roles == {"shop-1": "replica", "shop-2": "primary", "shop-3": "replica", "shop-analytics": "replica"}
    assert sorted(o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap") == [
        "shop-1-config", "shop-2-config", "shop-3-config", "shop-analytics-config"]
    assert {o["kind"] for o in objects} == {"StatefulSet", "ConfigMap"}  # nothing else of the cluster


def test_nothing_is_built_for_a_spec_whose_change_is_refused():
    shrunk = {**SPEC, "postgres": {**SPEC["postgres"], "storage": {"size": "1Gi"}}}
    topology = {"currentPrimary": "shop-2", "pool": ["shop-1", "shop-2", "shop-3"], "routes": {}}
    assert instance_templates("shop", "shop", "uid-1", shrunk, APPLIED, topology) is None
