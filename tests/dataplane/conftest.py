"""Fixtures: one 4-instance cluster for the whole session (primary + search, orders and
analytics replicas, the shop schema loaded by the primary's bootstrap)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import pytest

from harness import (PG_BIN, SHOP_SCHEMA, Credentials, Instance, install_scripts, make_root,
                     make_spec, require_binaries, stop_all)


@dataclass
class ShopCluster:
    primary: Instance
    search: Instance
    orders: Instance
    analytics: Instance
    credentials: Credentials

    @property
    def replicas(self) -> list[Instance]:
        return [self.search, self.orders, self.analytics]

    @property
    def instances(self) -> list[Instance]:
        return [self.primary, *self.replicas]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/dataplane" in str(item.fspath):
            item.add_marker(pytest.mark.dataplane)


@pytest.fixture(scope="session")
def shop_cluster():
    require_binaries(PG_BIN / "postgres", PG_BIN / "initdb", PG_BIN / "pg_basebackup",
                     PG_BIN / "pg_rewind", PG_BIN / "psql")
    root = make_root("shopdb-dataplane-")
    scripts = install_scripts(root)
    spec = make_spec()
    credentials = Credentials()
    primary = Instance(root, "shop-1", spec, credentials, scripts, init_sql=SHOP_SCHEMA)
    search = Instance(root, "shop-2", spec, credentials, scripts)
    orders = Instance(root, "shop-3", spec, credentials, scripts)
    analytics = Instance(root, "shop-analytics", spec, credentials, scripts, analytics=True)
    cluster = ShopCluster(primary, search, orders, analytics, credentials)
    primary.role = "primary"
    primary.peer_slots = [r.slot for r in cluster.replicas]
    for replica in cluster.replicas:
        replica.primary_port = primary.port
    try:
        primary.start()
        primary.wait_ready()
        for replica in cluster.replicas:
            replica.start()
        for replica in cluster.replicas:
            replica.wait_ready()
        yield cluster
    finally:
        stop_all(reversed(cluster.instances))
        shutil.rmtree(root, ignore_errors=True)
