"""The operator's one Kubernetes client, made on first use (kopf has loaded the config by then)."""

from __future__ import annotations

from ..kube.client import Kube

_kube: Kube | None = None


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube()
    return _kube
