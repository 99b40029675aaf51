"""One actor: a coordination.k8s.io/v1 Lease that an operator replica must hold to fail
over or switch over any cluster.

Kopf's peering already pauses all but one operator, but only by its own convention and
with a priority race at start; the Lease makes the rule explicit and checkable
(`kubectl get lease shopdb-operator`). Updates carry resourceVersion, so two replicas
racing for an expired Lease cannot both win: the API server refuses the second (409).
"""

from __future__ import annotations

import datetime
import os
import socket

from ..fencing.lease import API_VERSION, micro_time, parse_time
from .client import Kube, KubeError

LEASE_NAME = "shopdb-operator"
LEASE_DURATION_SECONDS = 15


def identity() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


def lease_namespace() -> str:
    return os.environ.get("SHOPDB_OPERATOR_NAMESPACE", "shopdb-system")


def lease_action(spec: dict, me: str, now: datetime.datetime) -> str:
    """'renew' (ours), 'acquire' (free or expired) or 'wait' (another holder's, valid)."""
    holder = spec.get("holderIdentity")
    if holder == me:
        return "renew"
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    if not holder or not renewed:
        return "acquire"
    expires = parse_time(renewed) + datetime.timedelta(seconds=spec.get("leaseDurationSeconds") or LEASE_DURATION_SECONDS)
    return "acquire" if now >= expires else "wait"


class Lease:
    """held() acquires or renews, at most every third of the duration (every daemon of
    every cluster asks at each check); a replica that stops asking loses the Lease when it
    expires, and acts at most a third of the duration after its last renewal."""

    def __init__(self, kube: Kube, namespace: str | None = None, name: str = LEASE_NAME,
                 me: str | None = None, duration: int = LEASE_DURATION_SECONDS):
        self.kube, self.namespace, self.name = kube, namespace or lease_namespace(), name
        self.me, self.duration = me or identity(), duration
        self._renewed: datetime.datetime | None = None

    def held(self, now: datetime.datetime | None = None) -> bool:
        now = now or datetime.datetime.now(datetime.timezone.utc)
        if self.fresh(now):
            return True  # renewed moments ago: nobody can take it before it expires
        held = self._acquire_or_renew(now)
        self._renewed = now if held else None
        return held

    def fresh(self, now: datetime.datetime) -> bool:
        """Held and renewed less than a third of the duration ago: what held() answers
        without asking the API server."""
        return self._renewed is not None and (now - self._renewed).total_seconds() < self.duration / 3

    def _acquire_or_renew(self, now: datetime.datetime) -> bool:
        lease = self.kube.get(API_VERSION, "Lease", self.namespace, self.name)
        if lease is None:
            body = {"apiVersion": API_VERSION, "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(now, acquired=True, transitions=0)}
            return self.kube.create(body) is not None  # None: another replica created it first
        spec = lease.get("spec") or {}
        action = lease_action(spec, self.me, now)
        if action == "wait":
            return False
        transitions = (spec.get("leaseTransitions") or 0) + (1 if action == "acquire" else 0)
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                 "spec": self._spec(now, acquired=action == "acquire", transitions=transitions)}
        try:
            self.kube.merge_patch(API_VERSION, "Lease", self.namespace, self.name, patch)
        except KubeError as err:
            if err.status == 409:
                return False  # someone else renewed or acquired it in between
            raise
        return True

    def _spec(self, now: datetime.datetime, acquired: bool, transitions: int) -> dict:
        spec = {"holderIdentity": self.me, "leaseDurationSeconds": self.duration,
                "renewTime": micro_time(now), "leaseTransitions": transitions}
        if acquired:
            spec["acquireTime"] = micro_time(now)
        return spec
