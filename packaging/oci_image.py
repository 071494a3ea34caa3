#!/usr/bin/env python3
"""Write plugin.wasm as the OCI image Higress pulls, as an OCI image layout directory.

The shape is the one the Higress Wasm plugin image specification describes
(higress.cn/docs/latest/user/wasm-image-spec, "Wasm Plugin Image Specification",
section 2) and Higress's own pipeline pushes with oras (alibaba/higress,
.github/workflows/build-and-push-wasm-plugin-image.yaml): one file per layer,
in the pipeline's order,

  README_{lang}.md  application/vnd.module.wasm.doc.v1.{lang}+markdown  (each translation)
  README.md         application/vnd.module.wasm.doc.v1+markdown
  spec.yaml         application/vnd.module.wasm.spec.v1+yaml           (the plugin's metadata)
  plugin.tar.gz     application/vnd.oci.image.layer.v1.tar+gzip        (last)

`{lang}` is what the file name holds after `README_`, as the pipeline derives it
(`sed 's/README_//; s/.md//'`): README_CN.md gives `...doc.v1.CN+markdown`.

The gateway's fetcher (higress-group/istio, pkg/wasm/imagefetcher.go,
extractOCIStandardImage) takes the LAST layer, requires that media type, gunzips and
untars it and returns the file whose base name is `plugin.wasm`.

The config blob is `{}` with media type application/vnd.unknown.config.v1+json, as
`oras push` writes it. Reproducible: no timestamps anywhere (tar mtime 0, gzip mtime 0
and no file name), root-owned 0644 members, sorted JSON keys; the same inputs give the
same manifest digest. Stdlib only.

Usage: oci_image.py --wasm build/plugin.wasm --spec spec.yaml --readme README.md \
           --readme README_CN.md --version 0.1.0 --out build/image
Prints the manifest digest, which is what a WasmPlugin's `spec.sha256` must hold for
an `oci://` url (Istio's wasm cache compares it with the image digest).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import shutil
import tarfile
from pathlib import Path

MEDIA_SPEC = "application/vnd.module.wasm.spec.v1+yaml"
MEDIA_README = "application/vnd.module.wasm.doc.v1+markdown"
MEDIA_README_LANG = "application/vnd.module.wasm.doc.v1.{lang}+markdown"
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


def readme_media_type(name: str) -> str:
    """README.md, or README_{lang}.md with the lang its name holds."""
    if name == "README.md":
        return MEDIA_README
    match = re.fullmatch(r"README_(\w+)\.md", name)
    if not match:
        raise ValueError(f"{name}: a README layer is README.md or README_{{lang}}.md")
    return MEDIA_README_LANG.format(lang=match.group(1))


def build(wasm: Path, spec: Path, readmes: list[Path], version: str, out: Path) -> str:
    if [r.name for r in readmes].count("README.md") != 1:
        raise ValueError("the image needs exactly one README.md (the specification requires it)")
    layout = Layout(out)
    translations = sorted((r for r in readmes if r.name != "README.md"), key=lambda r: r.name, reverse=True)
    main_readme = next(r for r in readmes if r.name == "README.md")
    docs = [layout.blob(r.read_bytes(), readme_media_type(r.name), r.name) for r in [*translations, main_readme]]
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": layout.blob(b"{}", MEDIA_CONFIG),
        "layers": [
            *docs,
            layout.blob(spec.read_bytes(), MEDIA_SPEC, "spec.yaml"),
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
    parser.add_argument(
        "--readme", type=Path, action="append", required=True, help="README.md, and each README_{lang}.md"
    )
    parser.add_argument("--version", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    digest = build(args.wasm, args.spec, args.readme, args.version, args.out)
    (args.out.parent / f"{args.out.name}.digest").write_text(digest + "\n")
    print(f"{args.out}: OCI image layout, tag {args.version}, manifest {digest}")
    print(f"plugin.yaml spec.sha256 for this image: {digest.removeprefix('sha256:')}")


if __name__ == "__main__":
    main()
