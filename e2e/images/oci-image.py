#!/usr/bin/env python3
"""Writes a one-layer OCI image archive (an OCI layout in a tar) without Docker or a registry.

The layer holds the given files, and for every --bin the shared libraries `ldd` lists, so a
glibc binary of this machine runs from it. The archive imports with
`ctr -n k8s.io images import FILE` under the name given with --name.

  oci-image.py --name localhost/x:dev --out x.tar --user 65532:65532 \
      --bin target/release/x:/usr/local/bin/x --file /etc/ssl/certs/ca-certificates.crt \
      --entrypoint /usr/local/bin/x

Every file gets mtime 0 and root ownership, so the same inputs give the same digests.
"""
import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
GROUP = "root:x:0:\nnonroot:x:65532:\n"


def ldd_libraries(binary):
    """Paths (as the loader looks them up) and real files of the libraries BINARY needs."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0 or "not a dynamic executable" in out.stdout + out.stderr:
        return []
    libs = []
    for line in out.stdout.splitlines():
        m = re.search(r"=>\s+(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            libs.append(m.group(1))
    return libs


class Layer:
    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.seen = set()

    def _info(self, path, kind, mode):
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
        info.uname = info.gname = "root"
        return info

    def dir(self, path, mode=0o755, uid=0):
        path = path.rstrip("/")
        if not path or path in self.seen:
            return
        self.dir(os.path.dirname(path))
        self.seen.add(path)
        info = self._info(path, tarfile.DIRTYPE, mode)
        info.uid = info.gid = uid
        self.tar.addfile(info)

    def data(self, path, content, mode=0o644):
        if path in self.seen:
            return
        self.dir(os.path.dirname(path))
        self.seen.add(path)
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(content)
        self.tar.addfile(info, io.BytesIO(content))

    def file(self, src, dst):
        with open(os.path.realpath(src), "rb") as f:
            content = f.read()
        mode = 0o755 if os.access(src, os.X_OK) else 0o644
        self.data(dst, content, mode)

    def symlink(self, path, target):
        if path in self.seen:
            return
        self.dir(os.path.dirname(path))
        self.seen.add(path)
        info = self._info(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def close(self):
        self.tar.close()
        return self.buf.getvalue()


def blob(out, content, media_type):
    digest = hashlib.sha256(content).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size, info.mtime, info.mode = len(content), 0, 0o644
    out.addfile(info, io.BytesIO(content))
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(content)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="full reference, e.g. localhost/mqtt-kafka-proxy:dev")
    p.add_argument("--out", required=True, help="the OCI archive to write")
    p.add_argument("--bin", action="append", default=[], metavar="SRC:DST", help="a binary and the libraries ldd lists")
    p.add_argument("--file", action="append", default=[], metavar="SRC[:DST]", help="a file (DST defaults to SRC)")
    p.add_argument("--symlink", action="append", default=[], metavar="PATH:TARGET")
    p.add_argument("--dir", action="append", default=[], metavar="PATH", help="an empty directory (mode 1777 for /tmp)")
    p.add_argument("--entrypoint", action="append", default=[], help="repeat for each argv element")
    p.add_argument("--cmd", action="append", default=[], help="repeat for each argv element")
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("--user", default="65532:65532")
    p.add_argument("--workdir", default="/")
    args = p.parse_args()

    layer = Layer()
    layer.data("/etc/passwd", PASSWD.encode())
    layer.data("/etc/group", GROUP.encode())
    layer.data("/etc/nsswitch.conf", b"hosts: files dns\n")
    layer.dir("/home/nonroot", 0o755, uid=65532)
    layer.dir("/tmp", 0o1777)
    for d in args.dir:
        layer.dir(d, 0o1777 if d.rstrip("/") == "/tmp" else 0o755)
    for spec in args.bin:
        src, dst = spec.split(":", 1)
        layer.file(src, dst)
        for lib in ldd_libraries(src):
            layer.file(lib, lib)
    for spec in args.file:
        src, _, dst = spec.partition(":")
        layer.file(src, dst or src)
    for spec in args.symlink:
        path, target = spec.split(":", 1)
        layer.symlink(path, target)
    layer_tar = layer.close()

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": args.user,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", *args.env],
            "Entrypoint": args.entrypoint or None,
            "Cmd": args.cmd or None,
            "WorkingDir": args.workdir,
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
        "history": [{"created_by": "e2e/images/oci-image.py"}],
    }
    with tarfile.open(args.out + ".tmp", "w", format=tarfile.PAX_FORMAT) as out:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            out.addfile(info)
        layer_desc = blob(out, layer_tar, "application/vnd.oci.image.layer.v1.tar")
        config_desc = blob(out, json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": [layer_desc],
        }
        manifest_desc = blob(out, json.dumps(manifest, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json")
        tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
        manifest_desc["annotations"] = {
            "io.containerd.image.name": args.name,
            "org.opencontainers.image.ref.name": tag,
        }
        manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_desc]}
        for name, content in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", json.dumps(index).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(content), 0, 0o644
            out.addfile(info, io.BytesIO(content))
    os.replace(args.out + ".tmp", args.out)
    print(f"{args.name}: {manifest_desc['digest']} ({len(layer_tar) // 1024} KiB layer) -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
