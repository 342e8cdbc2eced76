from __future__ import annotations

import subprocess

import pytest

from ctr2svc.errors import UsageError
from ctr2svc.model import PackageFormat
from ctr2svc.package import naming

DIGEST = "sha256:" + "0123456789ab" * 5 + "cdef"
CREATED = "2026-11-23T09:22:30.365753692Z"


@pytest.mark.parametrize(
    ("tag", "version"),
    [
        ("9.0.0", "9.0.0"),
        ("v1.2", "1.2"),
        ("9.0.0-alpine", "9.0.0+alpine"),
        ("8.2-bookworm-slim", "8.2+bookworm.slim"),
        ("1.0.0-rc1", "1.0.0~rc1"),
        ("2.0-beta.3", "2.0~beta.3"),
        ("17_3", "17.3"),
        ("latest", "0+latest.20261123092230"),
        ("stable-x", "0+stable.x.20261123092230"),
        (None, "0+20261123092230.0123456789ab"),
    ],
)
def test_version_rule(tag: str | None, version: str) -> None:
    assert naming.version_from_tag(tag, DIGEST, CREATED) == version
    assert naming.check_version(version) == version


def test_version_without_creation_time() -> None:
    assert naming.version_from_tag("latest", DIGEST, None) == "0+latest"
    assert naming.version_from_tag(None, DIGEST, "garbage") == "0+0123456789ab"


def dpkg_compare(a: str, op: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode == 0


@pytest.mark.parametrize(
    ("older", "newer"),
    [("1.0.0-rc1", "1.0.0"), ("9.0.0", "9.0.0-alpine"), ("9.0.0", "9.0.1"), ("v1.9", "v1.10")],
)
def test_versions_sort_as_releases_do(older: str, newer: str) -> None:
    # dpkg itself is the judge of Debian version order.
    a = naming.version_from_tag(older, DIGEST, CREATED)
    b = naming.version_from_tag(newer, DIGEST, CREATED)
    assert dpkg_compare(a, "lt", b), (a, b)


def test_moving_tag_versions_grow_with_creation_time() -> None:
    a = naming.version_from_tag("latest", DIGEST, "2026-01-01T00:00:00Z")
    b = naming.version_from_tag("latest", DIGEST, "2026-02-01T00:00:00Z")
    assert dpkg_compare(a, "lt", b)


@pytest.mark.parametrize("bad", ["", "a", "1.0_1", "-1", "1.0-", "x1.0", "1 0"])
def test_invalid_versions_are_refused(bad: str) -> None:
    with pytest.raises(UsageError, match="not a valid Debian version"):
        naming.check_version(bad)


@pytest.mark.parametrize(
    ("basename", "name"), [("valkey", "valkey-svc"), ("My_App", "my-app-svc"), ("__", "image-svc")]
)
def test_default_package_name(basename: str, name: str) -> None:
    assert naming.default_package_name(basename) == name
    assert naming.check_package_name(name) == name


@pytest.mark.parametrize("bad", ["A-svc", "x", "-svc", "a_b", "a b"])
def test_invalid_names_get_a_suggestion(bad: str) -> None:
    with pytest.raises(UsageError) as info:
        naming.check_package_name(bad)
    assert info.value.hint and info.value.hint.startswith("use --name ")


@pytest.mark.parametrize(
    ("arch", "variant", "deb", "nfpm"),
    [
        ("amd64", None, "amd64", "amd64"),
        ("arm64", "v8", "arm64", "arm64"),
        ("arm", "v7", "armhf", "arm7"),
        ("arm", "v6", "armel", "arm6"),
        ("386", None, "i386", "386"),
        ("ppc64le", None, "ppc64el", "ppc64le"),
    ],
)
def test_architectures(arch: str, variant: str | None, deb: str, nfpm: str) -> None:
    assert naming.deb_arch(arch, variant) == deb
    assert naming.nfpm_arch(deb) == nfpm


def test_unknown_architecture() -> None:
    with pytest.raises(UsageError, match="no Debian equivalent"):
        naming.deb_arch("wasm", None)


def test_split_platform() -> None:
    assert naming.split_platform("arm/v7") == ("arm", "v7")
    assert naming.split_platform("amd64") == ("amd64", None)


@pytest.mark.parametrize(
    ("fmt", "version", "floor", "expected"),
    [
        (PackageFormat.DEB, "9.0.0", "9.0.0", "9.0.0-1"),
        (PackageFormat.DEB, "9.0.0", "9.0.0-1", "9.0.0-2"),
        (PackageFormat.DEB, "9.0.1", "9.0.0-3", "9.0.1"),  # already above: kept
        (PackageFormat.RPM, "9.0.0-1", "9.0.0-1", "9.0.0-2"),
        (PackageFormat.APK, "9.0.0-r0", "9.0.0-r0", "9.0.0-r1"),
    ],
)
def test_a_new_digest_sorts_above_the_published_version(
    fmt: PackageFormat, version: str, floor: str, expected: str
) -> None:
    # dpkg and rpm themselves judge the order (naming.above asks them).
    assert naming.above(fmt, version, floor) == expected
    if fmt is PackageFormat.DEB:
        assert dpkg_compare(expected, "gt", floor)


# A service's name is its package's name in every format and its systemd unit's name (systemd refuses
# "+", which Debian allows), its host name and DNS name on a private network (63 characters), and none
# of ctr2svc's own package names.
@pytest.mark.parametrize(
    ("bad", "says", "hint"),
    [
        ("c++svc", "systemd refuses it in a unit name", "use --name cppsvc"),
        ("app+x", "systemd refuses it", "use --name appp"),
        ("ctr2svc", "is reserved: it is the name of ctr2svc's own package", "use --name my-ctr2svc"),
        ("ctr2svc-layer-0123456789ab", "reserved: it is the name of ctr2svc's layer packages", "--name "),
        ("a" * 64, "has 64 characters, more than the 63", "use a shorter --name"),
    ],
)
def test_names_systemd_or_ctr2svc_cannot_take(bad: str, says: str, hint: str) -> None:
    for fmt in PackageFormat:
        with pytest.raises(UsageError) as info:
            naming.check_package_name(bad, fmt)
        assert says in info.value.brief, info.value.brief
        assert info.value.hint and hint in info.value.hint, info.value.hint
        # The suggestion itself is a name the rule accepts.
        naming.check_package_name(info.value.hint.split("--name ")[1], fmt)


@pytest.mark.parametrize("good", ["a" * 63, "ctr2svc-svc", "ctr2svc-web", "my.app", "0ad-svc"])
def test_names_at_the_limits_are_accepted(good: str) -> None:
    for fmt in PackageFormat:
        assert naming.check_package_name(good, fmt) == good


def test_default_names_always_pass_the_rule() -> None:
    for basename in ("c++", "x" * 200, "Ünïcode", "a.b+c", "-", "ctr2svc"):
        name = naming.default_package_name(basename)
        assert naming.check_package_name(name) == name, basename
    assert naming.default_package_name("c++") == "c-svc"
    assert len(naming.default_package_name("x" * 200)) == naming.MAX_NAME_LENGTH


@pytest.mark.parametrize("fmt", list(PackageFormat))
def test_versions_longer_than_the_file_name_allows_are_refused(fmt: PackageFormat) -> None:
    # 160 characters as the format writes it (rpm adds "-1", apk "-r0").
    longest = {"deb": "1." + "0" * 158, "rpm": "1." + "0" * 156, "apk": "1." + "0" * 155}[fmt]
    assert len(naming.parse_version(fmt, longest).full) == naming.MAX_VERSION_LENGTH
    with pytest.raises(UsageError, match=f"as {fmt} writes it, more than the 160"):
        naming.parse_version(fmt, longest + "0")


def test_the_longest_tag_gives_a_version_within_the_limit() -> None:
    # Tags have at most 128 characters; a word tag becomes 0+TAG.YYYYMMDDHHMMSS.
    for tag in ("a" * 128, "1" + "-a" * 63 + "b", "v" + "1" * 127):
        for fmt in PackageFormat:
            version = naming.default_version(fmt, tag, DIGEST, CREATED)
            assert len(version.full) <= naming.MAX_VERSION_LENGTH, (fmt, tag)


@pytest.mark.parametrize("fmt", [PackageFormat.DEB, PackageFormat.RPM])
def test_an_epoch_dpkg_cannot_read_is_refused(fmt: PackageFormat) -> None:
    # dpkg: "epoch in version is too big" above INT_MAX; nfpm failed with Go's strconv text for rpm.
    assert naming.parse_version(fmt, "2147483647:1.0").epoch == 2147483647
    with pytest.raises(UsageError, match=r"epoch of version '2147483648:1\.0' is larger than 2147483647"):
        naming.parse_version(fmt, "2147483648:1.0")
