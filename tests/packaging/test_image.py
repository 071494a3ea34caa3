"""`make image` writes the OCI image Higress pulls; a real registry serves it back intact.

Run by `make packaging-test` after `make image`. The registry is Debian's
`docker-registry` (the CNCF distribution registry) on a free loopback port with its own
storage directory; the image goes in with Debian's `skopeo`, the same way README.md
tells an operator to push it, and comes back out through the registry's HTTP API.
Reading it back applies the rule of Higress's image fetcher (higress-group/istio,
pkg/wasm/imagefetcher.go, extractOCIStandardImage): the last layer, media type
application/vnd.oci.image.layer.v1.tar+gzip, the member whose base name is plugin.wasm.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from testbed.processes import Proc  # noqa: E402
from testbed.waiting import Fatal, free_port, wait_until  # noqa: E402

IMAGE = ROOT / "build" / "image"
WASM = ROOT / "build" / "plugin.wasm"
VERSION = (ROOT / "VERSION").read_text().strip()
REPOSITORY = "plugins/nacos-instance-guard"

# The Higress Wasm plugin image specification (higress.cn, "Wasm Plugin Image
# Specification", section 2): README.md required, README_{lang}.md optional with the
# lang in its media type, spec.yaml, plugin.wasm last; in the order Higress's pipeline
# pushes them (alibaba/higress .github/workflows/build-and-push-wasm-plugin-image.yaml).
LAYERS = [
    ("application/vnd.module.wasm.doc.v1.CN+markdown", "README_CN.md"),
    ("application/vnd.module.wasm.doc.v1+markdown", "README.md"),
    ("application/vnd.module.wasm.spec.v1+yaml", "spec.yaml"),
    ("application/vnd.oci.image.layer.v1.tar+gzip", "plugin.tar.gz"),
]
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fetcher_rule(manifest: dict, blob) -> bytes:
    """What Higress's fetcher does with a manifest: last layer, OCI layer type, plugin.wasm inside."""
    layer = manifest["layers"][-1]
    assert layer["mediaType"] == OCI_LAYER, layer
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layer["digest"]))), mode="r:") as tar:
        for member in tar:
            if os.path.basename(member.name) == "plugin.wasm":
                return tar.extractfile(member).read()
    raise AssertionError("plugin.wasm not found in the last layer")


def layout_blob(digest: str) -> bytes:
    data = (IMAGE / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    assert sha256(data) == digest
    return data


@pytest.fixture(scope="module")
def layout():
    if not (IMAGE / "index.json").exists():
        pytest.fail("build/image missing: run `make image` first")
    index = json.loads((IMAGE / "index.json").read_text())
    assert json.loads((IMAGE / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert len(index["manifests"]) == 1
    descriptor = index["manifests"][0]
    manifest_bytes = layout_blob(descriptor["digest"])
    assert descriptor["size"] == len(manifest_bytes)
    return descriptor, manifest_bytes, json.loads(manifest_bytes)


def test_the_layout_has_the_higress_shape(layout):
    descriptor, _, manifest = layout
    assert descriptor["mediaType"] == OCI_MANIFEST
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == VERSION, "image tag is VERSION"
    assert manifest["mediaType"] == OCI_MANIFEST
    got = [(layer["mediaType"], layer["annotations"]["org.opencontainers.image.title"]) for layer in manifest["layers"]]
    assert got == LAYERS
    for layer in manifest["layers"]:
        assert len(layout_blob(layer["digest"])) == layer["size"]
    for layer, (_, name) in zip(manifest["layers"][:-1], LAYERS[:-1], strict=True):
        assert layout_blob(layer["digest"]) == (ROOT / name).read_bytes(), name
    assert fetcher_rule(manifest, layout_blob) == WASM.read_bytes()
    # plugin.tar.gz holds plugin.wasm alone
    tar = tarfile.open(fileobj=io.BytesIO(gzip.decompress(layout_blob(manifest["layers"][-1]["digest"]))))
    assert tar.getnames() == ["plugin.wasm"]


def test_make_image_is_reproducible(layout, tmp_path):
    descriptor, _, _ = layout
    argv = [
        sys.executable,
        str(ROOT / "packaging" / "oci_image.py"),
        "--wasm",
        str(WASM),
        "--spec",
        str(ROOT / "spec.yaml"),
        "--readme",
        str(ROOT / "README.md"),
        "--readme",
        str(ROOT / "README_CN.md"),
        "--version",
        VERSION,
        "--out",
        str(tmp_path / "again"),
    ]
    subprocess.run(argv, check=True, capture_output=True)
    again = json.loads((tmp_path / "again" / "index.json").read_text())["manifests"][0]
    assert again["digest"] == descriptor["digest"]
    # the digest file `make image` leaves beside the layout names the same manifest
    assert (ROOT / "build" / "image.digest").read_text().strip() == descriptor["digest"]


class Registry:
    """Debian's docker-registry with its own config, storage and loopback port."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.storage = workdir / "storage"
        self.storage.mkdir()
        self.config = workdir / "registry.yml"
        # Same keys as the package's /etc/docker/registry/config.yml, minus htpasswd auth.
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        binary = shutil.which("docker-registry")
        assert binary, "docker-registry missing: `make packaging-test` installs it"
        self.proc = Proc("registry", [binary, "serve", str(self.config)], dict(os.environ), workdir / "registry.log")

        def ready():
            if not self.proc.alive():
                raise Fatal(self.proc.log_text())
            try:
                return self.get("/v2/")[0] == 200
            except OSError:
                return False

        wait_until(ready, 20, 0.1, "registry answers /v2/")

    def get(self, path: str, accept: str | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, dict(resp.getheaders()), body

    def stop(self):
        self.proc.stop(timeout=10)


@pytest.fixture
def registry(tmp_path):
    r = Registry(tmp_path)
    yield r
    r.stop()


def readme_push_command() -> str:
    """The skopeo command of README.md's quick start, continuation lines joined."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^(skopeo copy .*?(?:\\\n.*?)*)$", readme, re.M)
    assert match, "README.md gives the skopeo push command"
    return re.sub(r"\\\n\s*", "", match.group(1))


def test_readme_push_target_and_plugin_yaml_url_agree():
    command = readme_push_command()
    command = command.replace("$(cat VERSION)", VERSION)
    destination = re.search(r"docker://(\S+)", command).group(1)
    url = yaml.safe_load((ROOT / "plugin.yaml").read_text())["spec"]["url"]
    assert url == f"oci://{destination}", (url, destination)
    assert destination.split("/", 1)[1] == f"{REPOSITORY}:{VERSION}"


def test_registry_round_trip_gives_the_fetcher_plugin_wasm(layout, registry, tmp_path):
    descriptor, manifest_bytes, _ = layout
    # The README's push command as written, pointed at the loopback registry (plain
    # HTTP there, so no TLS verification) with a policy of its own.
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    target = f"127.0.0.1:{registry.port}/{REPOSITORY}:{VERSION}"
    command = readme_push_command().replace("registry.example.com", f"127.0.0.1:{registry.port}")
    command = command.replace("skopeo copy", f"skopeo --policy {policy} copy --dest-tls-verify=false", 1)
    subprocess.run(["bash", "-c", command], cwd=ROOT, check=True)

    status, headers, body = registry.get(f"/v2/{REPOSITORY}/manifests/{VERSION}", OCI_MANIFEST)
    assert status == 200, body
    assert headers["Content-Type"] == OCI_MANIFEST
    # skopeo copied the manifest byte for byte: the registry's digest is the one
    # `make image` printed, and Istio's wasm cache compares spec.sha256 with it.
    assert body == manifest_bytes
    assert headers["Docker-Content-Digest"] == sha256(body) == descriptor["digest"]
    manifest = json.loads(body)
    assert [layer["mediaType"] for layer in manifest["layers"]] == [m for m, _ in LAYERS]

    def registry_blob(digest: str) -> bytes:
        status, _, data = registry.get(f"/v2/{REPOSITORY}/blobs/{digest}")
        assert status == 200 and sha256(data) == digest
        return data

    wasm = fetcher_rule(manifest, registry_blob)
    assert wasm == WASM.read_bytes(), "plugin.wasm from the registry differs from build/plugin.wasm"
    assert wasm[:4] == b"\0asm"
    print(
        f"\n[image] {target}: manifest {headers['Docker-Content-Digest']}, plugin.wasm {len(wasm)} bytes {sha256(wasm)}"
    )
