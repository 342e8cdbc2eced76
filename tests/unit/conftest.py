from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ctr2svc.image.config import ImageConfig, ResolvedImage
from ctr2svc.image.reference import parse
from ctr2svc.model import Layout, ServiceSpec, Volume

DATA = Path(__file__).parent / "data"
DIGEST = "sha256:" + "1f" * 32


def make_spec(*, uid: int = 0, volumes: tuple[Volume, ...] | None = None) -> ServiceSpec:
    layout = Layout("valkey-svc", "9.0.0")
    image = ResolvedImage(
        reference=parse("127.0.0.1:5000/valkey:9.0.0"),
        digest=DIGEST,
        index_digest=None,
        config=ImageConfig(architecture="amd64", os="linux", volumes=("/data",), stop_signal="SIGTERM"),
        cache_ref=f"/cache/oci:{DIGEST[7:]}",
    )
    if volumes is None:
        volumes = (Volume("/data", layout.volume_host_path("/data"), 999, 999, 0o750, True),)
    return ServiceSpec(
        name="valkey-svc",
        version="9.0.0",
        arch="amd64",
        description="Valkey 100% compatible (as a service)",
        layout=layout,
        image=image,
        args=("docker-entrypoint.sh", "valkey-server"),
        uid=uid,
        gid=uid,
        stop_signal="SIGTERM",
        stop_timeout=30,
        volumes=volumes,
        maintainer="ctr2svc <root@localhost>",
        homepage="https://valkey.io",
        entrypoint_n=1,
    )


@pytest.fixture
def spec() -> ServiceSpec:
    return make_spec()


@pytest.fixture
def umoci_config() -> dict[str, Any]:
    # Written by umoci 0.4.7 `unpack` for an image with User app, VOLUME /data, EXPOSE 8080,
    # STOPSIGNAL SIGQUIT.
    doc: dict[str, Any] = json.loads((DATA / "umoci-config.json").read_text())
    return doc
