"""The defaults of an empty spec are the design document's topology."""

import pytest
from pydantic import ValidationError

from shopdb_operator.api.spec import ClusterSpec


def test_empty_spec_is_the_design_topology():
    spec = ClusterSpec.model_validate({})
    assert (spec.postgres.resources.primary.cpu, spec.postgres.resources.primary.memory) == ("8", "32Gi")
    assert (spec.postgres.resources.replica.cpu, spec.postgres.resources.replica.memory) == ("4", "16Gi")
    assert spec.postgres.storage.size == "1Ti"
    assert [(r.name, r.pool_size, r.promotable) for r in spec.replicas] == [
        ("search", 25, True), ("orders", 25, True), ("analytics", 20, False)]
    assert spec.pgbouncer.instances == 2
    assert spec.pgbouncer.pool_mode.value == "transaction"
    assert (spec.pgbouncer.default_pool_size, spec.pgbouncer.max_client_conn, spec.pgbouncer.primary_pool_size) == (100, 1000, 30)
    assert (spec.redis.resources.cpu, spec.redis.resources.memory) == ("2", "8Gi")
    ttl = spec.redis.cache_ttls
    assert (ttl.listings_seconds, ttl.shop_info_seconds, ttl.aggregations_seconds, ttl.search_results_seconds) == (300, 300, 900, 900)
    table = spec.maintenance.partitioned_tables[0]
    assert (table.table, table.column, table.schedule) == ("orders", "created_at", "0 0 1 * *")
    view = spec.maintenance.materialized_views[0]
    assert (view.name, view.schedule) == ("shop_analytics", "0 * * * *")
    assert spec.failover.enabled and spec.reclaim_policy.value == "Retain"
    assert spec.postgres.synchronous.enabled is False


def test_camel_case_fields_are_read():
    spec = ClusterSpec.model_validate({"pgbouncer": {"primaryPoolSize": 40, "maxClientConn": 200},
                                       "redis": {"cacheTTLs": {"listingsSeconds": 60}}})
    assert spec.pgbouncer.primary_pool_size == 40
    assert spec.pgbouncer.max_client_conn == 200
    assert spec.redis.cache_ttls.listings_seconds == 60


@pytest.mark.parametrize("bad, field", [
    ({"replicas": [{"name": "Search"}]}, "name"),
    ({"replicas": [{"name": "a", "poolSize": 0}]}, "poolSize"),
    ({"postgres": {"storage": {"size": "lots"}}}, "size"),
    ({"pgbouncer": {"poolMode": "bogus"}}, "poolMode"),
    ({"unknownField": 1}, "unknownField"),
])
def test_bad_fields_are_rejected(bad, field):
    with pytest.raises(ValidationError) as err:
        ClusterSpec.model_validate(bad)
    assert field in str(err.value)
