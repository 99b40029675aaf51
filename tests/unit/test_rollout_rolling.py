"""The rolling update's decisions: what must restart, in which order, when the primary's
turn comes and how, and what makes it wait."""

import dataclasses
import datetime

from contexts import make_context

from shopdb_operator.builders.postgres import instance_statefulset
from shopdb_operator.rollout import rolling
from shopdb_operator.rollout.rolling import Member, decide
from shopdb_operator.topology import plan_topology

NOW = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.timezone.utc)
NEW = ("a new pod template",)


def cluster(**outdated) -> list[Member]:
    """shop-1 primary; shop-2, shop-3 promotable; shop-analytics never promoted. All healthy."""
    members = [Member("shop-1", True, True, "u1", True, True, 500),
               Member("shop-2", False, True, "u2", True, True, 400),
               Member("shop-3", False, True, "u3", True, True, 450),
               Member("shop-analytics", False, False, "u4", True, True, 499)]
    return [Member(**{**m.__dict__, "reasons": outdated.get(m.name.replace("-", "_"), ())}) for m in members]


def with_(members, name, **fields):
    return [Member(**{**m.__dict__, **fields}) if m.name == name else m for m in members]


def test_nothing_to_do():
    assert decide(cluster(), None, "switchover", "unsupervised", NOW).action == rolling.NOTHING


def test_replicas_first_never_promoted_first_then_by_name():
    every = dict(shop_1=NEW, shop_2=NEW, shop_3=NEW, shop_analytics=NEW)
    decision = decide(cluster(**every), None, "switchover", "unsupervised", NOW)
    assert (decision.action, decision.instance) == (rolling.RESTART_REPLICA, "shop-analytics")
    decision = decide(cluster(shop_1=NEW, shop_2=NEW, shop_3=NEW), None, "switchover", "unsupervised", NOW)
    assert (decision.action, decision.instance) == (rolling.RESTART_REPLICA, "shop-2")


def test_one_at_a_time_each_back_and_streaming_before_the_next():
    members = cluster(shop_2=NEW, shop_3=NEW)
    current = rolling.current_record(rolling.Decision(rolling.RESTART_REPLICA, "shop-2"), members[1], NOW)
    later = NOW + datetime.timedelta(seconds=30)
    # the same pod still (not restarted yet), or a new one not streaming yet: wait
    assert decide(members, current, "switchover", "unsupervised", later).action == rolling.WAIT
    restarted = with_(members, "shop-2", pod_uid="u2b", streaming=False, reasons=())
    decision = decide(restarted, current, "switchover", "unsupervised", later)
    assert (decision.action, decision.instance) == (rolling.WAIT, "shop-2") and "come back" in decision.reason
    back = with_(restarted, "shop-2", streaming=True)
    decision = decide(back, current, "switchover", "unsupervised", later)
    assert (decision.action, decision.instance) == (rolling.RESTART_REPLICA, "shop-3")


def test_a_restart_that_never_comes_back_stops_the_rollout_with_the_reason():
    members = with_(cluster(shop_3=NEW), "shop-2", pod_uid="", ready=False, streaming=False)
    current = {"action": rolling.RESTART_REPLICA, "instance": "shop-2", "podUID": "u2", "since": "2026-12-03T11:00:00Z"}
    decision = decide(members, current, "switchover", "unsupervised", NOW)
    assert decision.action == rolling.WAIT and "has not come back within 900 s of its restart" in decision.reason


def test_paused_while_the_cluster_is_degraded():
    members = with_(cluster(shop_2=NEW), "shop-3", streaming=False)
    decision = decide(members, None, "switchover", "unsupervised", NOW)
    assert decision.action == rolling.WAIT and decision.waiting_for == ["shop-3"]
    assert "paused while shop-3 not ready and streaming" in decision.reason


def test_primary_last_by_switchover_to_the_most_up_to_date_promotable_replica_never_analytics():
    decision = decide(cluster(shop_1=NEW), None, "switchover", "unsupervised", NOW)
    # analytics (499) is ahead of shop-3 (450) but never promoted
    assert (decision.action, decision.instance) == (rolling.SWITCH_OVER, "shop-3")
    assert decision.reason == "shop-1 (primary) must restart (a new pod template)"


def test_the_target_must_itself_be_up_to_date_so_the_primary_moves_once():
    members = with_(cluster(shop_1=NEW), "shop-3", wal_position=10)
    assert decide(members, None, "switchover", "unsupervised", NOW).instance == "shop-2"  # now the most up to date
    # shop-3 outdated: it restarts first (replicas first), so no target is ever outdated
    decision = decide(cluster(shop_1=NEW, shop_3=NEW), None, "switchover", "unsupervised", NOW)
    assert (decision.action, decision.instance) == (rolling.RESTART_REPLICA, "shop-3")


def test_no_promotable_replica_to_switch_to_waits():
    members = [m for m in cluster(shop_1=NEW) if m.name in ("shop-1", "shop-analytics")]
    decision = decide(members, None, "switchover", "unsupervised", NOW)
    assert decision.action == rolling.WAIT and "no promotable replica is up to date" in decision.reason


def test_primary_restarted_in_place():
    decision = decide(cluster(shop_1=NEW), None, "restart", "unsupervised", NOW)
    assert (decision.action, decision.instance) == (rolling.RESTART_PRIMARY, "shop-1")


def test_supervised_waits_for_the_promote_and_names_the_target():
    decision = decide(cluster(shop_1=NEW), None, "switchover", "supervised", NOW)
    assert (decision.action, decision.instance) == (rolling.AWAIT_PROMOTE, "shop-3")
    assert "shopdb-operator promote <cluster> --to shop-3" in decision.reason


def test_after_the_switchover_the_old_primary_is_waited_for_then_done():
    members = cluster(shop_1=NEW)
    current = rolling.current_record(rolling.Decision(rolling.SWITCH_OVER, "shop-3"), members[0], NOW)
    assert current["instance"] == "shop-1"
    switched = [Member(**{**m.__dict__, "primary": m.name == "shop-3"}) for m in members]
    switched = with_(switched, "shop-1", pod_uid="u1b", reasons=(), streaming=False)
    assert decide(switched, current, "switchover", "unsupervised", NOW).action == rolling.WAIT
    done = with_(switched, "shop-1", streaming=True)
    assert decide(done, current, "switchover", "unsupervised", NOW).action == rolling.NOTHING  # no second switchover


def test_what_must_restart():
    template = {rolling.ANNOTATION_TEMPLATE_HASH: "t1", rolling.ANNOTATION_SPEC_HASH: "s1"}
    assert rolling.restart_reasons([], template, "t1", "s1", False) == ((), ())
    assert rolling.restart_reasons(["shared_buffers"], template, "t1", "s1", False) == (
        ("settings wait for a restart: shared_buffers",), ())
    assert rolling.restart_reasons([], template, "t2", "s2", True) == (("a new pod template",), ())
    # the template changed, the spec did not: a new operator version's, deferred when asked
    assert rolling.restart_reasons([], template, "t2", "s1", True) == ((), ("the pod template of a new operator version",))
    assert rolling.restart_reasons([], template, "t2", "s1", False) == (("a new pod template",), ())
    # a pod an operator version before the hashes made: the operator's change too
    assert rolling.restart_reasons([], {}, "t2", "s2", True) == ((), ("the pod template of a new operator version",))


def hashes(ctx, name):
    instance = next(i for i in ctx.topology.instances if i.name == name)
    return instance_statefulset(ctx, instance)["spec"]["template"]["metadata"]["annotations"]


def test_the_template_hash_ignores_roles_resources_and_the_operator_image():
    ctx = make_context()
    before = hashes(ctx, "shop-2")
    # a failover: shop-2 becomes primary (labels, resources) -- no restart
    moved = make_context()
    moved = dataclasses.replace(moved, topology=plan_topology(
        "shop", moved.spec, {**ctx.topology.to_status(), "currentPrimary": "shop-2"}))
    assert moved.topology.primary == "shop-2" and hashes(moved, "shop-2") == before
    # resources are resized in place; a new operator image restarts nothing
    assert hashes(make_context({"postgres": {"resources": {"replica": {"cpu": "2", "memory": "8Gi"}}}}),
                  "shop-2")[rolling.ANNOTATION_TEMPLATE_HASH] == before[rolling.ANNOTATION_TEMPLATE_HASH]
    other_operator = dataclasses.replace(ctx, operator_image="shopdb/operator:9.9.9")
    assert hashes(other_operator, "shop-2") == before
    # failover tuning neither (it applies at the next start)
    tuned = make_context({"failover": {"maxLagBytes": 1, "checkIntervalSeconds": 5}})
    assert hashes(tuned, "shop-2")[rolling.ANNOTATION_TEMPLATE_HASH] == before[rolling.ANNOTATION_TEMPLATE_HASH]
    # a new PostgreSQL image does
    image = hashes(make_context({"postgres": {"image": "postgres:15.99"}}), "shop-2")
    assert image[rolling.ANNOTATION_TEMPLATE_HASH] != before[rolling.ANNOTATION_TEMPLATE_HASH]
    assert image[rolling.ANNOTATION_SPEC_HASH] != before[rolling.ANNOTATION_SPEC_HASH]
