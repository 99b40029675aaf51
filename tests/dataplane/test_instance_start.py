"""Start-up decisions that must fail loudly, and configs PostgreSQL 15 must accept."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from harness import (PG_BIN, Credentials, Instance, free_port, install_scripts,
                     make_root, make_spec, require_binaries, run_as_postgres)
from shopdb_operator.api.spec import ClusterSpec
from shopdb_operator.builders import config_files


@pytest.fixture
def lone_instance():
    require_binaries(PG_BIN / "postgres")
    root = make_root("shopdb-start-")
    instance = Instance(root, "lone-1", make_spec(), Credentials(), install_scripts(root))
    instance.primary_port = free_port()  # nothing listens there
    instance.extra_env = {"SHOPDB_PRIMARY_WAIT_SECONDS": "2"}
    yield instance
    instance.kill()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("role", ["replica", "", "primaryish"])
def test_without_data_and_without_a_primary_the_container_exits(lone_instance, role):
    lone_instance.role = role
    lone_instance.start()
    assert lone_instance.wait_exit(30) == 1
    log = lone_instance.log_text()
    assert "no data yet and the primary 127.0.0.1:" in log and "exiting so that the container restarts" in log
    assert not (lone_instance.pgdata / "PG_VERSION").exists()
    if role != "replica":
        assert f"recorded role '{role}' is neither primary nor replica: starting read-only" in log


def test_missing_environment_is_named(lone_instance):
    lone_instance.extra_env = {"SHOPDB_SLOT": ""}
    lone_instance.start()
    assert lone_instance.wait_exit(30) == 1
    assert "environment variable SHOPDB_SLOT is required" in lone_instance.log_text()


@pytest.mark.parametrize("analytics", [False, True])
def test_production_sized_postgresql_conf_is_accepted_by_postgres(shop_cluster, tmp_path, analytics):
    """Every setting name and value the operator renders for the default spec is valid."""
    spec = ClusterSpec.model_validate({"postgres": {"synchronous": {"enabled": True}}})
    conf = shop_cluster.primary.dir / f"production-{analytics}.conf"
    conf.write_text(config_files.postgresql_conf(spec, spec.postgres.resources.primary, analytics,
                                                 ["shop-1", "shop-2", "shop-3"]))
    process = run_as_postgres(
        [str(PG_BIN / "postgres"), "-D", str(shop_cluster.primary.pgdata), "-c", f"config_file={conf}",
         "-C", "synchronous_standby_names"],
        shop_cluster.primary.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.strip() == 'ANY 1 ("shop-1", "shop-2", "shop-3")'
