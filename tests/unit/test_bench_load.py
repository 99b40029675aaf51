"""The load benchmark's own arithmetic (tests/bench/load.py): pgbench scripts and their
values, per-transaction logs, percentiles; and the cluster profile it runs on."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest
import yaml

from shopdb_operator.api.quantity import to_millicores
from shopdb_operator.api.validate import parse_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_load", REPO / "tests" / "bench" / "load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_load"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_load", None)


def test_scripts_draw_values_as_pgbench_would_and_bind_them_in_place(bench):
    scale = bench.Scale.full()
    placement = bench.scripts(scale)["checkout"][0]
    text = placement.text()
    assert text.startswith("\\set shop random(1, 3000)\n")
    assert "\nBEGIN;\n" in text and text.endswith("COMMIT;\n")
    for seed in range(50):
        values = placement.sample(random.Random(seed))
        first = (values["shop"] - 1) * 100
        # three distinct products of the shop, in ascending order (row locks in one order)
        assert first < values["p1"] < values["p2"] < values["p3"] <= first + 100
        assert 1 <= values["n"] <= 3
    statement = placement.bound(placement.statements[1], {**values, "p1": 11, "q1": 2})
    assert "(1, 11::bigint, 2::int)" in statement  # casts kept, variables replaced
    assert not [w for w in statement.split() if w.startswith(":") and not w.startswith("::")]


def test_search_has_a_price_range_and_words_in_three_of_ten(bench):
    search = bench.scripts(bench.Scale.smoke())["search"]
    assert [(s.name, s.weight) for s in search] == [("search-filters", 7), ("search-words", 3)]
    values = search[1].sample(random.Random(1))
    assert values["lo"] < values["hi"] <= values["lo"] + 200
    assert 1 <= values["word"] <= len(bench.WORDS)


def test_percentiles_are_nearest_rank(bench):
    values = list(range(1, 101))
    assert bench.percentile(values, 0.5) == 50
    assert bench.percentile(values, 0.95) == 95
    assert bench.percentile(values, 0.99) == 99
    assert bench.percentile([7], 0.99) == 7
    assert bench.percentile([], 0.5) is None


def run_with_log(bench, tmp_path, threads, rate=None, aborted_output="", launched=0.0):
    """A finished Run whose pgbench wrote `threads` (one list of log lines per thread)."""
    scripts = [bench.Script("a", (), ("SELECT 1",)), bench.Script("b", (), ("SELECT 2",))]
    run = bench.Run("t", "search", bench.Endpoint("h", "d", "u", "p"), scripts, 4, 2, 5, "extended",
                    rate, tmp_path / "t-search", launched=launched)
    for i, lines in enumerate(threads):
        (tmp_path / ("t-search.123" + (f".{i}" if i else ""))).write_text("\n".join(lines) + "\n")
    (tmp_path / "t-search.out").write_text("not a log")
    run.output = aborted_output
    run.aborted = aborted_output.count("aborted")
    run._read_logs(warmup=1.0)
    return run


def test_per_transaction_logs_with_failures_retries_and_a_warmup(bench, tmp_path):
    epoch = 1_800_000_000
    line = "%d %d %s %d %d %d %d"
    first = [line % (0, 1, 900000, 0, epoch, 0, 0)]  # this thread's clients connected first
    first += [line % (1, i, 1000 * (i + 1), i % 2, epoch + 2 + i // 10, 0, i % 3) for i in range(20)]
    second = [line % (3, 1, 800000, 1, epoch, 500000, 0)]  # the last thread starts half a second later
    second += [line % (1, i, 1000 * (i + 1), i % 2, epoch + 2 + i // 10, 0, i % 3) for i in range(20, 40)]
    second += ["2 41 serialization 0 %d 500000 9" % (epoch + 3), "2 42 deadlock 1 %d 600000 9" % (epoch + 3)]
    run = run_with_log(bench, tmp_path, [first, second])
    stats = run.stats
    # the window opens a warm-up after the last thread's first transaction: epoch + 1.5
    assert stats.transactions == 40 and stats.failures == 2
    assert stats.retries == sum(i % 3 for i in range(40)) + 18
    assert stats.p50_ms == 20.0 and stats.max_ms == 40.0  # the 900 and 800 ms of the warm-up are gone
    assert stats.seconds == pytest.approx(3.5) and run.window == (epoch + 1.5, epoch + 5)
    assert stats.error_rate == pytest.approx(2 / 42)
    assert (run.per_script["a"].transactions, run.per_script["a"].failures) == (20, 1)
    assert (run.per_script["b"].transactions, run.per_script["b"].failures) == (20, 1)
    assert len(run.latencies) == 40 and run.lags == []


def test_schedule_lag_is_read_with_a_rate_and_aborted_clients_are_errors(bench, tmp_path):
    epoch = 1_800_000_000
    lines = ["0 %d %d 0 %d %d %d 0" % (i, 5000, epoch + i // 10, 0, 100 * i) for i in range(20)]
    # pgbench started 3 s before the first transaction: with -T 5 + 3 to connect, it ran until epoch + 5
    run = run_with_log(bench, tmp_path, [lines], rate=10.0, launched=epoch - 3,
                       aborted_output="pgbench: error: client 3 script 0 aborted in command 1 query 0: ERROR: x\n")
    assert run.stats.failures == 1 and run.stats.transactions == 20  # too short for a warm-up cut
    assert sorted(run.lags) == [100 * i for i in range(20)]
    assert run.stats.lag_p95_ms == pytest.approx(1.8)
    assert run.stats.seconds == pytest.approx(5)  # measured until the deadline: the run stalled after 1 s


def test_targets_name_what_misses(bench):
    targets = bench.Targets(avg_ms=100, p95_ms=200, p99_ms=500)
    ok, text = targets.verdict(bench.Stats(transactions=10, avg_ms=50, p95_ms=250, p99_ms=300))
    assert not ok and text == "avg<100 !p95<200 p99<500 err<0.1%"
    ok, _ = targets.verdict(bench.Stats(transactions=999, failures=1, avg_ms=5, p95_ms=6, p99_ms=7))
    assert not ok  # 0.1% errors is not below 0.1%


def profile(name: str = "cluster-bench.yaml") -> tuple[dict, dict]:
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "examples" / name).read_text()) if d]
    return docs[0], docs[1]


def test_bench_profile_is_cluster_small_topology_and_valid():
    namespace, cluster = profile()
    assert cluster["metadata"]["namespace"] == namespace["metadata"]["name"]
    spec = parse_spec(cluster["spec"])  # the operator's own checks: pools fit max_connections, ...
    small = parse_spec(profile("cluster-small.yaml")[1]["spec"])
    assert [(r.name, r.promotable, r.analytics) for r in spec.replicas] == \
        [(r.name, r.promotable, r.analytics) for r in small.replicas]
    assert spec.maintenance == small.maintenance
    assert spec.pgbouncer.instances == small.pgbouncer.instances and spec.failover.enabled
    assert spec.reclaim_policy.value == "Retain"  # the benchmark releases the cluster, keeps its data


def test_bench_profile_fits_two_cores_and_takes_2000_clients():
    _, cluster = profile()
    spec = parse_spec(cluster["spec"])
    res = spec.postgres.resources
    cpu = (to_millicores(res.primary.cpu) + len(spec.replicas) * to_millicores(res.replica.cpu)
           + spec.pgbouncer.instances * to_millicores(spec.pgbouncer.resources.cpu) + to_millicores(spec.redis.resources.cpu))
    # the node's 2 cores less the operator, CoreDNS, the instance-agents and a maintenance Job
    assert cpu <= 2000 - 100 - 50 - 10 * (len(spec.replicas) + 1) - 50
    # connections land on PgBouncer instances at random: room for well over an even share
    assert spec.pgbouncer.max_client_conn * spec.pgbouncer.instances >= 2000 * 1.5
