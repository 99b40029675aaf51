"""The cache of cluster contexts (handlers/reconcile.py): bounded per cluster, so that the
contexts of earlier statuses, each holding every manifest built from it, do not pile up."""

from shopdb_operator.handlers.reconcile import ContextCache


def build_counting(built: list):
    def build(key):
        built.append(key)
        return object()
    return build


def test_the_same_key_gives_the_same_context_without_building_again():
    cache, built = ContextCache(), []
    first = cache.get(("ns", "a", "u1"), "k1", build_counting(built))
    assert cache.get(("ns", "a", "u1"), "k1", build_counting(built)) is first
    assert built == ["k1"]


def test_a_cluster_keeps_only_its_latest_contexts():
    cache, built = ContextCache(per_cluster=2), []
    build = build_counting(built)
    one = cache.get(("ns", "a", "u1"), "k1", build)
    cache.get(("ns", "a", "u1"), "k2", build)
    cache.get(("ns", "a", "u1"), "k1", build)  # used again: now the latest
    cache.get(("ns", "a", "u1"), "k3", build)  # k2 goes, k1 stays
    assert len(cache) == 2
    assert cache.get(("ns", "a", "u1"), "k1", build) is one
    cache.get(("ns", "a", "u1"), "k2", build)
    assert built == ["k1", "k2", "k3", "k2"]


def test_one_clusters_churn_does_not_evict_another_clusters_context():
    cache, built = ContextCache(per_cluster=2), []
    build = build_counting(built)
    kept = cache.get(("ns", "b", "u2"), "b1", build)
    for i in range(50):
        cache.get(("ns", "a", "u1"), f"a{i}", build)
    assert cache.get(("ns", "b", "u2"), "b1", build) is kept
    assert len(cache) == 3


def test_the_least_recently_used_cluster_goes_beyond_the_bound():
    cache, built = ContextCache(per_cluster=2, clusters=2), []
    build = build_counting(built)
    cache.get(("ns", "old", "u"), "k", build)
    cache.get(("ns", "a", "u"), "k", build)
    cache.get(("ns", "b", "u"), "k", build)
    assert len(cache) == 2
    cache.get(("ns", "old", "u"), "k", build)
    assert built.count("k") == 4  # the old one was built again


def test_a_failed_build_keeps_nothing():
    cache = ContextCache()

    def failing(key):
        raise ValueError(key)
    try:
        cache.get(("ns", "a", "u"), "k", failing)
    except ValueError:
        pass
    assert len(cache) == 0
