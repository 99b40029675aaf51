#!/usr/bin/env python3
"""Tiny dynamic volume provisioner for the local cluster.

Watches (by polling through kubectl) PVCs whose StorageClass has
provisioner PROVISIONER, and for each pending claim creates a `local`
PersistentVolume backed by a fresh directory under VOLUMES_DIR, pinned to
this node. Directories are created mode 0777 so a non-root pod can write
with or without fsGroup (and kubelet additionally applies fsGroup to
`local` volumes, unlike hostPath).

Released volumes are handled per their reclaim policy: Delete removes the
directory and the PV; Retain keeps both (an admin removes them).

    provisioner.py --kubeconfig K --node NAME --dir /var/lib/shopdb-localkube/volumes
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

PROVISIONER = "shopdb.io/local-hostpath"


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class Kube:
    def __init__(self, kubeconfig):
        self.base = ["kubectl", "--kubeconfig", kubeconfig, "--request-timeout=20s"]

    def get(self, *args):
        out = subprocess.run(self.base + ["get", *args, "-o", "json"],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)

    def apply(self, obj):
        subprocess.run(self.base + ["create", "-f", "-"], input=json.dumps(obj),
                       capture_output=True, text=True, check=True)

    def delete(self, *args):
        subprocess.run(self.base + ["delete", "--wait=false", "--ignore-not-found", *args],
                       capture_output=True, text=True, check=True)


def safe_dir(root, name):
    path = os.path.realpath(os.path.join(root, name))
    if os.path.dirname(path) != os.path.realpath(root):
        raise ValueError(f"refusing path outside {root}: {path}")
    return path


def provision(kube, args, pvc, sc):
    meta, spec = pvc["metadata"], pvc["spec"]
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    pv_name = f"pvc-{uid}"
    path = safe_dir(args.dir, f"{ns}_{name}_{uid}")
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o777)
    size = spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name,
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER,
                            "shopdb.io/host-path": path},
            "labels": {"shopdb.io/provisioned": "true"},
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy", "Delete"),
            "storageClassName": sc["metadata"]["name"],
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": ns, "name": name, "uid": uid},
            "local": {"path": path},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [args.node]}]}]}},
        },
    }
    kube.apply(pv)
    log(f"provisioned {pv_name} for {ns}/{name} at {path} ({size})")


def reclaim(kube, args, pv):
    name = pv["metadata"]["name"]
    policy = pv["spec"].get("persistentVolumeReclaimPolicy", "Delete")
    if policy != "Delete":
        return
    path = pv["spec"].get("local", {}).get("path") or pv["spec"].get("hostPath", {}).get("path")
    if path:
        path = safe_dir(args.dir, os.path.basename(path))
        shutil.rmtree(path, ignore_errors=True)
    kube.delete("pv", name)
    log(f"deleted {name} and {path}")


def once(kube, args):
    scs = {sc["metadata"]["name"]: sc for sc in kube.get("storageclass")["items"]
           if sc.get("provisioner") == PROVISIONER}
    if not scs:
        return
    pvs = kube.get("pv")["items"]
    existing = {pv["metadata"]["name"] for pv in pvs}
    default_sc = next((n for n, sc in scs.items() if sc["metadata"].get("annotations", {})
                       .get("storageclass.kubernetes.io/is-default-class") == "true"), None)
    for pvc in kube.get("pvc", "-A")["items"]:
        spec, status = pvc["spec"], pvc.get("status", {})
        sc_name = spec.get("storageClassName", default_sc)
        if sc_name not in scs or spec.get("volumeName") or status.get("phase") != "Pending":
            continue
        if pvc["metadata"].get("deletionTimestamp"):
            continue
        sc = scs[sc_name]
        if sc.get("volumeBindingMode") == "WaitForFirstConsumer" and \
                "volume.kubernetes.io/selected-node" not in pvc["metadata"].get("annotations", {}):
            continue
        if f"pvc-{pvc['metadata']['uid']}" in existing:
            continue
        try:
            provision(kube, args, pvc, sc)
        except (subprocess.CalledProcessError, OSError, ValueError) as e:
            log(f"provision {pvc['metadata']['namespace']}/{pvc['metadata']['name']} failed: "
                f"{getattr(e, 'stderr', '') or e}")
    for pv in pvs:
        ann = pv["metadata"].get("annotations", {})
        if ann.get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
            continue
        if pv.get("status", {}).get("phase") in ("Released", "Failed") and \
                not pv["metadata"].get("deletionTimestamp"):
            try:
                reclaim(kube, args, pv)
            except (subprocess.CalledProcessError, OSError, ValueError) as e:
                log(f"reclaim {pv['metadata']['name']} failed: {getattr(e, 'stderr', '') or e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    kube = Kube(args.kubeconfig)
    log(f"provisioner {PROVISIONER} for node {args.node}, volumes in {args.dir}")
    while True:
        try:
            once(kube, args)
        except subprocess.CalledProcessError as e:
            log(f"api error: {e.stderr.strip()[:300]}")
        except Exception as e:  # keep running whatever happens
            log(f"error: {e!r}")
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
