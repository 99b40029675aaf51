#!/usr/bin/env python3
"""Turn a root filesystem directory into a single-layer OCI image archive
that `ctr -n k8s.io images import` understands.

    mkimage.py ROOTFS OUT.tar NAME [--entrypoint JSON] [--cmd JSON] [--user U]
               [--workdir DIR] [--env K=V ...] [--label K=V ...] [--port N/tcp ...]

NAME is the full reference, e.g. localhost/shopdb/postgres:15.
The layer is an uncompressed tar made by GNU tar (numeric owners, xattrs kept).
"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
import time


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rootfs")
    ap.add_argument("out")
    ap.add_argument("name")
    ap.add_argument("--entrypoint", default=None)
    ap.add_argument("--cmd", default=None)
    ap.add_argument("--user", default="")
    ap.add_argument("--workdir", default="/")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--label", action="append", default=[])
    ap.add_argument("--port", action="append", default=[])
    ap.add_argument("--stop-signal", default=None)
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(a.out))) as tmp:
        layer = os.path.join(tmp, "layer.tar")
        # The runtime provides /dev, /proc, /sys; keep them as empty dirs.
        subprocess.run(
            ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=security.capability",
             "--sort=name", "--mtime=@0",
             "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
             "--exclude=./tmp/*",
             "-C", a.rootfs, "-cf", layer, "."],
            check=True,
        )
        layer_digest = sha256_file(layer)
        layer_size = os.path.getsize(layer)

        env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        for e in a.env:
            k = e.split("=", 1)[0]
            env = [x for x in env if not x.startswith(k + "=")] + [e]
        config = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": env,
                "WorkingDir": a.workdir,
                "Labels": dict(l.split("=", 1) for l in a.label) or None,
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + layer_digest]},
            "history": [{"created_by": "shopdb localkube mkimage.py"}],
        }
        if a.user:
            config["config"]["User"] = a.user
        if a.entrypoint:
            config["config"]["Entrypoint"] = json.loads(a.entrypoint)
        if a.cmd:
            config["config"]["Cmd"] = json.loads(a.cmd)
        if a.stop_signal:
            config["config"]["StopSignal"] = a.stop_signal
        if a.port:
            config["config"]["ExposedPorts"] = {p: {} for p in a.port}
        config_b = json.dumps(config, sort_keys=True).encode()
        config_digest = hashlib.sha256(config_b).hexdigest()

        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": "sha256:" + config_digest, "size": len(config_b)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": "sha256:" + layer_digest, "size": layer_size}],
        }
        manifest_b = json.dumps(manifest, sort_keys=True).encode()
        manifest_digest = hashlib.sha256(manifest_b).hexdigest()
        tag = a.name.rsplit(":", 1)[1] if ":" in a.name.rsplit("/", 1)[-1] else "latest"
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + manifest_digest, "size": len(manifest_b),
                "annotations": {"io.containerd.image.name": a.name,
                                "org.opencontainers.image.ref.name": tag},
                "platform": {"architecture": "amd64", "os": "linux"},
            }],
        }

        tmp_out = a.out + ".partial"
        with tarfile.open(tmp_out, "w") as t:
            def add_bytes(name, data):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                ti.mtime = 0
                t.addfile(ti, io.BytesIO(data))
            add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            add_bytes("index.json", json.dumps(index).encode())
            add_bytes("blobs/sha256/" + config_digest, config_b)
            add_bytes("blobs/sha256/" + manifest_digest, manifest_b)
            t.add(layer, arcname="blobs/sha256/" + layer_digest)
        os.replace(tmp_out, a.out)
    print(f"{a.name} -> {a.out} ({layer_size // (1 << 20)} MiB)")


if __name__ == "__main__":
    main()
