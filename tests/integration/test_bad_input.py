"""Bad input, as a new user would give it: each case is one line naming the problem and a hint, a
non-zero exit status, and nothing left in the output directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.images import multiarch_image, noentry_image, service_image
from tests.support.registry import Registry, free_port

from .helpers import sh

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("bad-input")
    return {
        "service": registry.push(
            service_image(work / "svc", "1.0", port=free_port(), version_text="x"), "bad/svc", "1.0"
        ),
        "noentry": registry.push(noentry_image(work / "noentry", "1.0"), "bad/noentry", "1.0"),
        "multi": registry.push(
            multiarch_image(work / "multi", "1.0", arches=["amd64", "arm64"]), "bad/multi", "1.0"
        ),
    }


@pytest.fixture(scope="module")
def auth_pushed(auth_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("auth")
    return auth_registry.push(
        service_image(work / "svc", "1.0", port=free_port(), version_text="x"), "secret/svc", "1.0"
    )


def fails(ctr2svc: Cli, out: Path, *args: str, status: int, says: str, hint: str) -> str:
    out.mkdir(exist_ok=True)
    proc = ctr2svc("build", *args, "-o", str(out), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == status, proc.stderr
    # Progress lines may come first; the error is one line, the last, and no traceback.
    errors = [line for line in lines if "error:" in line.lower()]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert says in errors[0], errors[0]
    assert hint in errors[0], errors[0]
    assert list(out.iterdir()) == [], "something was left in the output directory"
    return errors[0]


def test_unknown_repository(ctr2svc: Cli, registry: Registry, pushed: dict[str, str], tmp_path: Path) -> None:
    fails(
        ctr2svc,
        tmp_path / "o",
        f"{registry.host}/bad/nothing:1.0",
        status=3,
        says="not found in registry",
        hint="skopeo list-tags",
    )


def test_unknown_tag(ctr2svc: Cli, registry: Registry, pushed: dict[str, str], tmp_path: Path) -> None:
    fails(ctr2svc, tmp_path / "o", f"{registry.host}/bad/svc:9.9", status=3, says="not found", hint="tags")


def test_unreachable_registry(ctr2svc: Cli, tmp_path: Path) -> None:
    fails(
        ctr2svc,
        tmp_path / "o",
        f"127.0.0.1:{free_port()}/app:1.0",
        status=3,
        says="cannot reach registry",
        hint="running",
    )


def test_missing_credentials(ctr2svc: Cli, auth_pushed: str, tmp_path: Path) -> None:
    fails(ctr2svc, tmp_path / "o", auth_pushed, status=3, says="requires credentials", hint="--creds")


def test_wrong_credentials(ctr2svc: Cli, auth_pushed: str, tmp_path: Path) -> None:
    fails(
        ctr2svc,
        tmp_path / "o",
        auth_pushed,
        "--creds",
        "tester:wrong",
        status=3,
        says="refused the credentials",
        hint="--creds",
    )


def test_right_credentials(ctr2svc: Cli, auth_registry: Registry, auth_pushed: str, tmp_path: Path) -> None:
    assert auth_registry.creds
    proc = ctr2svc("build", auth_pushed, "--creds", auth_registry.creds, "-o", str(tmp_path))
    assert Path(proc.stdout.strip()).name == "svc-svc_1.0_amd64.deb"


@pytest.mark.parametrize("ref", ["Bad:Ref", "registry.example.com/app:bad tag", "x@sha256:abc", "ftp://x/y"])
def test_invalid_reference(ctr2svc: Cli, ref: str, tmp_path: Path) -> None:
    fails(ctr2svc, tmp_path / "o", ref, status=2, says="invalid image reference", hint="write it like")


def test_unknown_format(ctr2svc: Cli, tmp_path: Path) -> None:
    fails(
        ctr2svc,
        tmp_path / "o",
        "oci:examples/hello:1.0",
        "--format",
        "msi",
        status=2,
        says="Invalid value for '-f' / '--format'",
        hint="'deb'",
    )


def test_image_without_entrypoint_or_cmd(ctr2svc: Cli, pushed: dict[str, str], tmp_path: Path) -> None:
    fails(ctr2svc, tmp_path / "o", pushed["noentry"], status=3, says="has no Entrypoint or Cmd", hint="--cmd")
    # The hint works.
    proc = ctr2svc("build", pushed["noentry"], "--cmd", "/bin/busybox sleep 1000", "-o", str(tmp_path / "ok"))
    assert Path(proc.stdout.strip()).exists()


def test_architecture_missing_from_index(ctr2svc: Cli, pushed: dict[str, str], tmp_path: Path) -> None:
    fails(
        ctr2svc,
        tmp_path / "o",
        pushed["multi"],
        "--arch",
        "s390x",
        status=3,
        says="has no linux/s390x variant (it has: amd64, arm64/v8)",
        hint="--arch",
    )


def test_single_arch_image_for_another_arch(ctr2svc: Cli, pushed: dict[str, str], tmp_path: Path) -> None:
    fails(
        ctr2svc,
        tmp_path / "o",
        pushed["service"],
        "--arch",
        "arm64",
        status=3,
        says="is for linux/amd64, not linux/arm64",
        hint="--arch amd64",
    )


def test_arch_picked_from_index(ctr2svc: Cli, pushed: dict[str, str], tmp_path: Path) -> None:
    proc = ctr2svc("build", pushed["multi"], "--arch", "arm64", "-o", str(tmp_path))
    deb = Path(proc.stdout.strip())
    assert deb.name == "multi-svc_1.0_arm64.deb"
    assert sh("dpkg-deb", "-f", deb, "Architecture").stdout.strip() == "arm64"


def test_missing_local_layout(ctr2svc: Cli, tmp_path: Path) -> None:
    fails(
        ctr2svc, tmp_path / "o", f"oci:{tmp_path}/nowhere:1.0", status=3, says="does not exist", hint="path"
    )


def test_output_is_a_file(ctr2svc: Cli, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("")
    proc = ctr2svc("build", "oci:examples/hello:1.0", "-o", str(target), check=False)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr
    assert target.read_text() == ""


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--name", "Bad_Name", "not a valid Debian package name"),
        ("--version", "v1", "not a valid Debian version"),
        ("--stop-signal", "SIGNOPE", "unknown stop signal"),
    ],
)
def test_invalid_options(ctr2svc: Cli, option: str, value: str, says: str, tmp_path: Path) -> None:
    fails(ctr2svc, tmp_path / "o", "oci:examples/hello:1.0", option, value, status=2, says=says, hint="")


def test_local_archives(ctr2svc: Cli, registry: Registry, tmp_path: Path) -> None:
    from tests.support.images import docker_archive, oci_archive

    source = service_image(tmp_path / "layout", "3.1", port=free_port(), version_text="archive")
    for ref in (
        docker_archive(source, tmp_path / "saved.tar", "example/app:3.1"),
        oci_archive(source, tmp_path / "app.tar", "3.1"),
    ):
        proc = ctr2svc("build", ref, "--version", "3.1", "-o", str(tmp_path / "out"))
        assert Path(proc.stdout.strip()).exists()


@pytest.mark.parametrize(
    ("args", "says", "hint"),
    [
        (("--format", "apk", "--init", "systemd"), "apk packages cannot target systemd", "--init openrc"),
        (("--format", "rpm", "--init", "openrc"), "rpm packages cannot target openrc", "--init systemd"),
        (("--format", "apk", "--compression", "zstd"), "cannot use zstd compression", "--compression gzip"),
        (("--format", "rpm", "--compression", "none"), "cannot use none compression", "zstd or gzip or xz"),
        (("--format", "apk", "--arch", "mips64le"), "no architecture for the image's mips64el", "--arch"),
        (("--format", "apk", "--version", "1.0+build"), "not a valid apk version", "1.2.3_rc1"),
        (("--format", "rpm", "--version", "1.0-1-1"), "not a valid RPM version", "--version"),
    ],
)
def test_bad_format_combinations(
    ctr2svc: Cli, pushed: dict[str, str], tmp_path: Path, args: tuple[str, ...], says: str, hint: str
) -> None:
    # Refused before anything is pulled.
    fails(ctr2svc, tmp_path / "o", pushed["service"], *args, status=2, says=says, hint=hint)


@pytest.mark.parametrize(
    ("args", "says", "hint"),
    [
        (("--cap-add", "CAP_BOGUS"), "unknown capability 'CAP_BOGUS'", "NET_ADMIN"),
        (("--env", "BAD KEY=x"), "is not KEY=VALUE", "--env LOG_LEVEL=debug"),
        (("--volume", "relative:/x"), "is not HOST_PATH:CONTAINER_PATH", "--volume /srv/certs:/certs:ro"),
        (("--volume", "/a:/b:rx"), "is not HOST_PATH:CONTAINER_PATH", "--volume"),
        (("--memory", "lots"), "is not a size", "--memory 512M"),
        (("--cpus", "0"), "is not a number of CPUs above 0", "--cpus 0.5"),
        (("--cpus", "inf"), "is not a number of CPUs above 0", "--cpus 0.5"),
        (("--cpus", "nan"), "is not a number of CPUs above 0", "--cpus 0.5"),
        (("--stdio", "socket"), "Invalid value for '--stdio'", "auto"),
        (("--runtime", "nspawn", "--init", "openrc"), "--runtime nspawn needs systemd", "--init systemd"),
        (
            ("--runtime", "nspawn", "--userns", "auto"),
            "--userns auto is not supported with --runtime nspawn",
            "--runtime runc",
        ),
        (("--runtime", "kata"), "unknown runtime 'kata'", "--runtime crun"),
        (("--user", "a:"), "is not USER, UID, USER:GROUP or UID:GID", "--user 999:999"),
    ],
)
def test_bad_service_options(
    ctr2svc: Cli, pushed: dict[str, str], tmp_path: Path, args: tuple[str, ...], says: str, hint: str
) -> None:
    fails(ctr2svc, tmp_path / "o", pushed["service"], *args, status=2, says=says, hint=hint)


def test_user_the_image_does_not_have(ctr2svc: Cli, pushed: dict[str, str], tmp_path: Path) -> None:
    fails(
        ctr2svc,
        tmp_path / "o",
        pushed["service"],
        "--user",
        "nobody-here",
        status=3,
        says="the image has no user 'nobody-here'",
        hint="numeric --user",
    )
