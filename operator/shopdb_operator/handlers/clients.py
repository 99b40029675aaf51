"""The operator's one Kubernetes client, made on first use (kopf has loaded the config by then),
with watch-backed reads (kube/cache.py): one watch per kind in every namespace when the
operator serves all of them, else per namespace it serves."""

from __future__ import annotations

import os

from ..kube.cache import WATCH_SCOPE_ENV
from ..kube.client import Kube

_kube: Kube | None = None


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube(cached="cluster" if os.environ.get(WATCH_SCOPE_ENV) == "cluster" else "namespace")
    return _kube
