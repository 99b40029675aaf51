from shopdb_operator.api.spec import ClusterSpec
from shopdb_operator.topology import plan_topology


def names(topology):
    return [i.name for i in topology.instances]


def test_new_cluster_numbers_the_promotable_pool_and_names_dedicated_replicas():
    t = plan_topology("shop", ClusterSpec())
    assert t.primary == "shop-1"
    assert names(t) == ["shop-1", "shop-2", "shop-3", "shop-analytics"]
    assert t.routes == {"search": "shop-2", "orders": "shop-3", "analytics": "shop-analytics"}
    assert t.instance("shop-analytics").promotable is False
    assert t.instance("shop-analytics").analytics is True
    assert t.instance("shop-2").slot == "shop_2"


def test_recorded_assignment_survives_a_failover():
    recorded = plan_topology("shop", ClusterSpec()).to_status()
    recorded["currentPrimary"] = "shop-2"  # search's instance was promoted
    t = plan_topology("shop", ClusterSpec(), recorded)
    assert t.primary == "shop-2"
    assert names(t) == ["shop-1", "shop-2", "shop-3", "shop-analytics"]  # the old primary stays
    assert t.routes["search"] == "shop-2"  # until failover hands the route to a ready replica
    assert t.role_of("shop-1") == "replica"


def test_adding_and_removing_a_promotable_route():
    spec = ClusterSpec.model_validate({"replicas": [
        {"name": "search"}, {"name": "orders"}, {"name": "reports"},
        {"name": "analytics", "promotable": False, "analytics": True}]})
    recorded = plan_topology("shop", ClusterSpec()).to_status()
    grown = plan_topology("shop", spec, recorded)
    assert grown.routes["reports"] == "shop-4"
    assert grown.routes["search"] == "shop-2"

    shrunk_spec = ClusterSpec.model_validate({"replicas": [
        {"name": "search"}, {"name": "analytics", "promotable": False}]})
    shrunk = plan_topology("shop", shrunk_spec, grown.to_status())
    assert names(shrunk) == ["shop-1", "shop-2", "shop-analytics"]
    assert shrunk.routes == {"search": "shop-2", "analytics": "shop-analytics"}


def test_removing_routes_never_removes_the_primary():
    recorded = plan_topology("shop", ClusterSpec()).to_status()
    recorded["currentPrimary"] = "shop-3"
    spec = ClusterSpec.model_validate({"replicas": [{"name": "search"}]})
    t = plan_topology("shop", spec, recorded)
    assert t.primary == "shop-3"
    assert "shop-3" in names(t) and len([i for i in t.instances if i.promotable]) == 2
