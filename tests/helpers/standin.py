"""Stand-in base images for a machine that cannot reach a container registry.

The image's base (`python:3.13.9-slim-trixie`) and Redis (`redis:7.4.6-alpine`, the image
k8s/base/redis.yaml names) come from Docker Hub. Where no registry answers, this builds
both from Debian packages instead, with the machine's own apt mirror:

    python -m tests.helpers.standin     # prints the base image to pass as BASE_IMAGE

- one `debootstrap --variant=minbase bookworm` root filesystem with python3, python3-venv,
  ca-certificates and redis-server (about a minute; needs root and debootstrap);
- imported twice: as `chatlab-base:bookworm` (the Dockerfile's BASE_IMAGE) and as
  `chatlab-redis:bookworm`, which compose.yaml runs in Redis's place when REDIS_IMAGE
  names it. A name of its own: an image of Docker Hub's name would shadow the real one
  on a machine that can pull it.

Images that already exist are kept: the second run takes no time. The mirror is read
from this machine's apt sources, never written down here. The test suites and CI use it;
a learner offline runs it once and names the images to `make stage3-compose`
(docs/troubleshooting.md).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from tests.helpers.paths import ROOT

BASE_IMAGE = "chatlab-base:bookworm"
REDIS_IMAGE = "chatlab-redis:bookworm"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates", "redis-server")
APT_SOURCES = Path("/etc/apt")
# pip, run inside `docker build --network host`, then trusts what this machine trusts (which
# may include a proxy's own authority), and Debian's pip is told to use that bundle.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
REDIS_UID = 999  # the official Redis image's `redis` user, which the manifests and compose.yaml run as
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class StandinError(RuntimeError):
    """Something this machine lacks; the message says what to install or do."""


def redis_image() -> str:
    """The Redis image the manifests run, e.g. redis:7.4.6-alpine."""
    text = (ROOT / "stage3_k8s" / "k8s" / "base" / "redis.yaml").read_text()
    match = re.search(r"^\s*image:\s*(redis:\S+)", text, re.MULTILINE)
    if match is None:
        raise StandinError("no `image: redis:...` in stage3_k8s/k8s/base/redis.yaml")
    return match.group(1)


def apt_mirror(etc_apt: Path = APT_SOURCES) -> str:
    """The first Debian archive this machine's apt uses (not the security archive)."""
    uris: list[str] = []
    for sources in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        # deb822: stanzas of `Field: value` lines; we want `URIs:` of `Types: deb` stanzas.
        for stanza in re.split(r"\n\s*\n", sources.read_text()):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.MULTILINE))
            if "deb" in fields.get("Types", "").split():
                uris += fields.get("URIs", "").split()
    lists = [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*.list"))]
    for sources in lists:
        if sources.is_file():
            for line in sources.read_text().splitlines():
                # deb [options] URI suite components
                match = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", line)
                if match:
                    uris.append(match.group(1))
    for uri in uris:
        if "security" not in uri:
            return uri.rstrip("/")
    raise StandinError(f"no Debian mirror in {etc_apt}/sources.list(.d): debootstrap needs one")


def image_exists(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode == 0


def progress(line: str) -> None:
    print(f"==> {line}", file=sys.stderr, flush=True)


def debootstrap(target: Path, mirror: str) -> None:
    if os.geteuid() != 0:
        raise StandinError("building the stand-in base needs root (debootstrap): run it with sudo")
    if shutil.which("debootstrap") is None:
        raise StandinError("debootstrap is missing: apt-get install debootstrap")
    command = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(target), mirror]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise StandinError(f"debootstrap failed ({result.returncode}):\n{tail}")


def prepare(root: Path) -> None:
    """What the images need beyond the packages, minus what they do not."""
    if HOST_CA_BUNDLE.is_file():
        shutil.copyfile(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
    data = root / "data"  # Redis's working directory; a named volume copies its owner on first use
    data.mkdir(exist_ok=True)
    os.chown(data, REDIS_UID, REDIS_UID)
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (root / cache).glob("*"):
            if item.is_file():
                item.unlink()


def docker_import(archive: Path, image: str, changes: list[str]) -> None:
    command = ["docker", "import"]
    for change in changes:
        command += ["--change", change]
    result = subprocess.run([*command, str(archive), image], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StandinError(f"docker import {image} failed: {result.stderr.strip()}")


def ensure() -> str:
    """Both stand-ins exist afterwards; returns the base image's name."""
    missing = [image for image in (BASE_IMAGE, REDIS_IMAGE) if not image_exists(image)]
    if not missing:
        return BASE_IMAGE
    mirror = apt_mirror()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chatlab-rootfs-") as folder:
        root, archive = Path(folder) / "root", Path(folder) / "rootfs.tar"
        progress(f"debootstrap {SUITE} with {', '.join(PACKAGES)} (about a minute)")
        debootstrap(root, mirror)
        prepare(root)
        progress("packing the root filesystem")
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        env = [f"ENV PATH={PATH}", "ENV LANG=C.UTF-8"]
        if BASE_IMAGE in missing:
            progress(f"docker import {BASE_IMAGE}")
            pip_trust = "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt"
            docker_import(archive, BASE_IMAGE, [*env, pip_trust, 'CMD ["python3"]'])
        if REDIS_IMAGE in missing:
            progress(f"docker import {REDIS_IMAGE} (a stand-in for {redis_image()}: Debian's redis-server)")
            docker_import(archive, REDIS_IMAGE, [*env, "WORKDIR /data", "EXPOSE 6379", 'CMD ["redis-server"]'])
    progress(f"stand-in images built in {time.monotonic() - started:.1f}s")
    return BASE_IMAGE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.standin", description=__doc__.splitlines()[0])
    parser.parse_args(argv)  # no options: --help says what it does instead of starting a build
    try:
        print(ensure())
    except StandinError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
