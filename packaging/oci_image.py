#!/usr/bin/env python3
"""Write plugin.wasm as the OCI image Higress pulls, as an OCI image layout directory.

The shape is the one Higress's own pipeline pushes with oras
(alibaba/higress, .github/workflows/build-and-push-wasm-plugin-image.yaml) and that the
Higress Wasm image specification describes (higress.cn, "Wasm Plugin Image
Specification"): one file per layer,

  1. spec.yaml       application/vnd.module.wasm.spec.v1+yaml      (the console reads it)
  2. README.md       application/vnd.module.wasm.doc.v1+markdown
  3. plugin.tar.gz   application/vnd.oci.image.layer.v1.tar+gzip   (last)

The gateway's fetcher (higress-group/istio, pkg/wasm/imagefetcher.go,
extractOCIStandardImage) takes the LAST layer, requires that media type, gunzips and
untars it and returns the file whose base name is `plugin.wasm`.

The config blob is `{}` with media type application/vnd.unknown.config.v1+json, as
`oras push` writes it. Reproducible: no timestamps anywhere (tar mtime 0, gzip mtime 0
and no file name), root-owned 0644 members, sorted JSON keys; the same inputs give the
same manifest digest. Stdlib only.

Usage: oci_image.py --wasm build/plugin.wasm --spec spec.yaml --readme README.md \
           --version 0.1.0 --out build/image
Prints the manifest digest, which is what a WasmPlugin's `spec.sha256` must hold for
an `oci://` url (Istio's wasm cache compares it with the image digest).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

MEDIA_SPEC = "application/vnd.module.wasm.spec.v1+yaml"
MEDIA_README = "application/vnd.module.wasm.doc.v1+markdown"
MEDIA_PLUGIN = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_CONFIG = "application/vnd.unknown.config.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"


def plugin_tar_gz(wasm: bytes) -> bytes:
    """A gzip'd tar holding one member, `plugin.wasm`, with nothing that varies by run."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(wasm)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(tar_bytes.getvalue())
    return out.getvalue()


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class Layout:
    def __init__(self, root: Path):
        self.root = root
        if root.exists():
            shutil.rmtree(root)
        (root / "blobs" / "sha256").mkdir(parents=True)

    def blob(self, data: bytes, media_type: str, title: str | None = None) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / "sha256" / digest).write_bytes(data)
        descriptor = {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
        if title:
            descriptor["annotations"] = {TITLE: title}
        return descriptor


def build(wasm: Path, spec: Path, readme: Path, version: str, out: Path) -> str:
    layout = Layout(out)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": layout.blob(b"{}", MEDIA_CONFIG),
        "layers": [
            layout.blob(spec.read_bytes(), MEDIA_SPEC, "spec.yaml"),
            layout.blob(readme.read_bytes(), MEDIA_README, "README.md"),
            layout.blob(plugin_tar_gz(wasm.read_bytes()), MEDIA_PLUGIN, "plugin.tar.gz"),
        ],
    }
    descriptor = layout.blob(canonical_json(manifest), MEDIA_MANIFEST)
    descriptor["annotations"] = {REF_NAME: version}
    (out / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    (out / "index.json").write_bytes(canonical_json({"schemaVersion": 2, "manifests": [descriptor]}))
    return descriptor["digest"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wasm", type=Path, required=True)
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--readme", type=Path, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    digest = build(args.wasm, args.spec, args.readme, args.version, args.out)
    (args.out.parent / f"{args.out.name}.digest").write_text(digest + "\n")
    print(f"{args.out}: OCI image layout, tag {args.version}, manifest {digest}")
    print(f"plugin.yaml spec.sha256 for this image: {digest.removeprefix('sha256:')}")


if __name__ == "__main__":
    main()
