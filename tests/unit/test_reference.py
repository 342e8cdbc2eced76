from __future__ import annotations

import pytest

from ctr2svc.errors import UsageError
from ctr2svc.image.reference import ImageReference, Transport, parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "name", "tag", "digest", "skopeo"),
    [
        (
            "valkey:9.0.0",
            "docker.io/library/valkey",
            "9.0.0",
            None,
            "docker://docker.io/library/valkey:9.0.0",
        ),
        (
            "valkey/valkey",
            "docker.io/valkey/valkey",
            "latest",
            None,
            "docker://docker.io/valkey/valkey:latest",
        ),
        (
            "127.0.0.1:5000/valkey:9.0.0",
            "127.0.0.1:5000/valkey",
            "9.0.0",
            None,
            "docker://127.0.0.1:5000/valkey:9.0.0",
        ),
        ("localhost/team/app", "localhost/team/app", "latest", None, "docker://localhost/team/app:latest"),
        (
            f"docker://reg.example.com/app@{DIGEST}",
            "reg.example.com/app",
            None,
            DIGEST,
            f"docker://reg.example.com/app@{DIGEST}",
        ),
        (
            "reg.example.com:443/a/b/c:v1.2_x",
            "reg.example.com:443/a/b/c",
            "v1.2_x",
            None,
            "docker://reg.example.com:443/a/b/c:v1.2_x",
        ),
    ],
)
def test_registry_references(text: str, name: str, tag: str | None, digest: str | None, skopeo: str) -> None:
    ref = parse(text)
    assert ref == ImageReference(Transport.DOCKER, name, tag, digest)
    assert ref.skopeo() == skopeo


@pytest.mark.parametrize(
    ("text", "transport", "name", "tag", "basename"),
    [
        ("oci:examples/hello:1.0", Transport.OCI, "examples/hello", "1.0", "hello"),
        ("oci:/srv/layout", Transport.OCI, "/srv/layout", None, "layout"),
        ("oci-archive:/tmp/app.tar:2", Transport.OCI_ARCHIVE, "/tmp/app.tar", "2", "app"),
        ("docker-archive:/tmp/web.tar.gz", Transport.DOCKER_ARCHIVE, "/tmp/web.tar.gz", None, "web"),
    ],
)
def test_local_references(text: str, transport: Transport, name: str, tag: str | None, basename: str) -> None:
    ref = parse(text)
    assert (ref.transport, ref.name, ref.tag, ref.basename) == (transport, name, tag, basename)
    assert ref.skopeo() == text
    assert not ref.is_remote


def test_pinned_drops_the_tag() -> None:
    ref = parse("127.0.0.1:5000/valkey:9.0.0").pinned(DIGEST)
    assert str(ref) == f"127.0.0.1:5000/valkey@{DIGEST}"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("Valkey:1", "lowercase"),
        ("valkey:bad/tag!", "not a valid registry host"),
        ("valkey@sha256:1234", "sha256 digest"),
        ("http://example.com/app", "unknown transport"),
        ("valkey:-x", "not a valid tag"),
        ("oci::tag", "needs a path"),
        ("reg_istry.example.com/app", "not a valid registry host"),
        ("valkey/A", "lowercase"),
        ("valkey/a..b", "lowercase letters"),
    ],
)
def test_invalid_references_say_why_and_how(text: str, why: str) -> None:
    with pytest.raises(UsageError) as info:
        parse(text)
    assert why in info.value.brief
    assert info.value.hint and "registry.example.com/team/app:1.2" in info.value.hint
