"""How a new configuration reaches running instances: poke the pod, wait for its files,
refuse what PostgreSQL would refuse, reload; and the status records that say so."""

import datetime

import pytest

from shopdb_operator.api.validate import InvalidSpec
from shopdb_operator.handlers.reconcile import cluster_context
from shopdb_operator.rollout import config
from shopdb_operator.rollout.config import Step, next_step

NOW = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize("loaded, pod_hash, pod, reachable, files, errors, step", [
    ("new", "new", True, True, None, None, Step.NOTHING),  # loaded already
    ("old", "old", True, True, None, None, Step.POKE),  # the kubelet must sync the volume now
    ("old", "old", True, False, None, None, Step.POKE),  # even while the server is down
    ("old", None, True, True, None, None, Step.POKE),  # a pod made before the change
    ("new", "old", True, True, None, None, Step.POKE),  # put back after a refusal: files follow
    ("old", "new", True, False, None, None, Step.NOTHING),  # it reads the files when it starts
    ("old", None, False, False, None, None, Step.NOTHING),  # no pod
    ("old", "new", True, True, None, None, Step.WAIT_FILES),  # ask the server what it reads
    ("old", "new", True, True, False, [], Step.WAIT_FILES),  # the kubelet has not synced yet
    ("old", "new", True, True, True, ["x"], Step.REFUSE),
    ("old", "new", True, True, True, [], Step.RELOAD),
    (None, "new", True, True, True, [], Step.RELOAD),  # nothing recorded yet
])
def test_next_step(loaded, pod_hash, pod, reachable, files, errors, step):
    assert next_step("new", loaded, pod_hash, pod, reachable, files, errors) is step


def status_with(rejected_parameters: dict | None, good: dict) -> dict:
    configuration = {"parameters": good}
    if rejected_parameters is not None:
        configuration["rejected"] = config.rejected_entry(rejected_parameters, ["shop-1: bad"], NOW)
    return {"configuration": configuration}


def test_refused_parameters_make_the_spec_invalid_until_they_change():
    spec = {"postgres": {"parameters": {"timezone": "Mars/Base"}}}
    status = status_with({"timezone": "Mars/Base"}, {"work_mem": "8MB"})
    with pytest.raises(InvalidSpec) as err:
        cluster_context("shop", "ns", "uid", spec, status)
    assert "PostgreSQL refused them (shop-1: bad)" in str(err.value)
    assert "change the parameters to go on" in str(err.value)
    # the instances' ConfigMaps meanwhile hold the last good parameters
    ctx = cluster_context("shop", "ns", "uid", spec, status, last_good_parameters=True)
    assert ctx.spec.postgres.parameters == {"work_mem": "8MB"}
    # any other parameters are tried again
    ctx = cluster_context("shop", "ns", "uid", {"postgres": {"parameters": {"timezone": "UTC"}}}, status)
    assert ctx.spec.postgres.parameters == {"timezone": "UTC"}


def test_status_records():
    entry = config.loaded_entry("abc", ["shared_buffers"], NOW, "uid/0")
    assert entry == {"hash": "abc", "loadedAt": "2026-12-03T12:00:00Z", "pendingRestart": ["shared_buffers"],
                     "incarnation": "uid/0"}
    # a restarted server loaded its files when it started: what waited for a restart is done
    assert config.loaded_hash(entry, "uid/0") == "abc" and config.pending_restart(entry, "uid/0") == ["shared_buffers"]
    assert config.loaded_hash(entry, "uid/1") is None and config.pending_restart(entry, "uid/1") == []
    assert config.replace_map({"a": "1", "b": "2"}, {"b": "3"}) == {"a": None, "b": "3"}
    assert config.all_loaded({"x": "h1", "y": "h2"}, {"x": {"hash": "h1"}, "y": {"hash": "h2"}})
    assert not config.all_loaded({"x": "h1", "y": "h2"}, {"x": {"hash": "h1"}})
    assert config.parameters_hash({"a": "1", "b": "2"}) == config.parameters_hash({"b": "2", "a": "1"})
    rejected = config.rejected_entry({"a": "1"}, [f"p{i}" for i in range(20)], NOW)
    assert len(rejected["problems"]) == 10


def test_pgbouncer_runs_with_its_file_when_show_config_and_show_databases_agree():
    from contexts import make_context
    from shopdb_operator.builders.pgbouncer import pgbouncer_config_map

    ini = pgbouncer_config_map(make_context())["data"]["pgbouncer.ini"]
    settings, databases = config.pgbouncer_expected(ini)
    assert settings == {"pool_mode": "transaction", "max_client_conn": "1000", "default_pool_size": "100",
                        "max_prepared_statements": "200"}
    assert databases["shop"] == {"host": "shop-rw", "port": "5432", "dbname": "shop", "pool_size": "30"}
    show_config = {"pool_mode": "transaction", "max_client_conn": "1000", "default_pool_size": "100",
                   "max_prepared_statements": "200", "x": "1"}
    show_databases = {name: {"host": d["host"], "port": d["port"], "database": d["dbname"], "pool_size": d["pool_size"]}
                      for name, d in databases.items()} | {"pgbouncer": {"host": "None"}}
    assert config.pgbouncer_loaded(ini, show_config, show_databases)
    assert not config.pgbouncer_loaded(ini, show_config | {"max_client_conn": "500"}, show_databases)
    assert not config.pgbouncer_loaded(ini, show_config | {"max_prepared_statements": "0"}, show_databases)
    smaller = {**show_databases, "shop": {**show_databases["shop"], "pool_size": "29"}}
    assert not config.pgbouncer_loaded(ini, show_config, smaller)
    assert not config.pgbouncer_loaded(ini, show_config, {k: v for k, v in show_databases.items() if k != "shop_search"})
