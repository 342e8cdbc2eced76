"""Injection into what a package is made of: package metadata, unit files, scripts, config.json.

Every string from options, project files *and the image itself* (labels, env, entrypoint, volume paths,
stop signal) is either refused with one line or lands where it goes as data: it can add no control
field, no dependency, no unit directive, no shell command, and no volume outside the service's data
directory. A crafted image is built with each hostile value; its .deb, .rpm and .apk are read back with
dpkg-deb, rpm and our apk reader, and the .deb is installed with dpkg to show nothing runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.apk import read_apk
from tests.support.images import DEFAULT_PATH, build_image, install_busybox, put_file
from tests.support.registry import Registry

from .helpers import purge, sh

pytestmark = pytest.mark.integration

PWNED = Path("/tmp/ctr2svc-pwned")
DESCRIPTION = "Evil $HOME ${NFPM_PASSPHRASE}\nDepends: evil-pkg\nPre-Depends: evil-pre"
LABELS = {
    "org.opencontainers.image.description": DESCRIPTION,
    "org.opencontainers.image.title": "\x1b[31mred\x1b[0m title",
    # Not a URL: left out (with a warning), never a unit line of its own.
    "org.opencontainers.image.url": f"http://example.com/\nExecStartPre=/bin/touch {PWNED}",
    # A valid URL with a "$": kept as it is, not expanded by nfpm.
    "org.opencontainers.image.source": "https://example.com/$HOME/src",
    "org.opencontainers.image.licenses": "MIT\nDepends: evil-pkg",
}
ENV = {"PATH": DEFAULT_PATH, "EVIL": f'a\nb"c\\d $(touch {PWNED}) `touch {PWNED}`'}
ENTRYPOINT = ["/bin/sh", "-c", f"echo $HOME; touch {PWNED}\nExecStart=/bin/evil", "--"]
VOLUMES = ["/data", "/../../../../etc/ctr2svc-evil", "/data/../../var/lib/ctr2svc-x"]
NAME = "evil-svc"


def _populate(root: Path) -> None:
    install_busybox(root, symlinks=("touch", "echo"))
    put_file(root, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")


@pytest.fixture(scope="module")
def crafted(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    source = build_image(
        tmp_path_factory.mktemp("crafted") / "layout",
        "1.0",
        _populate,
        entrypoint=ENTRYPOINT,
        env=ENV,
        volumes=VOLUMES,
        labels=LABELS,
    )
    return registry.push(source, "itest/crafted", "1.0")


@pytest.fixture(scope="module")
def packages(crafted: str, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("crafted-out")
    built = {}
    for fmt in ("deb", "rpm", "apk"):
        proc = ctr2svc("build", crafted, "--name", NAME, "--format", fmt, "-o", out)
        # The dropped labels are named, once each.
        assert "leaving out the image's url label" in proc.stderr
        assert "leaving out the image's license label" in proc.stderr
        built[fmt] = Path(proc.stdout.strip())
    return built


def test_deb_control_has_only_our_fields(packages: dict[str, Path]) -> None:
    deb = packages["deb"]
    control = sh("dpkg-deb", "-f", deb).stdout
    fields = [line.split(":", 1)[0] for line in control.splitlines() if not line.startswith(" ")]
    assert set(fields) <= {
        "Package",
        "Version",
        "Section",
        "Priority",
        "Architecture",
        "Maintainer",
        "Installed-Size",
        "Depends",
        "Homepage",
        "Description",
        "X-Ctr2svc-Image",
        "X-Ctr2svc-Image-Digest",
    }, control
    assert sh("dpkg-deb", "-f", deb, "Depends").stdout.strip() == "runc, mount"
    assert "Pre-Depends" not in fields
    # The label's text is one synopsis line, "$" as written: nfpm expanded nothing.
    synopsis = sh("dpkg-deb", "-f", deb, "Description").stdout.splitlines()[0]
    assert synopsis.startswith("Evil $HOME ${NFPM_PASSPHRASE} Depends: evil-pkg"), synopsis
    assert sh("dpkg-deb", "-f", deb, "Homepage").stdout.strip() == "https://example.com/$HOME/src"


def test_rpm_has_no_injected_requirement(packages: dict[str, Path]) -> None:
    rpm = packages["rpm"]
    requires = sh("rpm", "-qp", "--requires", rpm).stdout.split("\n")
    assert not [r for r in requires if "evil" in r], requires
    url = sh("rpm", "-qp", "--qf", "%{URL}|%{LICENSE}|%{SUMMARY}", rpm).stdout
    assert url.split("|")[0] == "https://example.com/$HOME/src"
    # The license label was not an SPDX expression: RPM says NOASSERTION rather than carry it.
    assert url.split("|")[1] == "NOASSERTION"
    assert "\n" not in url.split("|")[2]


def test_apk_pkginfo_has_no_injected_line(packages: dict[str, Path]) -> None:
    apk = read_apk(packages["apk"])
    assert sorted(apk.pkginfo.get("depend", [])) == ["openrc", "runc"], apk.pkginfo
    # The label is no SPDX expression: refused, the license is the word for "not stated".
    assert apk.pkginfo.get("license") == ["NOASSERTION"], apk.pkginfo
    assert all(len(values) == 1 for key, values in apk.pkginfo.items() if key != "depend"), apk.pkginfo
    assert "Evil $HOME" in (apk.value("pkgdesc") or ""), apk.pkginfo


def _package_file(deb: Path, path: str, tmp: Path) -> str:
    tree = tmp / "x"
    if not tree.exists():
        sh("dpkg-deb", "-x", deb, tree)
    return (tree / path.lstrip("/")).read_text()


def test_unit_scripts_and_config_carry_the_values_as_data(packages: dict[str, Path], tmp_path: Path) -> None:
    deb = packages["deb"]
    unit = _package_file(deb, f"/lib/systemd/system/{NAME}.service", tmp_path)
    directives = [line for line in unit.splitlines() if line and not line.startswith("#")]
    execs = [line for line in directives if line.startswith("Exec")]
    assert execs == [
        f"ExecStartPre=/usr/libexec/{NAME}/service prepare",
        f"ExecStart=/usr/libexec/{NAME}/service start",
        f"ExecStop=/usr/libexec/{NAME}/service stop",
        f"ExecStopPost=/usr/libexec/{NAME}/service cleanup",
    ], unit
    assert "Documentation=https://example.com/$HOME/src" in directives
    description = next(line for line in directives if line.startswith("Description="))
    assert "\x1b" not in unit and "%" not in description.replace("%%", "")

    helper = _package_file(deb, f"/usr/libexec/{NAME}/service", tmp_path)
    assert str(PWNED) not in helper
    config = json.loads(_package_file(deb, f"/opt/containers/{NAME}/1.0/config.json", tmp_path))
    assert config["process"]["args"] == ENTRYPOINT
    assert f"EVIL={ENV['EVIL']}" in config["process"]["env"]
    binds = {m["destination"]: m["source"] for m in config["mounts"] if m["type"] == "bind"}
    # Volume paths are cleaned as Docker cleans them; their data stays under the service's directory.
    for destination in ("/data", "/etc/ctr2svc-evil", "/var/lib/ctr2svc-x"):
        assert binds[destination].startswith(f"/var/lib/{NAME}/volumes/"), binds
        assert ".." not in binds[destination]


def test_installing_the_crafted_package_runs_nothing_of_it(packages: dict[str, Path]) -> None:
    PWNED.unlink(missing_ok=True)
    purge(NAME)
    try:
        sh("dpkg", "-i", packages["deb"])
        helper = f"/usr/libexec/{NAME}/service"
        sh(helper, "prepare")
        sh(helper, "cleanup")
        assert not PWNED.exists()
        assert not Path("/etc/ctr2svc-evil").exists()
        assert Path(f"/var/lib/{NAME}/volumes/etc/ctr2svc-evil").is_dir()
        # The image's hostile env value reached /etc/NAME/env as nothing at all (it is the image's).
        assert "pwned" not in Path(f"/etc/{NAME}/env").read_text()
    finally:
        purge(NAME)
        PWNED.unlink(missing_ok=True)


# Options and references a user (or a script fed with untrusted text) can pass: each refused with one
# line naming the option, exit 2, nothing written.
REFUSED = [
    (["--maintainer", "x <a@b.c>\nDepends: evil-pkg"], r"--maintainer .* contains control characters"),
    (["--maintainer", "nobody"], r"--maintainer 'nobody' is not 'Full Name <address>'"),
    (["-e", "A=1\nB=2"], r"--env .* contains control characters"),
    (["--volume", "/a:/b\n/c /d rw"], r"--volume .* contains control characters"),
    (["--sign-key-name", "../../evil.rsa.pub"], r"--sign-key-name .* is not a plain file name"),
    (["--name", "evil\nDepends: x"], r"is not a valid Debian package name"),
    (["--version", "1.0\nDepends: x"], r"is not a valid"),
    (["--stop-signal", "TERM\nExecStart=/bin/evil"], r"unknown stop signal"),
    (["--user", "0\nExecStart=/bin/evil"], r"--user .* contains control characters"),
]


@pytest.mark.parametrize(("argv", "message"), REFUSED, ids=[a[0] for a, _ in REFUSED])
def test_hostile_options_are_refused(
    crafted: str, ctr2svc: Cli, tmp_path: Path, argv: list[str], message: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc = ctr2svc("build", crafted, *argv, "-o", out, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctr2svc: error: "), proc.stderr
    assert re.search(message, lines[0]), lines[0]
    assert list(out.iterdir()) == []


def test_hostile_local_reference_is_refused(ctr2svc: Cli, tmp_path: Path) -> None:
    proc = ctr2svc("build", "oci:/tmp/x\nDepends: evil:1.0", "-o", tmp_path, check=False)
    assert proc.returncode == 2
    assert "contains control characters" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_hostile_project_values_fail_that_image(crafted: str, ctr2svc: Cli, tmp_path: Path) -> None:
    project = tmp_path / "ctr2svc.toml"
    project.write_text(
        f'output = "dist"\n[[image]]\nref = "{crafted}"\nname = "{NAME}"\n'
        'maintainer = "x <a@b.c>\\nDepends: evil-pkg"\n'
    )
    proc = ctr2svc("build", "-c", project, check=False)
    assert proc.returncode == 6, proc.stderr
    assert "contains control characters" in proc.stderr
    assert not list((tmp_path / "dist").glob("*.deb")) if (tmp_path / "dist").exists() else True


def test_a_bad_stop_signal_in_the_image_is_an_image_error(
    registry: Registry, ctr2svc: Cli, tmp_path: Path
) -> None:
    source = build_image(
        tmp_path / "layout",
        "1.0",
        _populate,
        entrypoint=["/bin/sh"],
        stop_signal="SIGTERM\nExecStartPre=/bin/evil",
    )
    ref = registry.push(source, "itest/badsignal", "1.0")
    out = tmp_path / "out"
    proc = ctr2svc("build", ref, "-o", out, check=False)
    assert proc.returncode == 3, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ctr2svc: error: ")]
    assert len(errors) == 1 and "declares an unknown STOPSIGNAL" in errors[0] and "--stop-signal" in errors[0]
    assert "ExecStartPre" not in proc.stderr.replace("'SIGTERM ExecStartPre=/bin/evil'", "")
    assert not out.exists() or list(out.iterdir()) == []


def test_nfpm_sees_no_secret_of_the_build_environment(
    crafted: str, ctr2svc: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A passphrase in the build's environment never reaches package text through a label's ${...}."""
    monkeypatch.setenv("NFPM_PASSPHRASE", "hunter2-secret")  # the Cli passes our environment on
    deb = Path(ctr2svc("build", crafted, "--name", "evil2-svc", "-o", tmp_path).stdout.strip())
    assert b"hunter2-secret" not in sh("dpkg-deb", "-f", deb).stdout.encode()


def test_inspect_shows_hostile_values_escaped(crafted: str, ctr2svc: Cli) -> None:
    report = ctr2svc("inspect", crafted).stdout
    # Escape sequences and line breaks from the image are shown as escapes, never sent to the terminal.
    assert "\x1b" not in report
    assert "EVIL=a\\nb" in report
    entrypoint = next(line for line in report.splitlines() if line.startswith("entrypoint"))
    assert "touch /tmp/ctr2svc-pwned\\nExecStart=/bin/evil" in entrypoint
    assert not any(line.startswith("ExecStart") for line in report.splitlines())
    volumes = [line.split(" -> ")[1] for line in report.splitlines() if line.startswith("  volume ")]
    assert volumes and all(
        v.startswith(f"/var/lib/{NAME.replace('evil', 'crafted')}/volumes/") for v in volumes
    )
    assert not any(".." in v for v in volumes), volumes
