"""One lock per cluster: reconcile, the drift timer and failover steps never interleave in
this process (the Lease keeps other operator processes out), so none of them writes a
topology that another has just changed."""

from __future__ import annotations

import threading

_guard = threading.Lock()
_locks: dict[tuple[str, str], threading.Lock] = {}


def cluster_lock(namespace: str, name: str) -> threading.Lock:
    with _guard:
        return _locks.setdefault((namespace, name), threading.Lock())
