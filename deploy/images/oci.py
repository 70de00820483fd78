#!/usr/bin/env python3
"""Writes one container image as an OCI image-layout archive, byte for byte reproducible.

Each --layer DIR becomes one gzip layer: entries sorted by path, owned by root, every mtime
the --epoch (SOURCE_DATE_EPOCH), gzip header without name or time. The same directories and
options therefore give the same layer digests, config digest and manifest digest on every run
and every machine, which is what `scripts/images.sh` relies on and what its check verifies.

The archive holds `oci-layout`, `index.json` (the manifest annotated with the image name, as
`ctr images import` and `skopeo copy oci-archive:` read it) and a Docker `manifest.json`
(as `docker load` reads it), so one file serves containerd, skopeo and docker.

Why not buildah or umoci: both want a storage directory of their own, stamp the build time
into the config and keep the files' mtimes in the layers, so two builds of the same inputs
differ; this writer is stdlib-only and needs nothing but python3.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import tempfile
from datetime import datetime, timezone

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def layer_tar(root, epoch, out):
    """Writes DIR's tree as a tar to `out`; hard links within the tree stay hard links."""
    seen_inodes = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        entries = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                entries.append(os.path.relpath(full, root))
        for rel in sorted(entries):
            full = os.path.join(root, rel)
            st = os.lstat(full)
            info = tarfile.TarInfo(rel)
            info.mtime = epoch
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(full)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen_inodes:
                    info.type = tarfile.LNKTYPE
                    info.linkname = seen_inodes[key]
                    tar.addfile(info)
                    continue
                seen_inodes[key] = rel
                info.size = st.st_size
                with open(full, "rb") as f:
                    tar.addfile(info, f)
            else:
                sys.exit(f"oci.py: {full}: only directories, files and symlinks go into a layer")


class Blobs:
    """The archive's blobs/sha256/ directory, written to a temporary directory first."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "blobs", "sha256")
        os.makedirs(self.dir)

    def add_bytes(self, data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.dir, digest), "wb") as f:
            f.write(data)
        return f"sha256:{digest}", len(data)

    def add_layer(self, root, epoch, level):
        """Returns (descriptor digest, size, diff_id) of DIR as a gzip layer."""
        tmp = os.path.join(self.dir, "layer.tmp")
        diff = hashlib.sha256()
        blob = hashlib.sha256()

        class Tee(io.RawIOBase):
            def __init__(self, sink):
                self.sink = sink

            def writable(self):
                return True

            def write(self, b):
                blob.update(b)
                self.sink.write(b)
                return len(b)

        class Hashing(io.RawIOBase):
            def __init__(self, gz):
                self.gz = gz

            def writable(self):
                return True

            def write(self, b):
                diff.update(b)
                self.gz.write(b)
                return len(b)

        with open(tmp, "wb") as raw:
            tee = Tee(raw)
            with gzip.GzipFile(filename="", mode="wb", fileobj=tee, mtime=0,
                               compresslevel=level) as gz:
                layer_tar(root, epoch, Hashing(gz))
            size = raw.tell()
        digest = blob.hexdigest()
        os.replace(tmp, os.path.join(self.dir, digest))
        return f"sha256:{digest}", size, f"sha256:{diff.hexdigest()}"


def key_values(pairs, what):
    out = {}
    for pair in pairs:
        if "=" not in pair:
            sys.exit(f"oci.py: {what} `{pair}` is not KEY=VALUE")
        k, v = pair.split("=", 1)
        out[k] = v
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="full reference, e.g. ghcr.io/meshd/meshd:0.1.0")
    p.add_argument("--out", required=True, help="archive to write")
    p.add_argument("--layer", action="append", default=[], help="a directory, one layer each")
    p.add_argument("--entrypoint", help="JSON array")
    p.add_argument("--cmd", help="JSON array")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--label", action="append", default=[])
    p.add_argument("--user", default="")
    p.add_argument("--workdir", default="")
    p.add_argument("--epoch", type=int,
                   default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")))
    p.add_argument("--gzip-level", type=int, default=6)
    a = p.parse_args()
    os.umask(0o022)
    if not a.layer:
        sys.exit("oci.py: at least one --layer")
    created = datetime.fromtimestamp(a.epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(a.out))) as work:
        blobs = Blobs(work)
        layers, diff_ids, history = [], [], []
        for d in a.layer:
            if not os.path.isdir(d):
                sys.exit(f"oci.py: layer {d} is not a directory")
            digest, size, diff_id = blobs.add_layer(d, a.epoch, a.gzip_level)
            layers.append({"mediaType": LAYER_TYPE, "digest": digest, "size": size})
            diff_ids.append(diff_id)
            history.append({"created": created, "created_by": f"oci.py --layer {os.path.basename(d)}"})
        config = {"Env": a.env, "Labels": key_values(a.label, "--label")}
        key_values(a.env, "--env")
        if a.entrypoint:
            config["Entrypoint"] = json.loads(a.entrypoint)
        if a.cmd:
            config["Cmd"] = json.loads(a.cmd)
        if a.user:
            config["User"] = a.user
        if a.workdir:
            config["WorkingDir"] = a.workdir
        image_config = {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        }
        cfg_digest, cfg_size = blobs.add_bytes(canonical_json(image_config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": cfg_digest, "size": cfg_size},
            "layers": layers,
        }
        man_digest, man_size = blobs.add_bytes(canonical_json(manifest))
        tag = a.name.rsplit(":", 1)[1] if ":" in a.name.rsplit("/", 1)[-1] else "latest"
        index = {
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": MANIFEST_TYPE,
                "digest": man_digest,
                "size": man_size,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": a.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        }
        docker_manifest = [{
            "Config": "blobs/sha256/" + cfg_digest.split(":")[1],
            "RepoTags": [a.name],
            "Layers": ["blobs/sha256/" + l["digest"].split(":")[1] for l in layers],
        }]
        files = {
            "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
            "index.json": canonical_json(index),
            "manifest.json": canonical_json(docker_manifest),
        }
        for name, data in files.items():
            with open(os.path.join(work, name), "wb") as f:
                f.write(data)
        tmp_out = a.out + ".tmp"
        with open(tmp_out, "wb") as out:
            layer_tar(work, a.epoch, out)
        os.replace(tmp_out, a.out)
    print(f"{a.name} {man_digest}")


if __name__ == "__main__":
    main()
