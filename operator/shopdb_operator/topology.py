"""Which PostgreSQL instances exist, which one is primary, and which serves each route.

Promotable instances form a numbered pool (`<cluster>-1`, `<cluster>-2`, ...): any of them
may be primary, so their names do not claim a role. A replica that may never be promoted
(the analytics replica) is a dedicated instance named after its route
(`<cluster>-analytics`). The assignment is recorded in the cluster's status, so that
failover only has to change the record and the labels that follow it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .api.spec import ClusterSpec, ReplicaSpec

PRIMARY = "primary"
REPLICA = "replica"


@dataclass(frozen=True)
class Instance:
    name: str  # the StatefulSet's name; its pod is <name>-0
    promotable: bool
    analytics: bool = False

    @property
    def pod(self) -> str:
        return f"{self.name}-0"

    @property
    def slot(self) -> str:
        """Physical replication slot that the primary keeps for this instance."""
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class Topology:
    primary: str
    routes: dict[str, str] = field(default_factory=dict)  # replica route name -> instance name
    instances: tuple[Instance, ...] = ()

    def instance(self, name: str) -> Instance:
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(name)

    def role_of(self, name: str) -> str:
        return PRIMARY if name == self.primary else REPLICA

    def routes_of(self, name: str) -> list[str]:
        return sorted(route for route, inst in self.routes.items() if inst == name)

    @property
    def replicas(self) -> list[Instance]:
        return [i for i in self.instances if i.name != self.primary]

    def to_status(self) -> dict:
        """What plan_topology() needs to find this topology again."""
        return {
            "currentPrimary": self.primary,
            "routes": dict(sorted(self.routes.items())),
            "pool": [i.name for i in self.instances if i.promotable],
        }


def dedicated_instance_name(cluster: str, replica: ReplicaSpec) -> str:
    return f"{cluster}-{replica.name}"


def pool_instance_name(cluster: str, number: int) -> str:
    return f"{cluster}-{number}"


def plan_topology(cluster: str, spec: ClusterSpec, recorded: dict | None = None) -> Topology:
    """The topology for `spec`, keeping what `recorded` (from status) already assigned.

    A new cluster gets instance 1 as primary and one more pool instance per promotable
    route. Later calls keep the recorded primary and route assignments; a new route gets
    a free pool instance (a new one if needed); a removed route frees its instance, and
    pool instances beyond what the spec needs go away, never the primary. A route whose
    recorded instance is the primary (just after a failover) stays there until the
    failover logic hands it to a replica.
    """
    recorded = recorded or {}
    promotable = [r for r in spec.replicas if r.promotable]
    promotable_names = {r.name for r in promotable}
    pool = [n for n in recorded.get("pool") or [] if _is_pool_name(cluster, n)]
    primary = recorded.get("currentPrimary") or pool_instance_name(cluster, 1)
    if primary not in pool:
        pool.insert(0, primary)
    routes = {route: inst for route, inst in (recorded.get("routes") or {}).items()
              if route in promotable_names and inst in pool}

    wanted = 1 + len(promotable)
    for name in sorted(pool, key=lambda n: _pool_number(cluster, n), reverse=True):
        if len(pool) <= wanted:
            break
        if name != primary and name not in routes.values():
            pool.remove(name)
    number = 1
    while len(pool) < wanted:
        if pool_instance_name(cluster, number) not in pool:
            pool.append(pool_instance_name(cluster, number))
        number += 1

    free = [n for n in sorted(pool, key=lambda n: _pool_number(cluster, n))
            if n != primary and n not in routes.values()]
    for replica in promotable:
        if replica.name not in routes:
            routes[replica.name] = free.pop(0) if free else primary

    analytics = {inst for route, inst in routes.items()
                 if any(r.name == route and r.analytics for r in promotable)}
    instances = [Instance(n, promotable=True, analytics=n in analytics)
                 for n in sorted(pool, key=lambda n: _pool_number(cluster, n))]
    for replica in spec.replicas:
        if not replica.promotable:
            name = dedicated_instance_name(cluster, replica)
            instances.append(Instance(name, promotable=False, analytics=replica.analytics))
            routes[replica.name] = name
    return Topology(primary=primary, routes=routes, instances=tuple(instances))


def _is_pool_name(cluster: str, name: str) -> bool:
    return _pool_number(cluster, name) is not None


def _pool_number(cluster: str, name: str) -> int | None:
    suffix = name[len(cluster) + 1:] if name.startswith(cluster + "-") else ""
    return int(suffix) if suffix.isdigit() else None
